"""Cells: each recurrent cell's forward pass and its tape (what a backward reads and the cell's own
maths: derivatives, BP's adjoint step, eq. 3's parameter directions). Their TP rules live in
:mod:`targetprop.rules`, one file per cell.

A *cell* is a module listed in :data:`CELLS` that provides:

* ``NAME``: the cell's name (``"rnn"``, ``"gru"``), its key in :data:`CELLS` and in the rule table;
* ``GATES``: rows of ``W_ih`` / ``W_hh`` per hidden unit (1, 3);
* ``BACKENDS`` (optional): the layer backends the cell runs, when not all of
  ``targetprop.kernels.BACKENDS`` (the LSTM has no Triton loops); the layer refuses the others.
* ``STATES``: how many (B, p) blocks a step's state has: 1 (``h``), or e.g. 2 for an LSTM's
  ``[h, c]``, concatenated along the last axis with ``h`` first; the layer's output is the ``h``
  part, ``h0`` and ``h_n`` are whole states, and displacements are the whole state's;
* ``forward(x, h0, w_ih, w_hh, b_ih, b_hh, activation, kernels) -> out``: the states
  (T, B, S·p) of time-major ``x`` (T, B, d) from ``h0`` (B, S·p), without a graph;
* ``forward_for_backward(same) -> (out, *extra)``: run instead when a backward may follow; ``extra``
  is what the tape needs besides the hidden states (the GRU's gates; nothing for the Elman cell);
* ``Tape(x, h0, out, w_ih, w_hh, b_ih, b_hh, activation, kernels, *extra)`` with attributes
  ``workspace`` (scratch, :class:`targetprop.engine.Workspace`), ``suffix`` (``"l0"``,
  ``"l1_reverse"``: names in error messages) and ``valid`` (None, or (T, B, 1) with 1 at each
  sequence's valid steps of a packed batch), and the methods

  - ``adjoint_recursion() -> recursion``: BP's step back in time (the ``bp`` rule, ``through_time``);
  - ``directions(lam, needs, adjoints=None) -> {name: tensor}``: eq. (3) from the displacements
    ``lam`` (T+1, B, p), consumed, for the names in ``needs`` among
    :data:`~targetprop.cells.protocol.GRADIENTS`; ``adjoints`` what the recursion that made ``lam``
    final returned (a cell's compiled loop may hand its pre-activation adjoints over), else None.

  A recursion is a callable ``recursion(lam) -> adjoints | None`` that runs in place on the
  (T+1, B, p) buffer holding the injected ``−γ_h g_t`` (:mod:`targetprop.engine`).

Adding a cell (the recipe):

1. a cell file ``cells/NAME.py`` with the above (start from ``cells/gru.py``; compiled loops are
   optional: ``kernels`` may be None and the pure-PyTorch path must exist);
2. a rules file ``rules/NAME.py`` with one class per rule (subclass :class:`targetprop.rules.base.Rule`;
   at least ``bp``, whose displacements are BP's adjoints, and one TP rule);
3. a line in :data:`CELLS` below and one line per rule in :data:`targetprop.rules.TABLE`;
4. a layer class in :mod:`targetprop.rnn` (``cell_module = NAME``), a float64 straight-loop
   reference in ``tests/reference/`` and the cell's name in the test table (tests/cases.py):
   every rule of the table is then checked against it, for every layer shape.
"""
from __future__ import annotations

from types import ModuleType

from . import elman, gru, lstm
from .protocol import GRADIENTS, PARAMETERS, named

#: every cell, by name
CELLS: dict[str, ModuleType] = {elman.NAME: elman, gru.NAME: gru, lstm.NAME: lstm}

__all__ = ["CELLS", "GRADIENTS", "PARAMETERS", "get_cell", "named"]


def get_cell(name: str) -> ModuleType:
    """The cell module called ``name`` (``"rnn"``: the Elman cell, ``"gru"``); a ValueError otherwise."""
    if name not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}")
    return CELLS[name]
