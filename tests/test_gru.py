"""TPGRU: bp against torch.nn.GRU autograd, the authors' GRU rule against a straightforward loop,
the through-time variant, the pinned-gate reduction, the forward that keeps the gates, and
training; each exact check on both backends (the compiled loop and the pure-PyTorch path)."""
import pytest
import torch

from helpers import assert_rel, train_to_full_accuracy
from targetprop import TPGRU, orthogonal_, orthogonal_init_

D64 = torch.float64
BACKENDS = ["torch", "cpp"]


def make_gru(B=3, T=6, d=2, p=4, seed=0, scale=0.6, bias=True, backend="auto"):
    g = torch.Generator().manual_seed(seed)
    layer = TPGRU(d, p, bias=bias, batch_first=True, dtype=D64, backend=backend)
    with torch.no_grad():
        for w in layer.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=D64) * scale / w.shape[-1] ** 0.5)
    x = torch.randn(B, T, d, generator=g, dtype=D64)
    h0 = 0.3 * torch.randn(1, B, p, generator=g, dtype=D64)
    C = torch.randn(B, T, p, generator=g, dtype=D64)
    Cn = torch.randn(1, B, p, generator=g, dtype=D64)
    return layer, x, h0, C, Cn


def run(layer, x, h0, C, Cn):
    layer.zero_grad(set_to_none=True)
    xg, hg = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, hn = layer(xg, hg)
    ((out * C).sum() + (hn * Cn).sum()).backward()
    return {k: w.grad for k, w in layer.named_parameters()}, xg.grad, hg.grad, out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias, p", [(True, 4), (False, 4), (True, 37)])
def test_bp_equals_torch_gru_autograd(bias, p, backend):
    layer, x, h0, C, Cn = make_gru(T=8, p=p, seed=1, bias=bias, backend=backend)
    layer.rule = "bp"
    ref = torch.nn.GRU(2, p, batch_first=True, dtype=D64, bias=bias)
    ref.load_state_dict(layer.state_dict())
    g, gx, gh, out = run(layer, x, h0, C, Cn)
    xg, hg = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    rout, rhn = ref(xg, hg)
    ((rout * C).sum() + (rhn * Cn).sum()).backward()
    assert_rel(out, rout, where="gru forward")
    for (k, a), b in zip(g.items(), ref.parameters()):
        assert_rel(a, b.grad, where=f"gru bp {k}")
    assert_rel(gx, xg.grad, where="gru bp input grad")
    assert_rel(gh, hg.grad, where="gru bp h0 grad")


