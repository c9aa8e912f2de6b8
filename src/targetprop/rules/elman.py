"""The Elman cell's rules (docs/maths.md, "Targets (eqs. 1–2)"; ``M = (W_hhᵀW_hh + rI)⁻¹W_hhᵀ``,
``π`` the projection on a's range shrunk by τ):

=============  =====================================================================
``bp``          ``R = (λ_t ⊙ a'(u_t)) W_hh``                          (the adjoint)
``linearized``  ``R = (λ_t ⊘ a'(u_t)) Mᵀ``, a' read from ``π(h_t)``    (eq. 2)
``difference``  ``R = (a⁻¹(π(h_t+λ_t)) − a⁻¹(π(h_t))) Mᵀ``             (Lee et al. 2015)
``direct``      ``R = f⁻¹(h_t+λ_t) − h_{t-1}``                          (plain inverse)
``learned``     ``R = ψ_t(h_t+λ_t) − ψ_t(h_t)``, a trained reverse layer  (:mod:`targetprop.learned`)
=============  =====================================================================

Down a stack each gives the input side's pre-activation displacement ``y`` from the final ``λ``;
``direct``'s ``y`` is a target of ``x_t W_ihᵀ``, not a difference, so its ``z`` subtracts ``x``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import stability
from ..activations import Activation
from ..recursion import propagate
from .base import AdjointRule, InverseRule, Rule


class BP(AdjointRule):
    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        return lam[1:] * tape.derivative


class _Bounded:
    """An Elman rule whose step back divides by the floored ``a'`` and multiplies by ``Mᵀ``
    (the difference quotient of ``a⁻¹ ∘ π`` is bounded by the same floor)."""

    def step_gain_bound(self, settings) -> float:
        return stability.step_gain_bound(settings.reg, settings.tol, settings.activation.name)


class Linearized(_Bounded, InverseRule):
    name = "linearized"

    def recursion(self, tape, settings):
        factor, divide, floor = tape.activation.linearized_factor(tape.derivative, settings.tol)
        return tape.scaled_recursion(factor, tape.inverse_operator(settings.reg).T, divide, floor)

    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        return lam[1:] * tape.activation.inverse_derivative(tape.derivative, settings.tol)


def _preimage_(act: Activation, tol: float, h_t: Tensor, lam_t: Tensor, buf: Tensor) -> Tensor:
    """``buf ← a⁻¹(π(h_t + λ_t))``."""
    torch.add(h_t, lam_t, out=buf)
    return act.inverse_(act.project_(buf, tol))


def _preimages(tape, lam: Tensor, tol: float) -> Tensor:
    """``a⁻¹(π(h_t + λ_t))`` for all t: (T, B, p), a new tensor."""
    return tape.activation.inverse_(tape.activation.project_(tape.out + lam[1:], tol))


class _Stepwise(InverseRule):
    """Rules whose step is not a scaled product: a loop of in-place ops per step, from ``_step``."""

    def recursion(self, tape, settings):
        step = self._step(tape, settings.tol, tape.inverse_operator(settings.reg).T, tape.work_buffer())
        return lambda lam: propagate(step, lam)


class Difference(_Bounded, _Stepwise):
    name = "difference"

    def _step(self, tape, tol, mt, buf):
        act, H = tape.activation, tape.out.unbind(0)
        base = act.inverse_(act.project(tape.out, tol)).unbind(0)

        def step(t, lam_t, out):
            _preimage_(act, tol, H[t - 1], lam_t, buf).sub_(base[t - 1])
            out.addmm_(buf, mt)

        return step

    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        act = tape.activation
        return _preimages(tape, lam, settings.tol).sub_(act.inverse_(act.project(tape.out, settings.tol)))


class Direct(_Stepwise):
    name = "direct"

    def _step(self, tape, tol, mt, buf):
        act, H = tape.activation, tape.out.unbind(0)
        proj = tape.input_projection.unbind(0)
        valid = None if tape.valid is None else tape.valid.unbind(0)
        moved = None if valid is None else tape.work_buffer()

        def step(t, lam_t, out):
            _preimage_(act, tol, H[t - 1], lam_t, buf).sub_(proj[t - 1])
            if valid is None:
                out.sub_(tape.h_prev(t)).addmm_(buf, mt)
            else:  # R(0) ≠ 0 for this rule: a padded step must hand nothing back
                out.addcmul_(torch.mm(buf, mt, out=moved).sub_(tape.h_prev(t)), valid[t - 1])

        return step

    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        """``a⁻¹(π(h_t + λ_t)) − h_{t-1} W_hhᵀ − b``: the target of ``x_t W_ihᵀ`` (a target, not a difference)."""
        T, B, p = tape.out.shape
        h_prev = torch.cat([tape.h0.unsqueeze(0), tape.out[:-1]]).view(T * B, p)
        y = _preimages(tape, lam, settings.tol).view(T * B, p).sub_(h_prev @ tape.weight_hh.T)
        if tape.bias_ih is not None:
            y.sub_(tape.bias_ih + tape.bias_hh)
        return y.view(T, B, p)

    def through_input_map(self, y, w_ih, layer_in, settings, name):
        return super().through_input_map(y, w_ih, layer_in, settings, name).sub_(layer_in)


class Learned(Rule):
    """Difference TP through the layer's trained reverse layer ``ψ`` (:class:`targetprop.learned.ReverseLayer`),
    trained one step first when ``settings.update_inverse`` (training mode, parameters receiving a direction)."""

    name = "learned"
    stackable = False

    def recursion(self, tape, settings):
        inverse = settings.inverse
        if settings.update_inverse and inverse.lr > 0:
            inverse.train_step(tape)
        act, V = tape.activation, inverse.weight
        # ψ_t(h_t + λ) = a(pre_t + λ Vᵀ) with pre_t = x_t W_ihᵀ + c + h_t Vᵀ, for all t at once
        T, B, p = tape.out.shape
        pre = (tape.x.reshape(T * B, -1) @ tape.weight_ih.T).view(T, B, p).add_(inverse.bias)
        pre = torch.baddbmm(pre, tape.out, V.T.expand(T, p, p))
        base = act.apply_(pre.clone()).unbind(0)
        pre = pre.unbind(0)
        buf = tape.work_buffer()

        def step(t, lam_t, out):
            act.apply_(torch.addmm(pre[t - 1], lam_t, V.T, out=buf)).sub_(base[t - 1])
            out.add_(buf)

        return lambda lam: propagate(step, lam)
