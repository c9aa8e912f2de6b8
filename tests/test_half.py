"""Half precision: float16/bfloat16 layers and torch.autocast train, with the regularized inverse and
the displacements computed in float32 (no half-precision Cholesky on CPU, and displacements would
underflow early) and results cast back."""
import pytest
import torch

from helpers import rel_err
from targetprop import TPGRU, TPRNN, orthogonal_init_


def _grads(layer, x, dtype=None):
    layer.zero_grad(set_to_none=True)
    out, h_n = layer(x if dtype is None else x.to(dtype))
    assert out.dtype == h_n.dtype == (dtype or x.dtype)
    (out.float().pow(2).mean() + h_n.float().sum()).backward()
    return {k: p.grad for k, p in layer.named_parameters()}


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", ["linearized", "bp"])
def test_half_precision_layers_train(cls, dtype, rule):
    torch.manual_seed(0)
    full = orthogonal_init_(cls(3, 16, batch_first=True, rule=rule, reg=1.0))
    half = cls(3, 16, batch_first=True, rule=rule, reg=1.0).to(dtype)
    half.load_state_dict({k: v.to(dtype) for k, v in full.state_dict().items()})
    x = torch.randn(4, 30, 3)
    ref = _grads(full, x.to(dtype).float())  # the same rounded input, in float32
    got = _grads(half, x, dtype)
    for k in ref:
        assert got[k].dtype == dtype, k
        assert rel_err(got[k], ref[k]) < 3e-2, k  # the weights were rounded to half precision
    opt = torch.optim.SGD(half.parameters(), lr=0.1)
    before = half.weight_hh_l0.detach().clone()
    opt.step()
    assert not torch.equal(before, half.weight_hh_l0)


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_autocast_runs_the_layer_in_float32(cls):
    torch.manual_seed(1)
    rnn = orthogonal_init_(cls(3, 16, batch_first=True, reg=1.0))
    head = torch.nn.Linear(16, 5)
    x, y = torch.randn(4, 30, 3), torch.randint(0, 5, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(2, 16)).dtype == torch.bfloat16  # autocast is live
        out, h_n = rnn(x.to(torch.bfloat16))
        assert out.dtype == h_n.dtype == torch.float32
        loss = torch.nn.functional.cross_entropy(head(h_n[0]), y)
    loss.backward()
    auto = {k: p.grad.clone() for k, p in rnn.named_parameters()}
    rnn.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    out, h_n = rnn(x.to(torch.bfloat16).float())
    torch.nn.functional.cross_entropy(head(h_n[0]), y).backward()
    for k, g in auto.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        assert rel_err(g, rnn.get_parameter(k).grad) < 3e-2, k  # only the head ran in bfloat16
