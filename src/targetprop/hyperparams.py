"""The TP layers' own hyper-parameters: one default and one set of bounds each, read by the layers
(:mod:`targetprop.rnn`), the run settings (:mod:`targetprop.training.config`) and their help texts.

The defaults (``rule="linearized"``, ``through_time=True``, ``reg=10``, ``tol=0.1``,
``target_step=1e-2``) are the setting that never failed and learned most in the sweep of
docs/DEFAULTS.md (scripts/defaults_sweep.py); the paper's eq. 3 with ``r = 1``, ``τ = 1e-3`` is
``through_time=False, reg=1, tol=1e-3``, what the experiment files set.

Changing a default here changes it for the layers and the command line at once (a breaking
change: record it in CHANGELOG.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import _validation as check


@dataclass(frozen=True)
class Real:
    """A real hyper-parameter: its default and the interval it must lie in."""

    name: str
    default: float
    low: float
    high: float
    low_open: bool
    high_open: bool
    help: str

    @property
    def bounds(self) -> tuple[float, float, bool, bool]:
        return self.low, self.high, self.low_open, self.high_open

    def check(self, value) -> float:
        """``value`` as a float, or a ValueError naming the parameter and its interval."""
        return check.real(self.name, value, low=self.low, high=self.high, low_open=self.low_open,
                          high_open=self.high_open)


REG = Real("reg", 10.0, 0.0, math.inf, False, True, "r ≥ 0, the ridge term of the regularized inverse (Section 2.1)")
TARGET_STEP = Real("target_step", 1e-2, 0.0, math.inf, True, True,
                   "γ_h > 0, the step that makes the last target from the loss gradient (eq. 1)")
TOL = Real("tol", 0.1, 0.0, 0.5, True, True,
           "τ ∈ (0, 0.5): targets are projected into the activation's range shrunk by τ")
INVERSE_LR = Real("inverse_lr", 1e-3, 0.0, math.inf, False, True, "the learned rule's reverse-layer step size")
INVERSE_NOISE = Real("inverse_noise", 0.1, 0.0, math.inf, False, True,
                     "the noise σ of the learned rule's reconstruction loss")
INVERSE_MOMENTUM = Real("inverse_momentum", 0.9, 0.0, 1.0, False, True, "the reverse layer's Nesterov momentum")

#: every real hyper-parameter of the layers, by name
REALS = {p.name: p for p in (REG, TARGET_STEP, TOL, INVERSE_LR, INVERSE_NOISE, INVERSE_MOMENTUM)}

#: the layers' other TP defaults
RULE = "linearized"
THROUGH_TIME = True
CHECK_FINITE = True
BACKEND = "auto"
#: what the input (the modules below) and ``h0`` receive from a TP rule's backward
SIGNALS_BELOW = ("gradient", "target")
SIGNAL_BELOW = "gradient"
