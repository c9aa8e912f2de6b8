"""Subnormal floats: the layers flush them during their own work only, and what flushing drops
is below the smallest normal float (no direction moves by more than 1e-30)."""
import pytest
import torch

from helpers import needs
from targetprop import TPGRU, TPRNN, fpmode, kernels, orthogonal_init_

TINY = torch.finfo(torch.float32).tiny  # smallest normal float32


@pytest.fixture
def user_mode(request):
    """The caller's own flush setting, restored after the test."""
    torch.set_flush_denormal(request.param)
    yield request.param
    torch.set_flush_denormal(False)


def _train_step(layer, T=200, B=5, threads=1):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(B, T, layer.input_size, generator=g)
        out, h_n = layer(x)
        (out[:, -1].sum() + h_n.sum()).backward()
    finally:
        torch.set_num_threads(old)
    return {k: p.grad.clone() for k, p in layer.named_parameters()}


@pytest.mark.parametrize("user_mode", [False, True], indirect=True)
@pytest.mark.parametrize("cls,backend,threads", [(TPRNN, "cpp", 1), (TPRNN, "cpp", 2), (TPRNN, "torch", 1),
                                                 (TPGRU, "cpp", 2), (TPGRU, "torch", 1)])
@needs("cpp")
def test_the_callers_mode_is_the_same_after_forward_and_backward(user_mode, cls, backend, threads):
    module = kernels.load(required=True)
    assert fpmode.flushing() == user_mode == module.denormals_flushed()
    layer = orthogonal_init_(cls(3, 20, batch_first=True, rule="linearized", reg=10.0, backend=backend))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, h_n = layer(torch.randn(4, 50, 3))
        assert fpmode.flushing() == user_mode == module.denormals_flushed()
        (out.sum() + h_n.sum()).backward()
    finally:
        torch.set_num_threads(old)
    assert fpmode.flushing() == user_mode == module.denormals_flushed()
    assert layer.weight_hh_l0.grad.abs().sum() > 0


@needs("cpp")
def test_the_recursion_meets_subnormals_and_flushing_drops_only_them():
    """Eq. 2's recursion at r = 10 (displacements shrink ~10x per step): unflushed it passes
    through the subnormal range, flushed it skips it; both agree to 1e-30 absolute."""
    T, B, p = 80, 4, 16
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g))
    mat = (q / 11.0).contiguous()
    factor = torch.ones(T, B, p)
    runs = {}
    for flush in (True, False):
        fpmode.set_flush_denormals(flush)
        try:
            lam = torch.zeros(T + 1, B, p)
            lam[T] = torch.randn(B, p, generator=g.manual_seed(1))
            kernels.load(required=True).scaled_recursion_(lam, factor, mat, False, 0.0)  # as a layer selects it
            runs[flush] = lam
        finally:
            fpmode.set_flush_denormals(True)
    sub = lambda t: ((t != 0) & (t.abs() < TINY)).sum().item()  # noqa: E731
    assert sub(runs[False]) > 0 and sub(runs[True]) == 0
    assert (runs[True] - runs[False]).abs().max().item() <= 1e-30
    sizable = runs[False].abs() >= 1e-20  # far above what flushing drops: bit-identical
    assert sizable.sum() > T * B * p // 10
    assert torch.equal(runs[True][sizable], runs[False][sizable])


@pytest.mark.parametrize("cls,backend", [(TPRNN, "cpp"), (TPRNN, "torch"), (TPGRU, "cpp")])
@pytest.mark.parametrize("through_time", [False, True])
def test_directions_with_and_without_flushing_agree_to_1e_30(cls, backend, through_time):
    torch.manual_seed(0)
    layer = orthogonal_init_(cls(3, 24, batch_first=True, rule="linearized", reg=10.0, backend=backend,
                                 through_time=through_time))
    flushed = _train_step(layer)
    layer.zero_grad(set_to_none=True)
    fpmode.set_flush_denormals(False)
    try:
        plain = _train_step(layer)
    finally:
        fpmode.set_flush_denormals(True)
    for k in flushed:
        assert flushed[k].abs().max() > 1e-6, k
        assert (flushed[k] - plain[k]).abs().max().item() <= 1e-30, k


def test_set_flush_denormals_takes_a_bool():
    with pytest.raises(TypeError, match="bool"):
        fpmode.set_flush_denormals(1)
    assert fpmode.flush_denormals_enabled()
