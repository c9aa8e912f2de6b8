"""The Elman cell ``h_t = a(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` and its rules (docs/maths.md,
"Targets (eqs. 1–2)"), row by row, with the regularized inverse as one explicit linear solve.

The linearized rule is the Jacobian of ``f⁻¹`` at ``h_t`` by autograd, with the derivative of ``π``
written as docs/maths.md states it: tanh and sigmoid read ``a'`` at ``π(h_t)`` (a unit past the
shrunk range gets the slope at its end, ``1/a'`` floored, not 0), so ``π`` is written as a clamp
whose derivative is 1; ReLU's ``π`` clamps to ``[0, ∞)`` and is written as ``v·1{v > 0}``, so an
off unit (``v = 0``) passes no displacement: the derivative on the side of the kink where ``π``
is constant.

``P`` holds one layer and direction's parameters under layer 0's names (``weight_ih_l0``, …).
"""
from __future__ import annotations

import torch

from .targets import jvp, vjp

STATES = 1
INF = float("inf")
ACTS = {
    # name: (a, a⁻¹, range (lo, hi) before shrinking by tol)
    "tanh": (torch.tanh, torch.atanh, (-1.0, 1.0)),
    "sigmoid": (torch.sigmoid, torch.logit, (0.0, 1.0)),
    "identity": (lambda u: u, lambda y: y, (-INF, INF)),
    "relu": (torch.relu, lambda y: y, (0.0, INF)),
}
#: rules whose input displacement is a target of ``x_t W_ihᵀ``, not a difference (``z`` then subtracts ``x``)
INPUT_TARGET_RULES = ("direct",)


def project(name: str, v, tol: float):
    """``π``: into the range of the activation shrunk by ``tol`` (ReLU: see the module docstring)."""
    lo, hi = ACTS[name][2]
    if name == "relu":
        return v * (v > 0)
    if lo == -INF:
        return v
    return v + (v.clamp(lo + tol, hi - tol) - v).detach()  # the clamp's values, derivative 1


def preimage(name: str, v, tol: float):
    """``a⁻¹(π(v))``: the pre-activation whose image is the projected target."""
    return ACTS[name][1](project(name, v, tol))


def _bias(P):
    return P["bias_ih_l0"] + P["bias_hh_l0"] if "bias_ih_l0" in P else 0.0


def pre_activation(x_t, h_prev, P):
    return x_t @ P["weight_ih_l0"].T + h_prev @ P["weight_hh_l0"].T + _bias(P)


def stepper(P: dict, name: str):
    return lambda x_t, h_prev, params: ACTS[name][0](pre_activation(x_t, h_prev, params))


def reg_inverse(name: str, v, x_t, P, reg: float, tol: float):
    """``f⁻¹(v) = (W_hhᵀW_hh + rI)⁻¹ W_hhᵀ (a⁻¹(π(v)) − W_ih x − b)`` (Section 2.1), one solve."""
    W = P["weight_hh_l0"]
    z = preimage(name, v, tol) - x_t @ P["weight_ih_l0"].T - _bias(P)
    A = W.T @ W + reg * torch.eye(W.shape[0], dtype=W.dtype)
    return torch.linalg.solve(A, W.T @ z.T).T


def rule(rule_name: str, P: dict, name: str, *, reg: float, tol: float, inverse: dict | None = None):
    """``R(x_t, h_{t-1}, h_t, λ_t)`` of ``rule_name`` (docs/maths.md's table; ``learned``: the
    reverse layer ``ψ_t(v) = a(x_t W_ihᵀ + v Vᵀ + c)`` of ``inverse = {"weight": V, "bias": c}``)."""
    step = stepper(P, name)
    inv = lambda x_t, v: reg_inverse(name, v, x_t, P, reg, tol)  # noqa: E731
    if rule_name == "bp":
        return lambda x_t, h_prev, h_t, lam: vjp(lambda h: step(x_t, h, P), h_prev, lam)
    if rule_name == "linearized":
        return lambda x_t, h_prev, h_t, lam: jvp(lambda v: inv(x_t, v), h_t, lam)
    if rule_name == "difference":
        return lambda x_t, h_prev, h_t, lam: inv(x_t, h_t + lam) - inv(x_t, h_t)
    if rule_name == "direct":
        return lambda x_t, h_prev, h_t, lam: inv(x_t, h_t + lam) - h_prev
    if rule_name == "learned":
        a, V, c = ACTS[name][0], inverse["weight"], inverse["bias"]
        psi = lambda x_t, v: a(x_t @ P["weight_ih_l0"].T + v @ V.T + c)  # noqa: E731
        return lambda x_t, h_prev, h_t, lam: psi(x_t, h_t + lam) - psi(x_t, h_t)
    raise ValueError(f"no reference for the rnn rule {rule_name!r}")


def input_displacement(rule_name: str, P: dict, name: str, *, tol: float):
    """``y(x_t, h_{t-1}, h_t, λ_t)``: the displacement of the pre-activation ``x_t W_ihᵀ`` that a TP
    rule hands down a stack (``direct``: the target of ``x_t W_ihᵀ`` itself)."""
    pre = lambda v: preimage(name, v, tol)  # noqa: E731
    if rule_name == "linearized":
        return lambda x_t, h_prev, h_t, lam: jvp(pre, h_t, lam)
    if rule_name == "difference":
        return lambda x_t, h_prev, h_t, lam: pre(h_t + lam) - pre(h_t)
    if rule_name == "direct":
        return lambda x_t, h_prev, h_t, lam: pre(h_t + lam) - h_prev @ P["weight_hh_l0"].T - _bias(P)
    raise ValueError(f"the rnn rule {rule_name!r} has no step down a stack")
