"""Every Elman rule against the straightforward float64 loop of eqs. (1)–(3) (tests/reference.py)."""
import pytest
import torch

import reference as ref
from helpers import assert_rel
from targetprop import TPRNN

D64 = torch.float64


def make_problem(nonlinearity="tanh", B=3, T=6, d=2, p=4, bias=True, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    layer = TPRNN(d, p, nonlinearity=nonlinearity, bias=bias, batch_first=True, dtype=D64)
    with torch.no_grad():
        for w in layer.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=D64) * scale / w.shape[-1] ** 0.5)
    x = torch.randn(B, T, d, generator=g, dtype=D64)
    h0 = 0.3 * torch.randn(1, B, p, generator=g, dtype=D64)
    C = torch.randn(B, T, p, generator=g, dtype=D64)  # per-step loss weights
    Cn = torch.randn(1, B, p, generator=g, dtype=D64)  # loss on h_n
    return layer, x, h0, C, Cn


def run_layer(layer, x, h0, C, Cn):
    layer.zero_grad(set_to_none=True)
    xg, h0g = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, hn = layer(xg, h0g)
    ((out * C).sum() + (hn * Cn).sum()).backward()
    return {k: w.grad for k, w in layer.named_parameters()}, xg.grad, h0g.grad, out, hn


def reference_run(layer, rule, x, h0, C, Cn):
    P = {k: w.detach() for k, w in layer.named_parameters()}
    T = x.shape[1]
    g = [None] + [C[:, t] for t in range(T)]
    g[T] = g[T] + Cn[0]
    hs, v = ref.targets(rule, layer.nonlinearity, x, h0[0], P, g, layer.target_step, layer.reg, layer.tol)
    grads, gx = ref.local_directions(layer.nonlinearity, x, h0[0], P, hs, v)
    return grads, gx, -(v[0] - hs[0]), hs


CASES = [
    (rule, act, bias)
    for rule in ("bp", "linearized", "difference", "direct")
    for act in ("tanh", "sigmoid", "identity")
    for bias in (True, False)
]
BACKENDS = ["torch", "cpp"]  # the pure-PyTorch path and the compiled loops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule,act,bias", CASES)
def test_rule_matches_reference_loop(rule, act, bias, backend):
    layer, x, h0, C, Cn = make_problem(act, bias=bias, seed=(len(rule) * 7 + len(act) * 3 + bias) % 1000)
    layer.rule, layer.reg, layer.target_step, layer.backend = rule, 0.7, 0.05, backend
    grads, gx, gh0, out, hn = run_layer(layer, x, h0, C, Cn)
    rgrads, rgx, rgh0, hs = reference_run(layer, rule, x, h0, C, Cn)
    where = f"{rule}/{act}/bias={bias}/{backend}"
    assert_rel(out, torch.stack(hs[1:], 1), where=where + " forward")
    for k in rgrads:
        assert_rel(grads[k], rgrads[k], where=f"{where} {k}")
    assert_rel(gx, rgx, where=where + " input grad")
    assert_rel(gh0[0], rgh0, where=where + " h0 grad")
    # targets are non-trivial: the directions are not all zero
    assert grads["weight_hh_l0"].abs().max() > 1e-6


def test_rule_is_not_bp():
    """The TP rules give directions really different from γ_h × BP on a generic problem."""
    layer, x, h0, C, Cn = make_problem("tanh", T=10)
    layer.rule = "bp"
    bp = run_layer(layer, x, h0, C, Cn)[0]["weight_hh_l0"]
    layer.rule, layer.reg, layer.target_step = "linearized", 1.0, 1e-2
    tp = run_layer(layer, x, h0, C, Cn)[0]["weight_hh_l0"] / 1e-2
    assert (tp - bp).norm() / bp.norm() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_bp_rule_equals_torch_rnn_autograd(batch_first, with_h0, backend):
    layer, x, h0, C, Cn = make_problem("tanh", T=9, seed=3)
    layer.rule, layer.batch_first, layer.backend = "bp", batch_first, backend
    rnn = torch.nn.RNN(2, 4, batch_first=batch_first, dtype=D64)
    rnn.load_state_dict(layer.state_dict())
    xin = x if batch_first else x.transpose(0, 1).contiguous()
    Cin = C if batch_first else C.transpose(0, 1).contiguous()
    res = []
    for m in (layer, rnn):
        xg = xin.clone().requires_grad_(True)
        hg = h0.clone().requires_grad_(True)
        out, hn = m(xg, hg if with_h0 else None)
        ((out * Cin).sum() + (hn * Cn).sum()).backward()
        res.append(([w.grad for w in m.parameters()], xg.grad, hg.grad, out, hn))
    (g1, x1, h1, o1, n1), (g2, x2, h2, o2, n2) = res
    assert_rel(o1, o2, where="bp vs nn.RNN output")
    assert_rel(n1, n2, where="bp vs nn.RNN h_n")
    for a, b in zip(g1, g2):
        assert_rel(a, b, where="bp vs nn.RNN param grad")
    assert_rel(x1, x2, where="bp vs nn.RNN input grad")
    if with_h0:
        assert_rel(h1, h2, where="bp vs nn.RNN h0 grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["linearized", "difference", "direct"])
def test_through_time_is_bp_of_target_losses(rule, backend):
    """through_time=True: same targets; direction = ∇θ Σ_t ½‖h_t(θ) − v_t‖² through the recurrence."""
    layer, x, h0, C, Cn = make_problem("tanh", T=7, seed=5)
    layer.rule, layer.through_time, layer.target_step, layer.backend = rule, True, 0.05, backend
    grads, gx, gh0, _, _ = run_layer(layer, x, h0, C, Cn)
    _, _, _, hs = reference_run(layer, rule, x, h0, C, Cn)
    P = {k: w.detach() for k, w in layer.named_parameters()}
    T = x.shape[1]
    g = [None] + [C[:, t] for t in range(T)]
    g[T] = g[T] + Cn[0]
    _, v = ref.targets(rule, "tanh", x, h0[0], P, g, layer.target_step, layer.reg, layer.tol)
    rnn = torch.nn.RNN(2, 4, batch_first=True, dtype=D64)
    rnn.load_state_dict(layer.state_dict())
    xg, hg = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, _ = rnn(xg, hg)
    (0.5 * ((out - torch.stack(v[1:], 1)) ** 2).sum()).backward()
    for (k, a), b in zip(grads.items(), rnn.parameters()):
        assert_rel(a, b.grad, where=f"through_time/{rule} {k}")
    assert_rel(gx, xg.grad, where=f"through_time/{rule} input grad")
    assert_rel(gh0, hg.grad, where=f"through_time/{rule} h0 grad")


def test_through_time_last_term_is_gamma_times_bp():
    """With a loss on h_T only and T = 1, the through-time direction is exactly γ_h × BP's gradient."""
    layer, x, h0, C, Cn = make_problem("tanh", T=1, seed=8)
    C.zero_()
    layer.rule = "bp"
    bp, *_ = run_layer(layer, x, h0, C, Cn)
    layer.rule, layer.through_time, layer.target_step = "linearized", True, 0.03
    tt, *_ = run_layer(layer, x, h0, C, Cn)
    for k in bp:
        assert_rel(tt[k], 0.03 * bp[k], where=f"through_time T=1 {k}")