def reference_gru_tp(layer, x, h0, C, Cn):
    """Straightforward loop of the authors' GRU rule (docs/maths.md, "GRU"), one step and one sample at a
    time in column form, explicit M_g = solve(W_gᵀW_g + rI, W_gᵀ); directions by autograd of the
    local losses through PyTorch's own ``torch.gru_cell`` with h_{t-1} and v_t held fixed."""
    P = {k: w.detach() for k, w in layer.named_parameters()}
    p, T, B = layer.hidden_size, x.shape[1], x.shape[0]
    tol, gamma, reg = layer.tol, layer.target_step, layer.reg
    Wr, Wz, Wn = P["weight_hh_l0"].split(p)
    Ir, Iz, In = P["weight_ih_l0"].split(p)
    bir, biz, bin_ = P["bias_ih_l0"].split(p)
    bhr, bhz, bhn = P["bias_hh_l0"].split(p)
    M = {k: torch.linalg.solve(W.T @ W + reg * torch.eye(p, dtype=D64), W.T) for k, W in (("r", Wr), ("z", Wz), ("n", Wn))}
    hs = [h0[0]]
    for t in range(T):
        hs.append(torch.gru_cell(x[:, t], hs[-1], P["weight_ih_l0"], P["weight_hh_l0"], P["bias_ih_l0"], P["bias_hh_l0"]))
    g = [None] + [C[:, t] for t in range(T)]
    g[T] = g[T] + Cn[0]
    lam = [None] * (T + 1)
    lam[T] = -gamma * g[T]
    for t in range(T, 0, -1):
        rows = []
        for b in range(B):
            xb, h, l = x[b, t - 1], hs[t - 1][b], lam[t][b]
            r = torch.sigmoid(Ir @ xb + bir + Wr @ h + bhr)
            z = torch.sigmoid(Iz @ xb + biz + Wz @ h + bhz)
            q = Wn @ h + bhn
            n = torch.tanh(In @ xb + bin_ + r * q)
            rc, zc = r.clamp(tol, 1 - tol), z.clamp(tol, 1 - tol)
            rows.append(z * l + M["z"] @ ((h - n) * l / (zc * (1 - zc)))
                        + M["r"] @ (q * (1 - n**2) * (1 - z) * l / (rc * (1 - rc)))
                        + M["n"] @ (r * (1 - n**2) * (1 - z) * l))
        lam[t - 1] = torch.stack(rows) - (gamma * g[t - 1] if t - 1 >= 1 else 0)
    Pg = {k: w.clone().requires_grad_(True) for k, w in P.items()}
    xg = x.clone().requires_grad_(True)
    loss = 0
    for t in range(1, T + 1):
        h_t = torch.gru_cell(xg[:, t - 1], hs[t - 1], Pg["weight_ih_l0"], Pg["weight_hh_l0"], Pg["bias_ih_l0"], Pg["bias_hh_l0"])
        loss = loss + 0.5 * ((h_t - (hs[t] + lam[t])) ** 2).sum()
    loss.backward()
    return {k: w.grad for k, w in Pg.items()}, xg.grad, -lam[0], [hs[t] + lam[t] for t in range(1, T + 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linearized_rule_matches_reference_loop(seed, backend):
    layer, x, h0, C, Cn = make_gru(T=7, seed=10 + seed, scale=1.5, backend=backend)
    layer.reg, layer.target_step = 0.5 + seed, 0.05
    g, gx, gh, _ = run(layer, x, h0, C, Cn)
    rg, rgx, rgh, _ = reference_gru_tp(layer, x, h0, C, Cn)
    for k in g:
        assert_rel(g[k], rg[k], where=f"gru linearized {k}")
    assert_rel(gx, rgx, where="gru linearized input grad")
    assert_rel(gh[0], rgh, where="gru linearized h0 grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_through_time_is_bp_of_the_target_losses(seed, backend):
    """through_time=True: the reference loop's targets v_t, then ∇ Σ_t ½‖h_t(θ) − v_t‖² by autograd
    of nn.GRU through the whole recurrence (parameters, input and h0)."""
    layer, x, h0, C, Cn = make_gru(T=7, seed=20 + seed, scale=1.5, backend=backend)
    layer.reg, layer.target_step = 0.7, 0.05
    layer.through_time = True
    g, gx, gh, _ = run(layer, x, h0, C, Cn)
    *_, targets = reference_gru_tp(layer, x, h0, C, Cn)
    ref = torch.nn.GRU(2, 4, batch_first=True, dtype=D64)
    ref.load_state_dict(layer.state_dict())
    xg, hg = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, _ = ref(xg, hg)
    (0.5 * ((out - torch.stack(targets, 1)) ** 2).sum()).backward()
    for (k, a), b in zip(g.items(), ref.parameters()):
        assert_rel(a, b.grad, where=f"gru through_time {k}")
    assert_rel(gx, xg.grad, where="gru through_time input grad")
    assert_rel(gh, hg.grad, where="gru through_time h0 grad")


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
    layer.reg, layer.target_step, layer.tol = 0.0, 0.01, 1e-3
    Wr, Wz, Wn = layer.weight_hh_l0.detach().split(p)
    h = h0[0]
    gh = h @ layer.weight_hh_l0.detach().T + layer.bias_hh_l0.detach()
    gi = x[:, 0] @ layer.weight_ih_l0.detach().T + layer.bias_ih_l0.detach()
    q = gh[:, 2 * p:]
    n = torch.tanh(gi[:, 2 * p:] + q)  # r = 1
    g = Cn[0]
    c = 1e-3 * (1 - 1e-3)
    layer.rule = "linearized"
    tp_h0 = run(layer, x, h0, C, Cn)[2][0]
    expect = 0.01 * (((1 - n**2) * g) @ Wn + (((h - n) * g) @ Wz + (q * (1 - n**2) * g) @ Wr) / c)
    assert_rel(tp_h0, expect, tol=1e-12, where="pinned-gate GRU rule")
    layer.rule = "bp"
    bp_h0 = run(layer, x, h0, C, Cn)[2][0]
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
