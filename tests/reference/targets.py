"""The cell-independent part of the reference for one layer and direction: its states, eqs. (1)–(2)
as displacements, eq. (3) and the through-time variant, for any one-step map
``step(x_t, s_{t-1}, P)`` acting on rows.

Conventions (docs/maths.md): ``x`` is time-major (T, B, d), a state ``s`` is (B, S·p) (``[h, c]``
for the LSTM), ``λ_t = v_t − s_t``; lists are indexed by t = 0..T.
"""
from __future__ import annotations

import torch


def states(step, x, s0, P) -> list:
    """``[s_0, s_1, …, s_T]``."""
    ss = [s0]
    for t in range(x.shape[0]):
        ss.append(step(x[t], ss[-1], P))
    return ss


def displacements(rule_step, x, ss, injected) -> list:
    """``λ_T = injected_T``, ``λ_{t-1} = R(λ_t, t) + injected_{t-1}`` (eqs. 1–2; ``injected_t`` is
    ``−γ g_t`` plus, in a stack, what the layer above hands down; ``injected_0 = 0``), where
    ``rule_step(x_t, s_{t-1}, s_t, λ_t)`` is the rule's ``R``."""
    T = x.shape[0]
    lam = [None] * (T + 1)
    lam[T] = injected[T]
    for t in range(T, 0, -1):
        lam[t - 1] = rule_step(x[t - 1], ss[t - 1], ss[t], lam[t]) + injected[t - 1]
    return lam


def vjp(fn, at, cotangent):
    """``J_fn(at)ᵀ cotangent`` by autograd (rows are independent: one batched product is exact)."""
    return torch.autograd.functional.vjp(fn, at, cotangent)[1]


def jvp(fn, at, tangent):
    """``J_fn(at) tangent`` by autograd."""
    return torch.autograd.functional.jvp(fn, at, tangent)[1]


def _leaves(P: dict, x):
    return {k: w.detach().clone().requires_grad_(True) for k, w in P.items()}, x.detach().clone().requires_grad_(True)


def _grads(loss, P, extra: dict) -> dict:
    loss.backward()
    return {**{k: w.grad for k, w in P.items()}, **{k: w.grad for k, w in extra.items()}}


def local_directions(step, P, x, ss, v) -> dict:
    """Eq. (3): gradients of ``Σ_t ½‖f_θ(s_{t-1}, x_t) − v_t‖²`` with ``s_{t-1}``, ``v_t`` fixed,
    w.r.t. the parameters and the input."""
    Pg, xg = _leaves(P, x)
    loss = sum(0.5 * ((step(xg[t - 1], ss[t - 1].detach(), Pg) - v[t].detach()) ** 2).sum()
               for t in range(1, x.shape[0] + 1))
    return _grads(loss, Pg, {"input": xg})


def through_time_directions(step, P, x, s0, v) -> dict:
    """The authors' variant: gradients of ``Σ_t ½‖s_t(θ, x, s_0) − v_t‖²`` through the whole
    recurrence, w.r.t. the parameters, the input and ``s_0``."""
    Pg, xg = _leaves(P, x)
    sg = s0.detach().clone().requires_grad_(True)
    ss = states(step, xg, sg, Pg)
    loss = sum(0.5 * ((ss[t] - v[t].detach()) ** 2).sum() for t in range(1, x.shape[0] + 1))
    return _grads(loss, Pg, {"input": xg, "h0": sg})
