"""The exact facts listed in docs/maths.md ("Exact facts the tests check"), checked in float64."""
import pytest
import torch

from helpers import assert_rel, rel_err
from problems import D64, make_problem, run_layer
from targetprop import TPRNN, get_activation, inverse_operator, invert_step, orthogonal_


def test_identity_r0_orthogonal_linearized_is_gamma_bp():
    """a = identity, r = 0, W_hh orthogonal ⇒ M = W_hhᵀ, so every λ is γ_h × the negated adjoint."""
    layer, x, h0, C, Cn = make_problem("identity", T=12, seed=11)
    with torch.no_grad():
        orthogonal_(layer.weight_hh_l0, torch.Generator().manual_seed(1))
    layer.rule = "bp"
    bp, bx, bh, _, _ = run_layer(layer, x, h0, C, Cn)
    layer.rule, layer.reg, layer.target_step, layer.signal_below = "linearized", 0.0, 0.037, "target"
    tp, tx, th, _, _ = run_layer(layer, x, h0, C, Cn)
    for k in bp:
        assert_rel(tp[k], 0.037 * bp[k], where=f"identity/r=0/orthogonal {k}")
    assert_rel(tx, 0.037 * bx, where="identity/r=0/orthogonal input grad")
    assert_rel(th, 0.037 * bh, where="identity/r=0/orthogonal h0 grad")
    # the default signal below is in BP's units: here exactly BP's input and h0 gradients
    layer.signal_below = "gradient"
    _, tx, th, _, _ = run_layer(layer, x, h0, C, Cn)
    assert_rel(tx, bx, where="identity/r=0/orthogonal input grad, signal_below='gradient'")
    assert_rel(th, bh, where="identity/r=0/orthogonal h0 grad, signal_below='gradient'")


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_direct_equals_difference_when_inverse_is_exact(act):
    """r = 0 and W_hh invertible: f⁻¹(h_t) = h_{t-1}, so direct = difference (no clipping by π)."""
    layer, x, h0, C, Cn = make_problem(act, T=8, seed=12, scale=0.5)
    with torch.no_grad():
        layer.weight_hh_l0.add_(torch.eye(4, dtype=D64))  # well conditioned
    layer.reg, layer.target_step, layer.tol = 0.0, 1e-3, 1e-6
    layer.rule = "difference"
    a, ax, ah, out, _ = run_layer(layer, x, h0, C, Cn)
    lo, hi = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}[act]
    assert lo + 1e-3 < out.min() and out.max() < hi - 1e-3  # far inside the range: π clips nothing
    layer.rule = "direct"
    b, bx, bh, _, _ = run_layer(layer, x, h0, C, Cn)
    for k in a:
        # agreement is limited by the conditioning of the exact inverse chain, not the engine
        assert_rel(b[k], a[k], tol=1e-8, where=f"direct vs difference {act} {k}")
    assert_rel(bx, ax, tol=1e-8)
    assert_rel(bh, ah, tol=1e-8)


def test_difference_tends_to_linearized_at_rate_gamma():
    """‖grad_diff/γ − grad_lin/γ‖ = O(γ_h): the error falls ~10× when γ_h falls 10×."""
    layer, x, h0, C, Cn = make_problem("tanh", T=10, seed=13)
    errs = []
    for gamma in (1e-3, 1e-4, 1e-5):
        layer.target_step = gamma
        layer.rule = "difference"
        d = run_layer(layer, x, h0, C, Cn)[0]["weight_hh_l0"] / gamma
        layer.rule = "linearized"
        lin = run_layer(layer, x, h0, C, Cn)[0]["weight_hh_l0"] / gamma
        errs.append(rel_err(d, lin))
    assert errs[0] < 0.3
    for big, small in zip(errs, errs[1:]):
        assert 7 < big / small < 13, errs


def test_regularized_inverse_is_the_ridge_least_squares_solution():
    """f⁻¹(v) minimizes ‖W_hh w − z‖² + r‖w‖² with z = a⁻¹(π(v)) − W_ih x − b: lstsq of the stacked system."""
    g = torch.Generator().manual_seed(0)
    p, d, B = 7, 3, 5
    W = torch.randn(p, p, generator=g, dtype=D64)
    W[:, 0] = W[:, 1]  # singular: only the ridge term makes the solution unique
    Wih = torch.randn(p, d, generator=g, dtype=D64)
    b = torch.randn(p, generator=g, dtype=D64)
    x = torch.randn(B, d, generator=g, dtype=D64)
    v = 1.2 * torch.rand(B, p, generator=g, dtype=D64) - 0.6
    act = get_activation("tanh")
    for r in (1e-3, 0.5, 10.0):
        got = invert_step(v, x, Wih, W, b, act, r, 1e-3)
        z = torch.atanh(v) - x @ Wih.T - b
        A = torch.cat([W, r**0.5 * torch.eye(p, dtype=D64)])
        rhs = torch.cat([z.T, torch.zeros(p, B, dtype=D64)])
        want = torch.linalg.lstsq(A, rhs, driver="gelsd").solution.T
        assert_rel(got, want, where=f"regularized inverse vs lstsq r={r}")
    # projection: targets outside the range are clipped to ±(1 − tol) before a⁻¹
    far = torch.full((1, p), 3.0, dtype=D64)
    clipped = torch.full((1, p), 1 - 1e-3, dtype=D64)
    assert_rel(invert_step(far, x[:1], Wih, W, b, act, 1.0, 1e-3), invert_step(clipped, x[:1], Wih, W, b, act, 1.0, 1e-3))


