"""The layers as modules: shapes, state dicts, odd sizes against the float64 references (both
cells), dtypes, training with torch.optim, bad input."""
import math

import pytest
import torch

from helpers import assert_rel
from problems import BACKENDS, D64, make_problem, reference_run, run_layer
from targetprop import TPGRU, TPRNN, RegularizedInverseError, orthogonal_, orthogonal_init_


# ---------------------------------------------------------------- shapes and state dicts
@pytest.mark.parametrize("batch_first", [True, False])
def test_shapes_like_torch_rnn(batch_first):
    layer = TPRNN(3, 5, batch_first=batch_first)
    rnn = torch.nn.RNN(3, 5, batch_first=batch_first)
    x = torch.randn(4, 7, 3)
    for m in (layer, rnn):
        out, hn = m(x)
        assert out.shape == (4, 7, 5) and hn.shape == (1, 7 if not batch_first else 4, 5)
    # unbatched (T, d) input and (1, p) state, as nn.RNN
    u = torch.randn(6, 3)
    out, hn = layer(u, torch.zeros(1, 5))
    rout, rhn = rnn(u, torch.zeros(1, 5))
    assert out.shape == rout.shape == (6, 5) and hn.shape == rhn.shape == (1, 5)


def test_state_dict_round_trip_with_torch_rnn():
    rnn = torch.nn.RNN(3, 5, batch_first=True, dtype=D64)
    layer = TPRNN(3, 5, batch_first=True, dtype=D64)
    assert set(layer.state_dict()) == set(rnn.state_dict())
    layer.load_state_dict(rnn.state_dict())  # strict
    x = torch.randn(2, 9, 3, dtype=D64)
    assert_rel(layer(x)[0], rnn(x)[0], where="outputs after loading nn.RNN's state dict")
    orthogonal_init_(layer)
    rnn.load_state_dict(layer.state_dict())  # strict, the other way
    assert_rel(rnn(x)[1], layer(x)[1], where="outputs after loading TPRNN's state dict")
    no_bias = TPRNN(3, 5, bias=False)
    torch.nn.RNN(3, 5, bias=False).load_state_dict(no_bias.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,B,p", [(1, 1, 1), (1, 3, 4), (5, 1, 1), (4, 2, 3), (3, 5, 37), (2, 3, 70)])
@pytest.mark.parametrize("cell,rule", [("rnn", "bp"), ("rnn", "linearized"), ("rnn", "difference"),
                                       ("rnn", "direct"), ("gru", "bp"), ("gru", "linearized")])
def test_odd_shapes_match_reference(T, B, p, cell, rule, backend):
    """Odd sizes, including widths that exercise every register block of the compiled loops."""
    layer, x, h0, C, Cn = make_problem("tanh" if cell == "rnn" else None, B=B, T=T, d=2, p=p,
                                       seed=T * 100 + B * 10 + p, cell=cell, backend=backend)
    layer.rule = rule
    grads, gx, gh0, _, _ = run_layer(layer, x, h0, C, Cn)
    ref = reference_run(layer, x, h0, C, Cn)
    for k in grads:
        assert_rel(grads[k], ref[k], where=f"odd shape {cell} {T, B, p} {rule} {k}")
    assert_rel(gx, ref["input"], where=f"odd shape {cell} {T, B, p} {rule} input grad")
    assert_rel(gh0[0], ref["h0"], where=f"odd shape {cell} {T, B, p} {rule} h0 grad")


def test_non_contiguous_input_and_unbatched_gradients():
    layer, x, h0, C, Cn = make_problem("tanh", B=3, T=5, seed=2)
    wide = torch.randn(3, 5, 4, dtype=D64)
    wide[..., ::2] = x
    xs = wide[..., ::2]
    assert not xs.is_contiguous()
    g1 = run_layer(layer, xs, h0, C, Cn)
    g2 = run_layer(layer, x.contiguous(), h0, C, Cn)
    for k in g1[0]:
        assert_rel(g1[0][k], g2[0][k])
    # an unbatched sequence gives the same directions as a batch of one
    layer.zero_grad()
    out, hn = layer(x[0], h0[:, 0])
    ((out * C[0]).sum() + (hn * Cn[:, 0]).sum()).backward()
    g_unb = {k: w.grad.clone() for k, w in layer.named_parameters()}
    g_b1 = run_layer(layer, x[:1], h0[:, :1], C[:1], Cn[:, :1])[0]
    for k in g_unb:
        assert_rel(g_unb[k], g_b1[k], where="unbatched vs batch of one")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["bp", "linearized", "difference", "direct"])
