"""The LSTM cell's rules (docs/maths.md, "LSTM"): ``bp`` and the TP rule ``linearized``.

Both run, per step, on the state displacement ``[λh_t, λc_t]`` with the effective cell
displacement ``λc* = λc_t + o⊙tanh'(c_t)⊙λh_t``:

* ``bp``: ``λh_{t-1} += [g⊙σ'(i)⊙λc*, c_{t-1}⊙σ'(f)⊙λc*, i⊙tanh'(g)⊙λc*, tanh(c_t)⊙σ'(o)⊙λh_t] W_hh``,
  ``λc_{t-1} += f⊙λc*`` (the adjoint, :mod:`targetprop.cells.lstm`);
* ``linearized``: ``λh_{t-1} += Σ_k u_k M_kᵀ`` over the gates k = i, f, g, o with
  ``M_k = (W_hkᵀW_hk + rI)⁻¹W_hkᵀ`` (four Cholesky factorizations, one batched call) and
  ``u_i = g⊙λc*/σ'(i)``, ``u_f = c_{t-1}⊙λc*/σ'(f)``, ``u_g = i⊙λc*/tanh'(g)``,
  ``u_o = tanh(c_t)⊙λh_t/σ'(o)`` (σ' floored at τ(1−τ), tanh' at 1−(1−τ)²);
  ``λc_{t-1} += f⊙λc*`` as BP (the cell path is linear in ``c_{t-1}``: its inverse needs no
  regularization and the rule keeps it exact). Replacing each ``M_kᵀ`` by ``W_hk`` and each
  division by a multiplication gives ``bp``'s step.

Down a stack, the input side's pre-activation displacement is the same four blocks
``[u_i, u_f, u_g, u_o]`` (``bp``: the pre-activation adjoints), (T, B, 4p).
"""
from __future__ import annotations

from torch import Tensor

from ..inverse import inverse_operator
from .base import AdjointRule, InverseRule


class BP(AdjointRule):
    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        return tape.preactivation_adjoints(lam, adjoints)


class Linearized(InverseRule):
    name = "linearized"

    def recursion(self, tape, settings):
        p = tape.p
        m = inverse_operator(tape.weight_hh.view(4, p, p), settings.reg, f"weight_hh_{tape.suffix}")  # M_i..M_o
        # through time, the directions come from the second (adjoint) recursion: no adjoints kept here
        return tape.recursion(True, m.mT.reshape(4 * p, p), settings.tol, keep_adjoints=not settings.through_time)

    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        return tape.scaled_displacements(lam, tape.gate_scales(True, settings.tol))
