"""Straightforward float64 reference implementations, written independently of the package.

Everything here is per time step and per formula, as the paper writes it (column vectors
inside, batches handled by looping over rows where a Jacobian is needed), with autograd
supplying Jacobians and the parameter derivatives of eq. (3). Slow and obviously right.
"""
from __future__ import annotations

import torch

ACTS = {
    # name: (a, a⁻¹, range (lo, hi) before shrinking by tol)
    "tanh": (torch.tanh, torch.atanh, (-1.0, 1.0)),
    "sigmoid": (torch.sigmoid, torch.logit, (0.0, 1.0)),
    "identity": (lambda u: u, lambda y: y, (-float("inf"), float("inf"))),
}


def project(name, v, tol):
    lo, hi = ACTS[name][2]
    if lo == -float("inf"):
        return v
    return v.clamp(lo + tol, hi - tol)


def step(name, x_t, h_prev, P):
    """``f(h_{t-1}) = a(W_ih x + b_ih + W_hh h + b_hh)`` on rows."""
    u = x_t @ P["weight_ih_l0"].T + h_prev @ P["weight_hh_l0"].T
    if "bias_ih_l0" in P:
        u = u + P["bias_ih_l0"] + P["bias_hh_l0"]
    return ACTS[name][0](u)


def states(name, x, h0, P):
    """[h_0, h_1, ..., h_T] for batch-first x (B, T, d)."""
    hs = [h0]
    for t in range(x.shape[1]):
        hs.append(step(name, x[:, t], hs[-1], P))
    return hs


def reg_inverse(name, v, x_t, P, reg, tol):
    """Eq. (4) with ridge: (WᵀW + rI)⁻¹ Wᵀ (a⁻¹(π(v)) − W_ih x − b), one linear solve, rows."""
    W = P["weight_hh_l0"]
    z = ACTS[name][1](project(name, v, tol)) - x_t @ P["weight_ih_l0"].T
    if "bias_ih_l0" in P:
        z = z - P["bias_ih_l0"] - P["bias_hh_l0"]
    A = W.T @ W + reg * torch.eye(W.shape[0], dtype=W.dtype)
    return torch.linalg.solve(A, W.T @ z.T).T


def targets(rule, name, x, h0, P, g, gamma, reg, tol):
    """Targets v_0..v_T of eqs. (1)–(2) for each rule; g[t] = ∂ℓ/∂h_t (direct), t = 1..T.

    ``bp``: the same recursion with the transposed Jacobian of f and γ = 1, so that
    ``v_t − h_t`` is the negated adjoint.
    """
    hs = states(name, x, h0, P)
    T = x.shape[1]
    if rule == "bp":
        gamma = 1.0
    v = [None] * (T + 1)
    v[T] = hs[T] - gamma * g[T]
    for t in range(T, 0, -1):
        lam = v[t] - hs[t]
        x_t = x[:, t - 1]
        rows = []
        for b in range(x.shape[0]):
            if rule == "bp":
                J = torch.autograd.functional.jacobian(lambda h: step(name, x_t[b : b + 1], h, P)[0], hs[t - 1][b : b + 1])
                rows.append(J[:, 0, :].T @ lam[b])
            elif rule == "linearized":
                J = torch.autograd.functional.jacobian(
                    lambda vv: reg_inverse(name, vv, x_t[b : b + 1], P, reg, tol)[0], hs[t][b : b + 1])
                rows.append(J[:, 0, :] @ lam[b])
            elif rule == "difference":
                rows.append((reg_inverse(name, v[t][b : b + 1], x_t[b : b + 1], P, reg, tol)
                             - reg_inverse(name, hs[t][b : b + 1], x_t[b : b + 1], P, reg, tol))[0])
            elif rule == "direct":
                rows.append(reg_inverse(name, v[t][b : b + 1], x_t[b : b + 1], P, reg, tol)[0] - hs[t - 1][b])
            else:
                raise ValueError(rule)
        lam_prev = torch.stack(rows)
        g_prev = g[t - 1] if t - 1 >= 1 else torch.zeros_like(lam_prev)
        v[t - 1] = hs[t - 1] + lam_prev - gamma * g_prev
    return hs, v


def local_directions(name, x, h0, P, hs, v):
    """Eq. (3): grads of Σ_t ½‖f_θ(h_{t-1}, x_t) − v_t‖² with h_{t-1}, v_t fixed; also w.r.t. x."""
    Pg = {k: w.detach().clone().requires_grad_(True) for k, w in P.items()}
    xg = x.detach().clone().requires_grad_(True)
    loss = 0.0
    for t in range(1, x.shape[1] + 1):
        loss = loss + 0.5 * ((step(name, xg[:, t - 1], hs[t - 1].detach(), Pg) - v[t].detach()) ** 2).sum()
    loss.backward()
    return {k: w.grad for k, w in Pg.items()}, xg.grad
