"""Activations of the recurrent step and the pieces of them TP needs.

Each activation ``a`` provides, all evaluated from the *output* ``y = a(u)`` so that
no pre-activation has to be stored (docs/maths.md, "Targets (eqs. 1–2)"):

* ``apply_``: ``a`` applied in place (used by our own forward loop);
* ``derivative(y)``: ``a'(u)`` exactly, used by BP and by eq. (3)'s parameter directions;
* ``project(y, tol)``: ``π``, the projection onto the range of ``a`` shrunk by ``tol``;
* ``inverse(y)``: ``a⁻¹`` on that range;
* ``linearized_factor(deriv, tol) -> (factor, divide, floor)``: from ``deriv = a'(u)``, the
  diagonal factor of the linearized inverse in eq. (2), the derivative of ``a⁻¹ ∘ π`` at ``y``,
  ``1 / a'(a⁻¹(π(y)))``, as "divide by ``max(factor, floor)``" or "multiply by ``factor``".
  For tanh and sigmoid, ``a'(a⁻¹(π(y))) = max(a'(u), floor(tol))`` exactly (``a'`` is monotone
  in the distance of ``y`` to the range's ends), so the already computed derivative suffices;
  ``inverse_derivative(deriv, tol)`` materializes it.

ReLU convention: its range is ``[0, ∞)`` and ``a⁻¹`` is the identity there. A unit that is
off (``y = 0``) has ``a'(u) = 0`` and no finite inverse derivative; we pass *no*
displacement through it (``inverse_derivative = 1{y > 0}``), which is the derivative of
``a⁻¹ ∘ π`` on the side of the kink where ``π`` is constant.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Activation:
    """Base class; subclasses implement the maths of one activation."""

    name: str = ""
    #: name of PyTorch's native RNN kernel for this activation, or None (own loop)
    native_kernel: str | None = None

    def apply_(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, y: Tensor, out: Tensor | None = None) -> Tensor:
        """``a'`` at the pre-activation whose image is ``y`` (into ``out`` if given)."""
        raise NotImplementedError

    def project(self, y: Tensor, tol: float) -> Tensor:
        raise NotImplementedError

    def project_(self, y: Tensor, tol: float) -> Tensor:
        return y.copy_(self.project(y, tol))

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse_(self, y: Tensor) -> Tensor:
        return y.copy_(self.inverse(y))

    def derivative_floor(self, tol: float) -> float:
        """``a'`` at the ends of the range shrunk by ``tol``."""
        raise NotImplementedError

    def linearized_factor(self, deriv: Tensor, tol: float) -> tuple[Tensor, bool, float]:
        return deriv, True, self.derivative_floor(tol)

    def inverse_derivative(self, deriv: Tensor, tol: float) -> Tensor:
        factor, divide, floor = self.linearized_factor(deriv, tol)
        return torch.clamp_min(factor, floor).reciprocal_() if divide else factor

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


class _Bounded(Activation):
    """An activation with range ``(low, high)``: ``π`` clamps into ``[low + tol, high − tol]``."""

    low: float = 0.0
    high: float = 1.0

    def project(self, y, tol):
        return y.clamp(self.low + tol, self.high - tol)

    def project_(self, y, tol):
        return y.clamp_(self.low + tol, self.high - tol)


class Tanh(_Bounded):
    name = "tanh"
    native_kernel = "rnn_tanh"
    low, high = -1.0, 1.0

    def apply_(self, u):
        return u.tanh_()

    def derivative(self, y, out=None):
        return torch.addcmul(y.new_ones(()), y, y, value=-1.0, out=out)  # 1 − y², one pass

    def derivative_floor(self, tol):
        return 1.0 - (1.0 - tol) ** 2

    def inverse(self, y):
        return torch.atanh(y)

    def inverse_(self, y):
        return y.atanh_()


class Sigmoid(_Bounded):
    name = "sigmoid"

    def apply_(self, u):
        return u.sigmoid_()

    def derivative(self, y, out=None):
        return torch.addcmul(y, y, y, value=-1.0, out=out)  # y − y², one pass

    def derivative_floor(self, tol):
        return tol * (1.0 - tol)

    def inverse(self, y):
        return torch.logit(y)

    def inverse_(self, y):
        return y.logit_()


class Identity(Activation):
    name = "identity"

    def apply_(self, u):
        return u

    def derivative(self, y, out=None):
        return torch.ones_like(y) if out is None else out.fill_(1.0)

    def project(self, y, tol):
        return y

    def project_(self, y, tol):
        return y

    def inverse(self, y):
        return y

    def inverse_(self, y):
        return y

    def linearized_factor(self, deriv, tol):
        return deriv, False, 0.0  # a' = 1


class ReLU(Activation):
    name = "relu"
    native_kernel = "rnn_relu"

    def apply_(self, u):
        return u.relu_()

    def derivative(self, y, out=None):
        return (y > 0).to(y.dtype) if out is None else out.copy_(y > 0)

    def project(self, y, tol):
        return y.clamp(min=0.0)

    def project_(self, y, tol):
        return y.clamp_(min=0.0)

    def inverse(self, y):
        return y

    def inverse_(self, y):
        return y

    def linearized_factor(self, deriv, tol):
        return deriv, False, 0.0  # 1{y > 0}: off units pass no displacement


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (Tanh(), Sigmoid(), Identity(), ReLU())}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; a ``ValueError`` lists the allowed names otherwise."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"nonlinearity must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None
