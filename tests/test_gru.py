"""TPGRU beyond the case table (tests/test_table.py checks its rules against the float64 reference
for every layer shape): bp against torch.nn.GRU autograd, the reference's written-out rule
reducing to BP's step, the pinned-gate reduction, the forward that keeps the gates, state dicts,
bad input and training; each exact check on both backends."""
import pytest
import torch

from helpers import assert_rel, train_to_full_accuracy
from problems import BACKENDS, D64, make_gru, run_layer
from targetprop import TPGRU, orthogonal_, orthogonal_init_


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias, p", [(True, 4), (False, 4), (True, 37)])
def test_bp_equals_torch_gru_autograd(bias, p, backend):
    layer, x, h0, C, Cn = make_gru(T=8, p=p, seed=1, bias=bias, backend=backend)
    layer.rule = "bp"
    ref = torch.nn.GRU(2, p, batch_first=True, dtype=D64, bias=bias)
    ref.load_state_dict(layer.state_dict())
    g, gx, gh, out, _ = run_layer(layer, x, h0, C, Cn)
    xg, hg = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    rout, rhn = ref(xg, hg)
    ((rout * C).sum() + (rhn * Cn).sum()).backward()
    assert_rel(out, rout, where="gru forward")
    for (k, a), b in zip(g.items(), ref.parameters()):
        assert_rel(a, b.grad, where=f"gru bp {k}")
    assert_rel(gx, xg.grad, where="gru bp input grad")
    assert_rel(gh, hg.grad, where="gru bp h0 grad")


def test_the_written_out_rule_with_w_for_m_and_multiplication_is_bps_adjoint():
    """The reference's GRU rule (tests/reference/gru.py) with each M_gᵀ replaced by W_hg and each
    division by a gate derivative by a multiplication is the step's exact transposed Jacobian
    (autograd), for a generic λ: the rule's pieces are BP's, only the inverses differ."""
    from reference import gru as ref_gru
    from reference.targets import vjp

    layer, x, h0, *_ = make_gru(seed=6, scale=1.5)
    P = {k: w.detach() for k, w in layer.named_parameters()}
    lam = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=D64)
    x_t, h = x[:, 0], h0[0]
    bp_like = ref_gru.written_out(P, list(P["weight_hh_l0"].split(4)), False, 0.0)
    assert_rel(bp_like(x_t, h, ref_gru.step(x_t, h, P), lam), vjp(lambda v: ref_gru.step(x_t, v, P), h, lam),
               where="GRU rule with W and multiply vs autograd")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pinned_gates_reduce_to_the_algebra(backend):
    """r = 0, orthogonal W_hr, W_hz, W_hn, gates pinned by biases: b_z = −40 (z ≈ 4e−18, update
    gate shut: h' = n), b_r = +40 (r = 1 in float64: reset gate open).

    Orthogonal W and r = 0 give M_g = W_gᵀ, so M_gᵀ = W_g. The rule's step
    λ = z⊙λ' + [(h−n)⊙λ' ⊘ z(1−z)] M_zᵀ + [q(1−n²)(1−z)⊙λ' ⊘ r(1−r)] M_rᵀ + [r(1−n²)(1−z)⊙λ'] M_nᵀ
    becomes, with z(1−z) and r(1−r) floored at c = τ(1−τ):
        λ = [(1−n²)⊙λ'] W_hn + ([(h−n)⊙λ'] W_hz + [q(1−n²)⊙λ'] W_hr) / c,
    while BP's adjoint step becomes the Elman-like μ = [(1−n²)⊙μ'] W_hn (the gate terms carry
    σ' ≈ 4e−18). So TP = BP's n-path plus the gate paths amplified by 1/c: a saturated gate's
    inverse is as ill-conditioned as τ allows. Checked on one step (T = 1, loss on h_1).
    """
    layer, x, h0, C, Cn = make_gru(T=1, seed=3, backend=backend)
    p = 4
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for block in layer.weight_hh_l0.chunk(3):
            orthogonal_(block, gen)
        layer.bias_ih_l0[:p] = 40.0  # r
        layer.bias_ih_l0[p:2 * p] = -40.0  # z
    C.zero_()
    layer.reg, layer.target_step, layer.tol, layer.signal_below = 0.0, 0.01, 1e-3, "target"
    layer.through_time = False  # the algebra above is eq. 3's
    Wr, Wz, Wn = layer.weight_hh_l0.detach().split(p)
    h = h0[0]
    gh = h @ layer.weight_hh_l0.detach().T + layer.bias_hh_l0.detach()
    gi = x[:, 0] @ layer.weight_ih_l0.detach().T + layer.bias_ih_l0.detach()
    q = gh[:, 2 * p:]
    n = torch.tanh(gi[:, 2 * p:] + q)  # r = 1
    g = Cn[0]
    c = 1e-3 * (1 - 1e-3)
    layer.rule = "linearized"
    tp_h0 = run_layer(layer, x, h0, C, Cn)[2][0]
    expect = 0.01 * (((1 - n**2) * g) @ Wn + (((h - n) * g) @ Wz + (q * (1 - n**2) * g) @ Wr) / c)
    assert_rel(tp_h0, expect, tol=1e-12, where="pinned-gate GRU rule")
    layer.rule = "bp"
    bp_h0 = run_layer(layer, x, h0, C, Cn)[2][0]
    assert_rel(bp_h0, ((1 - n**2) * g) @ Wn, tol=1e-12, where="pinned-gate GRU adjoint")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [4, 37])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_for_backward_keeps_the_gates_of_the_native_forward(bias, p, backend):
    """The forward used when a backward follows: hidden states equal torch.gru's, and the kept
    gates equal the cell's r, z, q, n written out per step (p = 37: every register block)."""
    from targetprop.cells import gru
    from targetprop import kernels

    layer, x, h0, *_ = make_gru(T=9, B=5, p=p, seed=4, scale=1.5, bias=bias)
    xs, h = x.transpose(0, 1), h0[0]
    w = [layer.weight_ih_l0, layer.weight_hh_l0] + ([layer.bias_ih_l0, layer.bias_hh_l0] if bias else [None, None])
    w = [t.detach() if t is not None else None for t in w]
    out, gates = gru.forward_for_backward(xs, h, *w, None, kernels.select(backend, xs))
    assert_rel(out, gru.forward(xs, h, *w), where="gru forward keeping gates vs native")
    for t in range(xs.shape[0]):
        gi = xs[t] @ w[0].T + (w[2] if bias else 0)
        gh = h @ w[1].T + (w[3] if bias else 0)
        r = torch.sigmoid(gi[:, :p] + gh[:, :p])
        z = torch.sigmoid(gi[:, p:2 * p] + gh[:, p:2 * p])
        n = torch.tanh(gi[:, 2 * p:] + r * gh[:, 2 * p:])
        assert_rel(gates[t], torch.stack([r, z, gh[:, 2 * p:], n], 1), where="gru kept gates")
        h = out[t]


