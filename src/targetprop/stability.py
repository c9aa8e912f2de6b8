"""How much one step of eq. (2) back in time can amplify a displacement, and the settings that
make it a contraction (docs/maths.md, "Why long runs overflow").

The Elman rule's step back is ``λ_{t−1} = (λ_t ⊙ 1/a'_t) Mᵀ`` with the regularized inverse
``M = (WᵀW + rI)⁻¹Wᵀ`` (eq. 4) and the inverse derivative floored at ``a'_min(τ)``. Over every
``W``, ``‖M‖ = max_σ σ/(σ² + r) = 1/(2√r)``, so one step multiplies a displacement's norm by at
most ``G(r, τ) = 1/(2√r · a'_min(τ))``. With ``G > 1`` the targets can grow geometrically back
in time (measured: from 1e-3 to 7·10³⁷ over 784 steps of Fashion-MNIST at the paper's r = 1,
τ = 1e-3, where float32 overflows), while BP's adjoints, which multiply by ``a'`` instead of dividing,
stay bounded; with ``G ≤ 1`` they cannot grow at all, whatever the weights and the length.
"""
from __future__ import annotations

import math

from .activations import get_activation


def step_gain_bound(reg: float, tol: float, nonlinearity: str = "tanh") -> float:
    """``G(r, τ) = 1/(2√r · a'_min(τ))``: the largest factor by which one step of eq. (2) can
    multiply a displacement's norm, over all weights (``inf`` at ``r = 0``); for activations
    whose inverse derivative is not bounded by a floor (identity: 1, ReLU: 0 or 1), ``a'_min = 1``."""
    if reg <= 0:
        return math.inf
    activation = get_activation(nonlinearity)
    try:
        floor = activation.derivative_floor(tol)
    except NotImplementedError:
        floor = 1.0
    if floor <= 0:  # tol so small that the floor rounds to 0: no bound
        return math.inf
    return 1.0 / (2.0 * math.sqrt(reg) * floor)


def contractive_reg(tol: float, nonlinearity: str = "tanh") -> float:
    """The smallest ``r`` with ``G(r, τ) ≤ 1``: ``(1 / (2 a'_min(τ)))²``."""
    return (step_gain_bound(1.0, tol, nonlinearity)) ** 2
