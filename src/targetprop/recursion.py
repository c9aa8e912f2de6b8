"""The shape of a backward recursion through time, shared by the cells and the rules.

A *recursion* runs ``λ_{t-1} += R(λ_t, t)`` for t = T..1 in place on the (T+1, B, p) buffer of
displacements (docs/maths.md, "Targets (eqs. 1–2)"), and returns None or what it computed on the
way that the directions can reuse (the GRU's compiled loop: its pre-activation adjoints).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

Step = Callable[[int, Tensor, Tensor], None]
Recursion = Callable[[Tensor], "Tensor | None"]


def propagate(step: Step, lam: Tensor) -> None:
    """Run ``λ_{t-1} += R(λ_t, t)`` for t = T..1 in place on ``lam`` (T+1, B, p), one
    ``step(t, λ_t, λ_{t-1})`` at a time (a step adds ``R(λ_t, t)`` into its last argument)."""
    rows = lam.unbind(0)  # per-step views made once, not per step
    for t in range(len(rows) - 1, 0, -1):
        step(t, rows[t], rows[t - 1])
