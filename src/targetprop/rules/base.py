"""What a target-propagation rule is: one object that owns how displacements travel back in time,
whether ``γ_h`` applies, and how they go down a stack (docs/maths.md, "Targets (eqs. 1–2)", "Stacks").

A rule is used by :mod:`targetprop.engine` in this order, per layer and direction:

1. ``recursion(tape, settings)``: everything that does not depend on ``λ`` computed once, for all
   steps; the returned recursion (:mod:`targetprop.recursion`) then adds ``R(λ_t, t)`` into
   ``λ_{t-1}`` for t = T..1, in place on the buffer that already holds the injected ``−s·g_t``;
2. (stacks) :meth:`Rule.down`: the displacement ``z`` of the layer below's output, by the joint
   map of both directions, from each direction's ``input_displacement`` (T, B, gates·p);
3. the cell's tape turns the final displacements into eq. (3)'s directions.

Two families share every step down: :class:`AdjointRule` (``bp``: its displacements are BP's
negated adjoints, ``z = y W_ih``) and :class:`InverseRule` (TP: ``z`` is the ridge solve of
``z W_ihᵀ ≈ y``). A rule with ``stackable = False`` runs only in one-layer, one-direction layers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..inverse import inverse_operator
from ..recursion import Recursion


class Rule:
    """Base class of every rule (subclass :class:`AdjointRule` or :class:`InverseRule`)."""

    #: the rule's name in the layers' ``rule`` argument
    name: str = ""
    #: True: displacements are targets minus states, and the injection is scaled by γ_h (eq. 1),
    #: and ``through_time`` applies; False: they are BP's adjoints (injection scale 1)
    makes_targets: bool = True
    #: whether the rule defines a step down a stack (else one layer and one direction only)
    stackable: bool = True

    def recursion(self, tape, settings) -> Recursion:
        raise NotImplementedError

    def step_gain_bound(self, settings) -> float | None:
        """The largest factor by which one step of the recursion can multiply a displacement's
        norm, over all weights (:mod:`targetprop.stability`); None where no bound is derived."""
        return None

    def input_displacement(self, tape, lam: Tensor, adjoints, settings) -> Tensor:
        """(T, B, gates·p): the displacement of the input side's pre-activation ``x_t W_ihᵀ``
        from the final ``λ`` (``adjoints``: what the recursion returned)."""
        raise NotImplementedError

    def through_input_map(self, y: Tensor, w_ih: Tensor, layer_in: Tensor, settings, name: str) -> Tensor:
        """(N, d): the input displacement ``z`` from ``y`` (N, rows) and the input map ``W_ih`` (rows, d)."""
        raise NotImplementedError

    def through_dropout(self, z: Tensor, mask: Tensor, q: float) -> Tensor:
        """``z`` of the layer below's output from ``z`` of the dropped-out input ``o ⊙ m/(1−q)``."""
        raise NotImplementedError

    def down(self, tapes, lams, adjoints, settings, steps, layer: int, layer_in: Tensor,
             mask: Tensor | None, q: float) -> Tensor:
        """``z`` (T, B, D·p): the displacement of layer ``layer − 1``'s output, from layer ``layer``'s
        directions (``tapes``, final ``lams``, the recursions' ``adjoints``), jointly over both directions."""
        ys = [self.input_displacement(t, lam, a, settings) for t, lam, a in zip(tapes, lams, adjoints)]
        y = torch.cat([ys[0]] + [steps.reverse(v) for v in ys[1:]], -1)
        w = torch.cat([t.weight_ih for t in tapes]) if len(tapes) > 1 else tapes[0].weight_ih
        T, B, _ = y.shape
        name = f"[weight_ih_l{layer}; weight_ih_l{layer}_reverse]" if len(tapes) > 1 else f"weight_ih_l{layer}"
        z = self.through_input_map(y.view(T * B, -1), w, layer_in.reshape(T * B, -1), settings, name)
        z = steps.mask_(z.view(T, B, -1))
        return z if mask is None else self.through_dropout(z, mask, q)


class AdjointRule(Rule):
    """``bp``: displacements are the negated exact adjoints, so the step down is the adjoint too."""

    name = "bp"
    makes_targets = False

    def recursion(self, tape, settings) -> Recursion:
        return tape.adjoint_recursion()

    def through_input_map(self, y, w_ih, layer_in, settings, name):
        return y @ w_ih

    def through_dropout(self, z, mask, q):
        return z.mul_(mask).mul_(1 / (1 - q) if q < 1 else 0.0)


class InverseRule(Rule):
    """A TP rule: down the stack, ``z`` minimizes ``‖z W_ihᵀ − y‖² + r‖z‖²``; through dropout, the
    map ``o ↦ o ⊙ m/(1−q)`` is inverted on the kept units, ``o = x(1−q)``."""

    def through_input_map(self, y, w_ih, layer_in, settings, name):
        return y @ inverse_operator(w_ih, settings.reg, name).T

    def through_dropout(self, z, mask, q):
        return z.mul_(mask).mul_(1 - q)
