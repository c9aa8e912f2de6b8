"""Float64 references for every cell and rule, written independently of the package.

Everything is per time step and per formula as docs/maths.md and the paper write it: a cell is
its one-step map ``step(x_t, h_{t-1}, P)`` on rows, written out from its formulas; autograd of
that map supplies the Jacobians BP and the linearized inverse need, and the parameter
directions of eq. (3). Slow and obviously right. :func:`run` is the entry point.
"""
from __future__ import annotations

from . import elman, gru, lstm
from .targets import run_cell

CELLS = {"rnn": elman, "gru": gru, "lstm": lstm}


def run(cell: str, rule: str, P: dict, x, h0, g, *, nonlinearity: str = "tanh", target_step: float,
        reg: float, tol: float, through_time: bool = False, inverse: dict | None = None,
        signal_below: str = "gradient") -> dict:
    """Hidden states and directions of ``rule`` for ``cell`` (see :func:`targets.run_cell`);
    ``signal_below="gradient"``: a TP rule's input and h0 gradients divided by γ_h (BP's scale)."""
    module = CELLS[cell]
    step = module.stepper(P, nonlinearity)
    rule_step = module.rule(rule, P, nonlinearity, reg=reg, tol=tol, inverse=inverse)
    gamma = 1.0 if rule == "bp" else target_step
    result = run_cell(step, rule_step, P, x, h0, g, gamma=gamma, through_time=through_time)
    if rule != "bp" and signal_below == "gradient":
        result["input"], result["h0"] = result["input"] / gamma, result["h0"] / gamma
    return result
