"""Float64 references for every cell and rule, written independently of the package.

Everything is per time step and per formula as docs/maths.md and the paper write it: a cell is
its one-step map ``step(x_t, s_{t-1}, P)`` on rows, written out from its formulas (``elman.py``,
``gru.py``, ``lstm.py``: the step, each rule's ``R`` and what a TP rule hands down a stack);
autograd of that map supplies the Jacobians BP and the linearized inverse need, and the
parameter directions of eq. (3) (``targets.py``). ``stack.py`` is the whole layer (layers,
directions, dropout, variable lengths); :func:`run` is its one-layer, one-direction case in the
older calling convention. Slow and obviously right.
"""
from __future__ import annotations

import torch

from . import elman, gru, lstm, stack
from .stack import CELLS

__all__ = ["CELLS", "elman", "gru", "lstm", "run", "stack"]


def run(cell: str, rule: str, P: dict, x, h0, g, *, nonlinearity: str = "tanh", target_step: float,
        reg: float, tol: float, through_time: bool = False, inverse: dict | None = None,
        signal_below: str = "gradient") -> dict:
    """One layer and direction: :func:`stack.run` at ``num_layers = directions = 1``.

    ``x`` batch-first (B, T, d), ``h0`` (B, S·p), ``g[t] = ∂ℓ/∂s_t`` (B, S·p) for t = 1..T
    (``g[0]`` unused; an LSTM's ``c`` part only at t = T, where ``c_n`` is an output). Returns
    ``{"out": the states (B, T, S·p), parameter name: direction, "input": (B, T, d), "h0": (B, S·p)}``."""
    T, p = x.shape[1], h0.shape[-1] // CELLS[cell].STATES
    if any(bool(g[t][:, p:].any()) for t in range(1, T)):
        raise ValueError("a loss reaches a state's c part only through c_n (t = T)")
    g_out = torch.stack([g[t][:, :p] for t in range(1, T)] + [torch.zeros_like(g[T][:, :p])])
    res = stack.run(cell, rule, P, x.transpose(0, 1), h0[None], g_out, g[T][None], nonlinearity=nonlinearity,
                    target_step=target_step, reg=reg, tol=tol, through_time=through_time, inverse=inverse,
                    signal_below=signal_below)
    return {**{k: v for k, v in res.items() if k.endswith("_l0")}, "input": res["input"].transpose(0, 1),
            "h0": res["h0"][0], "out": res["states"][(0, 0)].transpose(0, 1)}
