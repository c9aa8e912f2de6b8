"""The cell-independent part of the reference: eqs. (1)–(2) as displacements, eq. (3), and the
through-time variant, for any one-step map ``step(x_t, h_{t-1}, P)`` acting on rows.

Conventions (docs/maths.md): ``x`` is batch-first (B, T, d), ``h0`` is (B, p), ``g[t]`` is
``∂ℓ/∂h_t`` (B, p) for t = 1..T (``g[0]`` unused), ``λ_t = v_t − h_t``.
"""
from __future__ import annotations

import torch


def states(step, x, h0, P) -> list:
    """``[h_0, h_1, …, h_T]``."""
    hs = [h0]
    for t in range(x.shape[1]):
        hs.append(step(x[:, t], hs[-1], P))
    return hs


def displacements(rule_step, x, hs, g, gamma) -> list:
    """``λ_T = −γ g_T`` (eq. 1), ``λ_{t-1} = R(λ_t, t) − γ g_{t-1}`` (eq. 2, ``g_0 = 0``), where
    ``rule_step(x_t, h_{t-1}, h_t, λ_t)`` is the rule's ``R``."""
    T = x.shape[1]
    lam = [None] * (T + 1)
    lam[T] = -gamma * g[T]
    for t in range(T, 0, -1):
        lam[t - 1] = rule_step(x[:, t - 1], hs[t - 1], hs[t], lam[t])
        if t > 1:
            lam[t - 1] = lam[t - 1] - gamma * g[t - 1]
    return lam


def vjp(fn, at, cotangent):
    """``J_fn(at)ᵀ cotangent`` by autograd (rows are independent: one batched product is exact)."""
    return torch.autograd.functional.vjp(fn, at, cotangent)[1]


def jvp(fn, at, tangent):
    """``J_fn(at) tangent`` by autograd."""
    return torch.autograd.functional.jvp(fn, at, tangent)[1]


def _grads(loss, P, extra: dict) -> dict:
    loss.backward()
    return {**{k: w.grad for k, w in P.items()}, **{k: w.grad for k, w in extra.items()}}


def local_directions(step, P, x, hs, v) -> dict:
    """Eq. (3): gradients of ``Σ_t ½‖f_θ(h_{t-1}, x_t) − v_t‖²`` with ``h_{t-1}``, ``v_t`` fixed,
    w.r.t. the parameters and the input."""
    Pg = {k: w.detach().clone().requires_grad_(True) for k, w in P.items()}
    xg = x.detach().clone().requires_grad_(True)
    loss = sum(0.5 * ((step(xg[:, t - 1], hs[t - 1].detach(), Pg) - v[t].detach()) ** 2).sum()
               for t in range(1, x.shape[1] + 1))
    return _grads(loss, Pg, {"input": xg})


def through_time_directions(step, P, x, h0, v) -> dict:
    """The authors' variant: gradients of ``Σ_t ½‖h_t(θ, x, h_0) − v_t‖²`` through the whole
    recurrence, w.r.t. the parameters, the input and ``h_0``."""
    Pg = {k: w.detach().clone().requires_grad_(True) for k, w in P.items()}
    xg = x.detach().clone().requires_grad_(True)
    hg = h0.detach().clone().requires_grad_(True)
    hs = states(step, xg, hg, Pg)
    loss = sum(0.5 * ((hs[t] - v[t].detach()) ** 2).sum() for t in range(1, x.shape[1] + 1))
    return _grads(loss, Pg, {"input": xg, "h0": hg})


def run_cell(step, rule_step, P, x, h0, g, *, gamma: float, through_time: bool) -> dict:
    """``{"out": (B, T, p), "targets": [v_1..v_T], parameter name: direction, "input": …, "h0": …}``."""
    with torch.no_grad():
        hs = states(step, x, h0, P)
    lam = displacements(rule_step, x, hs, g, gamma)
    v = [h + l for h, l in zip(hs, lam)]
    if through_time:
        result = through_time_directions(step, P, x, h0, v)
    else:
        result = {**local_directions(step, P, x, hs, v), "h0": -lam[0]}
    return {**result, "out": torch.stack(hs[1:], 1), "targets": v[1:]}
