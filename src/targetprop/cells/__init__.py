"""Cells: each recurrent cell's forward pass, tape, TP rules and parameter directions, and the
protocol they follow (the layers, :mod:`targetprop.function` and the stack only use this).

A *cell* is a module registered here under its name (:func:`get_cell`) that provides:

* ``NAME``: the cell's name (``"rnn"``, ``"gru"``), the key of its rules in :mod:`targetprop.rules`;
* ``STATES``: the names of the states a step carries, in order (``("h",)`` for both cells here;
  a cell with more states, e.g. an LSTM's ``("h", "c")``, takes and returns one tensor per name,
  each (B, p), and its tape's directions name one gradient per state);
* ``GATES``: rows of ``W_ih`` / ``W_hh`` per hidden unit (1, 3);
* ``forward(x, h0, w_ih, w_hh, b_ih, b_hh, activation, kernels) -> out``: the hidden states
  (T, B, p) of time-major ``x`` (T, B, d), without a graph;
* optionally ``forward_for_backward(same) -> (out, *extra)``, run instead when a backward may follow,
  for a cell that keeps more than the hidden states (the GRU: its gates);
* ``Tape(x, h0, out, w_ih, w_hh, b_ih, b_hh, activation, kernels, *extra)`` with a ``workspace``
  attribute (:class:`targetprop.engine.Workspace`), ``out``, and

  - ``adjoint_recursion()``: BP's step back in time (used by ``bp`` and ``through_time``);
  - ``directions(lam, needs) -> {name: tensor}``: eq. (3) from the displacements ``lam``
    (T+1, B, p), consumed, for the names in ``needs`` among :data:`GRADIENTS`;

  and a ``valid`` attribute (None, or (T, B, 1) with 1 at each sequence's valid steps of a packed
  batch: a rule whose step is not zero at ``λ = 0`` masks the padded steps with it);
* its rules, registered with :func:`targetprop.rules.register` under ``NAME`` (for stacks, with
  ``input_displacement`` and ``input_map``, :mod:`targetprop.rules`).

Which compiled kernels a cell runs is chosen once for all cells by
:func:`targetprop.kernels.select_kernels`.
"""
from __future__ import annotations

from types import ModuleType

from .. import rules

#: the parameters of one layer and direction, in ``torch.nn``'s order (``weight_ih_l0``, …)
PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
#: what a tape's directions are keyed by: the input, the initial state, the parameters
GRADIENTS = ("input", "h0") + PARAMETERS

def get_cell(name: str) -> ModuleType:
    """The cell module called ``name`` (``"rnn"``: the Elman cell, ``"gru"``); a ValueError otherwise."""
    from . import elman, gru

    cells = {elman.NAME: elman, gru.NAME: gru}
    key = rules.CELL_ALIASES.get(name, name)
    if key not in cells:
        raise ValueError(f"cell must be one of {sorted(cells)}, got {name!r}")
    return cells[key]
