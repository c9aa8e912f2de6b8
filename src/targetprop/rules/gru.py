"""The GRU cell's rules (docs/maths.md, "GRU"): ``bp`` and the authors' TP rule ``linearized``.

BP's step back: ``μ = z⊙μ' + [c_r⊙μ', c_z⊙μ', c_n⊙μ'] W_hh`` with ``c_r = r(1−r)⊙q⊙(1−n²)⊙(1−z)``,
``c_z = z(1−z)⊙(h−n)``, ``c_n = r⊙(1−n²)⊙(1−z)`` (:mod:`targetprop.cells.gru`).

``linearized`` replaces each ``W_h•`` by ``M_•ᵀ``, ``M_• = (W_h•ᵀW_h• + rI)⁻¹W_h•ᵀ`` (three Cholesky
factorizations, batched), and *divides* by the gate derivatives ``r(1−r)``, ``z(1−z)`` (floored at
τ(1−τ)) instead of multiplying; the direct path ``z⊙λ'`` and ``1−n²`` are kept. Derived for the cell
computed here, ``h' = (1−z)⊙n + z⊙h`` (the authors' code writes it for the other convention).
Down a stack, the input side's displacement divides the same way; n's input path has no r factor.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..inverse import inverse_operator
from .base import AdjointRule, InverseRule


class BP(AdjointRule):
    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        T, B, p = tape.out.shape
        return tape.preactivation_adjoints(lam, adjoints)[:, :, [0, 1, 3]].reshape(T, B, 3 * p)


class Linearized(InverseRule):
    name = "linearized"

    def recursion(self, tape, settings):
        p = tape.out.shape[-1]
        m = inverse_operator(tape.weight_hh.view(3, p, p), settings.reg, f"weight_hh_{tape.suffix}")  # M_r, M_z, M_n
        # through time, the directions come from the second (adjoint) recursion: no adjoints kept here
        return tape.recursion(True, m.mT.reshape(3 * p, p), settings.tol, keep_adjoints=not settings.through_time)

    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        T, B, p = tape.out.shape
        scales = torch.stack([*tape.divided_gate_scales(settings.tol * (1 - settings.tol)),
                              tape.bp_factors[:, :, 3]], dim=2)
        return scales.mul_(lam[1:].unsqueeze(2)).view(T, B, 3 * p)
