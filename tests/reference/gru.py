"""The GRU cell as PyTorch computes it (gate rows r, z, n) and its rules (docs/maths.md, "GRU"),
row by row: ``r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)``, ``z = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)``,
``q = h W_hnᵀ + b_hn``, ``n = tanh(x W_inᵀ + b_in + r⊙q)``, ``h' = (1−z)⊙n + z⊙h``.

The gate formulas are written once (:func:`gates`); the rule's step back in time and what it
hands down a stack share one set of pieces (:func:`pieces`). ``P`` holds one layer and
direction's parameters under layer 0's names.
"""
from __future__ import annotations

import torch

from .targets import vjp

STATES = 1
INPUT_TARGET_RULES = ()


def gates(x_t, h, P):
    """``r, z, q, n`` of one step (rows)."""
    p = h.shape[-1]
    Ir, Iz, In = P["weight_ih_l0"].split(p)
    Wr, Wz, Wn = P["weight_hh_l0"].split(p)
    bir, biz, bin_ = P["bias_ih_l0"].split(p) if "bias_ih_l0" in P else (0.0, 0.0, 0.0)
    bhr, bhz, bhn = P["bias_hh_l0"].split(p) if "bias_hh_l0" in P else (0.0, 0.0, 0.0)
    r = torch.sigmoid(x_t @ Ir.T + bir + h @ Wr.T + bhr)
    z = torch.sigmoid(x_t @ Iz.T + biz + h @ Wz.T + bhz)
    q = h @ Wn.T + bhn
    n = torch.tanh(x_t @ In.T + bin_ + r * q)
    return r, z, q, n


def step(x_t, h, P):
    r, z, q, n = gates(x_t, h, P)
    return (1 - z) * n + z * h


def stepper(P: dict, name: str | None = None):
    return step


def pieces(x_t, h_prev, lam, P, divide: bool, tol: float):
    """``(z⊙λ, [u_r, u_z, u_n], r)``: the gate path kept, and the displacements of the gates'
    pre-activations, the gate derivatives ``r(1−r)``, ``z(1−z)`` divided (gates clamped to
    [τ, 1−τ]) or multiplied; ``1−n²`` and ``1−z`` are always multiplied."""
    r, z, q, n = gates(x_t, h_prev, P)
    dn = (1 - n ** 2) * (1 - z) * lam
    if divide:
        rc, zc = r.clamp(tol, 1 - tol), z.clamp(tol, 1 - tol)
        u_r, u_z = q * dn / (rc * (1 - rc)), (h_prev - n) * lam / (zc * (1 - zc))
    else:
        u_r, u_z = q * dn * r * (1 - r), (h_prev - n) * lam * z * (1 - z)
    return z * lam, [u_r, u_z, dn], r


def written_out(P: dict, mats, divide: bool, tol: float):
    """``R(x_t, h_{t-1}, h_t, λ_t) = z⊙λ + u_r N_r + u_z N_z + (r⊙u_n) N_n`` with ``N_k = mats[k]``
    (the ``n`` gate's h-side pre-activation is ``r⊙q``, hence ``r⊙u_n``)."""

    def rule_step(x_t, h_prev, h_t, lam):
        carry, (u_r, u_z, u_n), r = pieces(x_t, h_prev, lam, P, divide, tol)
        return carry + u_r @ mats[0] + u_z @ mats[1] + (r * u_n) @ mats[2]

    return rule_step


def rule(rule_name: str, P: dict, name: str | None = None, *, reg: float, tol: float, inverse=None):
    """``R(x_t, h_{t-1}, h_t, λ_t)``: ``bp`` the transposed Jacobian of the step (autograd);
    ``linearized`` the authors' rule: the written-out step with ``N_k = M_kᵀ``,
    ``M_k = (W_hkᵀW_hk + rI)⁻¹W_hkᵀ`` by an explicit solve, gate derivatives divided."""
    if rule_name == "bp":
        return lambda x_t, h_prev, h_t, lam: vjp(lambda h: step(x_t, h, P), h_prev, lam)
    if rule_name != "linearized":
        raise ValueError(f"no reference for the gru rule {rule_name!r}")
    W = P["weight_hh_l0"]
    p = W.shape[1]
    eye = torch.eye(p, dtype=W.dtype)
    return written_out(P, [torch.linalg.solve(Wk.T @ Wk + reg * eye, Wk.T).T for Wk in W.split(p)], True, tol)


def input_displacement(rule_name: str, P: dict, name: str | None = None, *, tol: float):
    """``y = [u_r, u_z, u_n]``: the displacement of the input side's pre-activation ``x_t W_ihᵀ``."""
    if rule_name != "linearized":
        raise ValueError(f"the gru rule {rule_name!r} has no TP step down a stack")
    return lambda x_t, h_prev, h_t, lam: torch.cat(pieces(x_t, h_prev, lam, P, True, tol)[1], -1)