def test_float32_agrees_with_float64(rule, backend):
    layer, x, h0, C, Cn = make_problem("tanh", T=20, seed=4)
    layer.rule = rule
    g64 = run_layer(layer, x, h0, C, Cn)[0]
    layer32 = TPRNN(2, 4, batch_first=True, rule=rule, backend=backend, reg=layer.reg, tol=layer.tol,
                    through_time=layer.through_time)
    layer32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    g32 = run_layer(layer32, x.float(), h0.float(), C.float(), Cn.float())[0]
    for k in g64:
        assert g32[k].dtype == torch.float32
        assert_rel(g32[k], g64[k], tol=1e-4, where=f"float32 vs float64 {rule} {k}")


def test_extra_repr_and_validation_on_assignment():
    layer = TPRNN(2, 3, rule="difference", reg=10, target_step=1e-3, through_time=True)
    s = repr(layer)
    assert "rule='difference'" in s and "reg=10" in s and "target_step=0.001" in s and "through_time=True" in s
    with pytest.raises(ValueError, match="reg"):
        layer.reg = -1.0


# ---------------------------------------------------------------- training with torch.optim
def _train(rule, opt, train_rnn=True, iterations=100):
    """Predict the sign of the *first* input of a 6-step sequence from h_T (paper's r=10, γ_h=1e-2)."""
    torch.manual_seed(0)
    rnn = orthogonal_init_(TPRNN(2, 16, batch_first=True, rule=rule, reg=10.0, target_step=1e-2))
    head = torch.nn.Linear(16, 2)
    params = (list(rnn.parameters()) if train_rnn else []) + list(head.parameters())
    optim = torch.optim.SGD(params, lr=1.0) if opt == "sgd" else torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, 2, generator=g)
    y = (x[:, 0, 0] > 0).long()
    losses = []
    for _ in range(iterations):
        optim.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(rnn(x)[1][0]), y)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return losses[0], sum(losses[-10:]) / 10


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("rule", ["linearized", "difference", "bp"])
def test_layer_trains_with_torch_optim(opt, rule):
    """The loss falls, and by clearly more than when only the linear head learns (the control)."""
    first, last = _train(rule, opt)
    _, head_only = _train(rule, opt, train_rnn=False)
    assert last < 0.7 * first
    assert last < 0.8 * head_only, (last, head_only)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"reg": -0.1}, "reg"),
        ({"reg": float("nan")}, "reg"),
        ({"target_step": 0.0}, "target_step"),
        ({"target_step": -1e-2}, "target_step"),
        ({"tol": 0.0}, "tol"),
        ({"tol": 0.5}, "tol"),
        ({"tol": 0.7}, "tol"),
        ({"rule": "magic"}, "rule must be one of"),
        ({"nonlinearity": "gelu"}, "nonlinearity must be one of"),
        ({"input_size": 0}, "input_size"),
        ({"hidden_size": -3}, "hidden_size"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    args = {"input_size": 2, "hidden_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        TPRNN(**args)


def test_bad_inputs():
    layer = TPRNN(2, 3, batch_first=True)
    with pytest.raises(ValueError, match="3-D"):
        layer(torch.randn(2, 3, 4, 2))
    with pytest.raises(ValueError, match="3-D"):
        layer(torch.randn(5))
    with pytest.raises(ValueError, match="input_size=2"):
        layer(torch.randn(4, 5, 3))
    for bad in (math.nan, math.inf):
        x = torch.randn(4, 5, 2)
        x[1, 2, 0] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            layer(x)
    with pytest.raises(ValueError, match="hx must have shape"):
        layer(torch.randn(4, 5, 2), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(4, 5, 2, dtype=D64))


def test_failed_cholesky_is_a_clear_error_not_nan():
    layer = TPRNN(2, 3, reg=0.0)
    with torch.no_grad():
        layer.weight_hh_l0.zero_()
    out, hn = layer(torch.randn(4, 5, 2))
    with pytest.raises(RegularizedInverseError, match="positive reg"):
        hn.sum().backward()
    assert layer.weight_hh_l0.grad is None
    with pytest.raises(torch.linalg.LinAlgError):  # catchable as torch's own error type
        layer(torch.randn(4, 5, 2))[1].sum().backward()
    with torch.no_grad():
        layer.weight_hh_l0[0, 0] = math.nan
    layer.check_finite = True
    with pytest.raises(RegularizedInverseError, match="NaN or inf"):
        layer(torch.randn(4, 5, 2))[1].sum().backward()


def test_orthogonal_init():
    w = torch.empty(6, 6, dtype=D64)
    orthogonal_(w, torch.Generator().manual_seed(0))
    assert_rel(w @ w.T, torch.eye(6, dtype=D64), where="orthogonal init")
    rect = torch.empty(6, 2, dtype=D64)
    orthogonal_(rect)
    assert_rel(rect.T @ rect, torch.eye(2, dtype=D64), where="semi-orthogonal init")
    layer = orthogonal_init_(TPRNN(2, 6))
    assert layer.bias_ih_l0.abs().max() == 0
    gru = orthogonal_init_(torch.nn.GRU(2, 4))
    for block in gru.weight_hh_l0.detach().double().chunk(3):
        assert_rel(block @ block.T, torch.eye(4, dtype=D64), tol=1e-6)


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_an_unused_output_gives_the_same_directions_as_a_zero_gradient(cls):
    """Autograd hands an unused output's gradient as None (not materialized); the layer reads it as 0."""
    torch.manual_seed(0)
    layer = cls(3, 8, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    grads = []
    for touch_out in (False, True):
        layer.zero_grad(set_to_none=True)
        out, h_n = layer(x)
        loss = (h_n ** 2).sum() + (0.0 * out.sum() if touch_out else 0.0)
        loss.backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b) and a.abs().sum() > 0


@pytest.mark.parametrize("cls,rule", [(TPRNN, "linearized"), (TPRNN, "bp"), (TPGRU, "linearized")])
def test_the_workspace_is_reused_and_no_result_refers_to_it(cls, rule):
    """Scratch buffers persist between backward passes (no fresh memory each time), give the same
    directions as fresh buffers, and no gradient handed out aliases them."""
    import copy
    import pickle

    torch.manual_seed(0)
    layer = cls(3, 8, batch_first=True, rule=rule, dtype=torch.float64)
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)

    def grads():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out, h_n = layer(x)
        ((out ** 2).sum() + h_n.sum()).backward()
        return [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()], \
            [p.grad for p in layer.parameters()] + [x.grad]

    first, handed = grads()
    buffers = {k: v.data_ptr() for k, v in layer.workspace._buffers().items()}
    assert any("displacements" in k for k in buffers)
    for buf in layer.workspace._buffers().values():
        buf.fill_(float("nan"))  # scribbling on the scratch leaves the handed-out gradients alone
    assert all(torch.equal(a, b) for a, b in zip(first, handed))
    second, _ = grads()
    assert {k: v.data_ptr() for k, v in layer.workspace._buffers().items()} == buffers  # reused
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    layer.workspace.clear()
    third, _ = grads()
    assert all(torch.equal(a, b) for a, b in zip(first, third))
    assert copy.deepcopy(layer).workspace._buffers() == {} and pickle.loads(pickle.dumps(layer)).workspace._buffers() == {}
    assert not any("workspace" in k for k in layer.state_dict())