def test_inverse_operator_is_exact_inverse_at_r0():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 6, generator=g, dtype=D64) + 3 * torch.eye(6, dtype=D64)
    assert_rel(inverse_operator(W, 0.0), torch.linalg.inv(W), where="M at r=0 vs inv(W)")


def _jacobians(layer, x, h0):
    """Per step, in the paper's notation (transposed Jacobians, one sample):
    J_t = ∂_h f_t(h_{t-1}) = W_hhᵀ diag(a'_t) and Ĵ_t = ∂_h f_t⁻¹(h_t)ᵀ = M diag(1/a'_t)."""
    W = layer.weight_hh_l0.detach()
    M = inverse_operator(W, layer.reg)
    with torch.no_grad():
        out, _ = layer(x, h0)
    hs = torch.cat([h0[0][:, None], out], 1)[0]
    J, Jhat, dA = [], [], []
    for t in range(1, hs.shape[0]):
        a = 1 - hs[t] ** 2
        J.append(W.T @ torch.diag(a))
        Jhat.append(M @ torch.diag(1 / a))
        dA.append(a)
    return J, Jhat, dA, hs, W, M


@pytest.mark.parametrize("seed", range(20))
def test_lemma_3_1_bound_on_random_instances(seed):
    """Lemma 3.1 on random instances (B = 1, loss on h_T only, γ_h = 1), for grad W_hh in Frobenius norm.

    BP: grad = Σ_t D_t(P_t g), TP: Σ_t D_t(P̂_t g), P_t = J_{t+1}⋯J_T, P̂_t = Ĵ_{t+1}⋯Ĵ_T, and
    D_t(λ) = (a'_t ⊙ λ) h_{t-1}ᵀ with ‖D_t‖ ≤ K = max_t ‖a'_t‖_∞ ‖h_{t-1}‖. Telescoping,
    ‖P_t − P̂_t‖₂ ≤ Σ_{s=0}^{T-t-1} a^s b^{T-t-1-s} ε with ε = sup‖J_t − Ĵ_t‖₂, so
    ‖BP − TP‖_F ≤ c ε K ‖g‖ with the paper's c = Σ_{t=1}^{T} Σ_{s=0}^{t-1} a^s b^{t-1-s}
    (the paper's statement leaves K‖g‖ inside its norm). Also checks the paper's bound on ε.
    """
    g = torch.Generator().manual_seed(seed)
    T, p = 1 + seed % 7, 2 + seed % 5
    layer = TPRNN(2, p, batch_first=True, dtype=D64, target_step=1.0, reg=float(10 ** (seed % 5 - 2)),
                  tol=1e-3, through_time=False)
    with torch.no_grad():
        for w in layer.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=D64) * 0.8 / p**0.5)
    x = torch.randn(1, T, 2, generator=g, dtype=D64)
    h0 = 0.5 * torch.randn(1, 1, p, generator=g, dtype=D64)
    cost = torch.randn(1, 1, p, generator=g, dtype=D64)
    J, Jhat, dA, hs, W, M = _jacobians(layer, x, h0)
    grads = {}
    for rule in ("bp", "linearized"):
        layer.rule = rule
        layer.zero_grad()
        out, hn = layer(x, h0)
        (hn * cost).sum().backward()
        grads[rule] = layer.weight_hh_l0.grad.clone()
    norm = lambda A: torch.linalg.matrix_norm(A, 2).item()
    a = max(norm(j) for j in J)
    b = max(norm(j) for j in Jhat)
    eps = max(norm(j - jh) for j, jh in zip(J, Jhat))
    c = sum(a**s * b ** (t - 1 - s) for t in range(1, T + 1) for s in range(t))
    K = max(d.abs().max().item() * hs[t].norm().item() for t, d in enumerate(dA))
    lhs = (grads["bp"] - grads["linearized"]).norm().item()
    assert lhs <= c * eps * K * cost.norm().item() * (1 + 1e-12)
    # the paper's bound on ε for regularized inverses
    Winv = torch.linalg.inv(W.T @ W + layer.reg * torch.eye(p, dtype=D64))
    for j, jh, d in zip(J, Jhat, dA):
        bound = norm(W.T) * (norm(torch.diag(d) - torch.diag(1 / d))
                             + norm(torch.eye(p, dtype=D64) - Winv) * norm(torch.diag(1 / d)))
        assert norm(j - jh) <= bound * (1 + 1e-12)
