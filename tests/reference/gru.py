"""The GRU cell as PyTorch computes it (gate rows r, z, n) and its rules (docs/maths.md, "GRU"),
row by row: ``r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)``, ``z = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)``,
``q = h W_hnᵀ + b_hn``, ``n = tanh(x W_inᵀ + b_in + r⊙q)``, ``h' = (1−z)⊙n + z⊙h``.
"""
from __future__ import annotations

import torch

from .targets import vjp


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


def rule(rule_name: str, P: dict, name: str | None = None, *, reg: float, tol: float, inverse=None):
    """``R(x_t, h_{t-1}, h_t, λ_t)``: ``bp`` the transposed Jacobian of the step; ``linearized`` the
    authors' rule: BP's step with each ``W_h•`` replaced by ``M_•ᵀ = ((W_h•ᵀW_h• + rI)⁻¹W_h•ᵀ)ᵀ``,
    dividing by the gate derivatives ``r(1−r)``, ``z(1−z)`` (gates clamped to [τ, 1−τ]) instead
    of multiplying, ``z⊙λ`` and ``1−n²`` kept."""
    if rule_name == "bp":
        return lambda x_t, h_prev, h_t, lam: vjp(lambda h: step(x_t, h, P), h_prev, lam)
    if rule_name != "linearized":
        raise ValueError(f"no reference for the gru rule {rule_name!r}")
    p = P["weight_hh_l0"].shape[1]
    eye = torch.eye(p, dtype=P["weight_hh_l0"].dtype)
    Mr, Mz, Mn = (torch.linalg.solve(W.T @ W + reg * eye, W.T) for W in P["weight_hh_l0"].split(p))

    def linearized(x_t, h_prev, h_t, lam):
        r, z, q, n = gates(x_t, h_prev, P)
        rc, zc = r.clamp(tol, 1 - tol), z.clamp(tol, 1 - tol)
        return (z * lam + ((h_prev - n) * lam / (zc * (1 - zc))) @ Mz.T
                + (q * (1 - n**2) * (1 - z) * lam / (rc * (1 - rc))) @ Mr.T
                + (r * (1 - n**2) * (1 - z) * lam) @ Mn.T)

    return linearized