def test_no_gates_are_kept_without_a_backward(monkeypatch):
    """Evaluation (no_grad, or nothing requiring grad) runs the native forward and keeps no gates."""
    from targetprop.cells import gru

    calls = []
    keep = gru.forward_for_backward
    monkeypatch.setattr(gru, "forward_for_backward", lambda *a: calls.append(1) or keep(*a))
    layer, x, *_ = make_gru(T=5)
    with torch.no_grad():
        quiet, _ = layer(x)
    layer.requires_grad_(False)
    frozen, _ = layer(x)
    assert calls == [] and quiet.grad_fn is None
    layer.requires_grad_(True)
    out, _ = layer(x)
    assert calls == [1]
    assert_rel(out, quiet, where="gru forward with and without gates")


def test_gru_state_dict_and_bad_input():
    layer = TPGRU(3, 5)
    ref = torch.nn.GRU(3, 5, batch_first=True)
    layer.load_state_dict(ref.state_dict())
    ref.load_state_dict(layer.state_dict())
    with pytest.raises(ValueError, match="not defined for the gru cell"):
        TPGRU(3, 5, rule="learned")
    with pytest.raises(ValueError, match="rule must be one of"):
        TPGRU(3, 5, rule="difference")
    with pytest.raises(ValueError, match="reg"):
        TPGRU(3, 5, reg=-1)
    with pytest.raises(ValueError, match="input_size=3"):
        layer(torch.randn(2, 4, 2))
    with pytest.raises(ValueError, match="backend"):
        TPGRU(3, 5, backend="fast")


@pytest.mark.parametrize("rule,lr", [("linearized", 3e-3), ("bp", 1e-2)])
def test_tpgru_reaches_100_percent_on_temporal_order_10(rule, lr):
    """Measured: TP (Adam 3e-3, γ_h = 1e-2, r = 10) reaches 100% test accuracy at 200 iterations
    on this seed (SGD lr 1.0: 1000); the budget leaves a wide margin."""
    from targetprop.tasks.synthetic import TemporalOrder

    torch.manual_seed(0)
    task = TemporalOrder(10, seed=0, batch_size=20, test_size=200)
    rnn = orthogonal_init_(TPGRU(task.input_size, 32, batch_first=True, rule=rule, reg=10.0, target_step=1e-2))
    head = torch.nn.Linear(32, task.output_size)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=lr)
    it, acc = train_to_full_accuracy(rnn, head, opt, task, budget=1500)
    assert acc == 1.0, (rule, it, acc)
