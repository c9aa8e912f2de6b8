"""The LSTM cell as PyTorch computes it (gate rows i, f, g, o) and its rules (docs/maths.md,
"LSTM"), row by row, on the state ``s = [h, c]`` (B, 2p):
``i, f, o = σ(x W_i•ᵀ + b_i• + h W_h•ᵀ + b_h•)``, ``g = tanh(…)``, ``c' = f⊙c + i⊙g``,
``h' = o⊙tanh(c')``. ``bp`` is autograd's transposed Jacobian of the step; the TP rule is its
formula written out with explicit solves. The gate formulas are written once (:func:`gates`); the
rule's step back in time and what it hands down a stack share one set of pieces (:func:`pieces`).
``P`` holds one layer and direction's parameters under layer 0's names.
"""
from __future__ import annotations

import torch

from .targets import vjp

STATES = 2
INPUT_TARGET_RULES = ()


def gates(x_t, s, P):
    """``i, f, g, o`` of one step (rows)."""
    p = s.shape[-1] // 2
    h = s[:, :p]
    pre = x_t @ P["weight_ih_l0"].T + h @ P["weight_hh_l0"].T
    if "bias_ih_l0" in P:
        pre = pre + P["bias_ih_l0"] + P["bias_hh_l0"]
    a_i, a_f, a_g, a_o = pre.split(p, dim=-1)
    return torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)


def step(x_t, s, P):
    p = s.shape[-1] // 2
    i, f, g, o = gates(x_t, s, P)
    c = f * s[:, p:] + i * g
    return torch.cat([o * torch.tanh(c), c], -1)


def stepper(P: dict, name: str | None = None):
    return step


def pieces(x_t, s_prev, s_t, lam, P, divide: bool, tol: float):
    """``(f⊙λc*, [u_i, u_f, u_g, u_o])``: the cell path ``λc_{t-1}`` and the displacements of the
    gates' pre-activations, ``λc* = λc + o⊙(1−tanh²c_t)⊙λh``, the gate derivatives ``d_k``
    divided (floored: σ' ≥ τ(1−τ), tanh' ≥ 1−(1−τ)²) or multiplied."""
    p = s_t.shape[-1] // 2
    i, f, g, o = gates(x_t, s_prev, P)
    c_prev, c_t = s_prev[:, p:], s_t[:, p:]
    th = torch.tanh(c_t)
    lh, lc = lam[:, :p], lam[:, p:]
    cstar = lc + o * (1 - th ** 2) * lh
    fs, ft = (tol * (1 - tol), 1 - (1 - tol) ** 2) if divide else (0.0, 0.0)
    derivs = [(i * (1 - i), fs), (f * (1 - f), fs), (1 - g ** 2, ft), (o * (1 - o), fs)]
    values = [g * cstar, c_prev * cstar, i * cstar, th * lh]
    u = [v / torch.clamp(d, min=fl) if divide else v * d for v, (d, fl) in zip(values, derivs)]
    return f * cstar, u


def written_out(P: dict, mats, divide: bool, tol: float):
    """``R(x_t, s_{t-1}, s_t, λ_t) = [Σ_k u_k N_k, f⊙λc*]`` of the documented formula, ``N_k = mats[k]``
    (:func:`pieces`)."""

    def rule_step(x_t, s_prev, s_t, lam):
        carry, u = pieces(x_t, s_prev, s_t, lam, P, divide, tol)
        return torch.cat([sum(uk @ nk for uk, nk in zip(u, mats)), carry], -1)

    return rule_step


def rule(rule_name: str, P: dict, name: str | None = None, *, reg: float, tol: float, inverse=None):
    """``bp``: autograd's vector-Jacobian product of the step; ``linearized``: the formula with
    ``N_k = M_kᵀ``, ``M_k = (W_hkᵀW_hk + rI)⁻¹W_hkᵀ`` by an explicit solve, derivatives divided."""
    if rule_name == "bp":
        return lambda x_t, s_prev, s_t, lam: vjp(lambda s: step(x_t, s, P), s_prev, lam)
    if rule_name != "linearized":
        raise ValueError(f"no reference for the lstm rule {rule_name!r}")
    W = P["weight_hh_l0"]
    p = W.shape[1]
    eye = torch.eye(p, dtype=W.dtype)
    mats = [torch.linalg.solve(Wk.T @ Wk + reg * eye, Wk.T).T for Wk in W.split(p)]
    return written_out(P, mats, True, tol)


def input_displacement(rule_name: str, P: dict, name: str | None = None, *, tol: float):
    """``y = [u_i, u_f, u_g, u_o]``: the displacement of the input side's pre-activation ``x_t W_ihᵀ``."""
    if rule_name != "linearized":
        raise ValueError(f"the lstm rule {rule_name!r} has no TP step down a stack")
    return lambda x_t, s_prev, s_t, lam: torch.cat(pieces(x_t, s_prev, s_t, lam, P, True, tol)[1], -1)
