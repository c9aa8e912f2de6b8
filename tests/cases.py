"""The one table of layer problems, generated from the library's own tables: every (cell, rule) of
``targetprop.rules.TABLE`` × the activations (``targetprop.ACTIVATIONS``, for the cells that take
one) × the backends (``targetprop.kernels.BACKENDS``) × through_time × bias × layers (1, 2) ×
directions (1, 2) × input (tensor, PackedSequence). test_table.py checks each row against the
float64 reference (tests/reference/stack.py) and :func:`refused`'s rows against the library.

Rows the library refuses are left out, each for the reason :func:`refused` gives. The rest is
thinned by one deterministic rule (:func:`thinned`): every combination of the factors in
:data:`WHOLE` (cell, rule, activation, layers, directions, input, through_time) is kept, and the
others (:data:`THINNED`: backend, bias) are chosen per row, greedily, so that every pair of values
of any two factors (cell, rule and activation counted as one factor) occurs in some row: checked
by test_table.py. A new rule, cell, activation or backend enters the table by itself.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, fields

import pytest

from helpers import needs
from targetprop import kernels, rules
from targetprop.activations import ACTIVATIONS
from targetprop.cells import CELLS
from targetprop.recurrent import TPRecurrent

#: cell name → the library's layer class for it
LAYERS = {cls.cell_module.NAME: cls for cls in TPRecurrent.__subclasses__() if cls.__module__.startswith("targetprop.")}
#: a backend → what it needs on this machine (helpers.REQUIREMENTS); the others need nothing
BACKEND_NEEDS = {"cpp": ("cpp",), "triton": ("triton",)}


@dataclass(frozen=True)
class Case:
    cell: str
    rule: str
    activation: str | None  # None: the cell takes no activation
    layers: int
    directions: int
    packed: bool
    backend: str
    through_time: bool
    bias: bool

    @property
    def id(self) -> str:
        parts = [self.cell, self.rule, self.activation, f"L{self.layers}", f"D{self.directions}",
                 "packed" if self.packed else "tensor", self.backend, "tt" if self.through_time else "eq3",
                 "bias" if self.bias else "nobias"]
        return "-".join(p for p in parts if p)


MODEL = ("cell", "rule", "activation")
SHAPE = {"layers": (1, 2), "directions": (1, 2), "packed": (False, True)}
OTHER = {"through_time": (False, True), "backend": kernels.BACKENDS, "bias": (True, False)}
#: factors whose every combination is kept, and those chosen per row
WHOLE = MODEL + tuple(SHAPE) + ("through_time",)
THINNED = tuple(k for k in OTHER if k not in WHOLE)


def takes_activation(cell: str) -> bool:
    return "nonlinearity" in inspect.signature(LAYERS[cell]).parameters


def models() -> list[tuple]:
    """Every (cell, rule, activation) the library accepts, in its tables' order."""
    return [(cell, rule, act) for cell, rule in rules.TABLE
            for act in (sorted(ACTIVATIONS) if takes_activation(cell) else [None])]


#: what the library refuses: (whether it refuses a case, why, what its ValueError names)
REFUSALS = [
    (lambda c: not rules.get_rule(c.cell, c.rule).stackable and (c.layers > 1 or c.directions > 1),
     "the rule defines no step down a stack (num_layers=1 and bidirectional=False only)",
     lambda c: f"rule='{c.rule}'"),
    (lambda c: c.rule == "learned" and c.packed,
     "the learned rule's reverse layer trains on padded tensors only", lambda c: f"rule='{c.rule}'"),
    (lambda c: c.backend not in getattr(CELLS[c.cell], "BACKENDS", kernels.BACKENDS),
     "the cell has no kernels of that kind (its module's BACKENDS)", lambda c: f"got '{c.backend}'"),
]


def refused(case: Case) -> str | None:
    """Why the library refuses ``case`` (a ValueError when the layer is made or run), or None."""
    return next((why for applies, why, _ in REFUSALS if applies(case)), None)


def refusal_names(case: Case) -> str:
    """What the library's ValueError for the refused ``case`` names (the rule, or the backend)."""
    return next(says(case) for applies, _, says in REFUSALS if applies(case))


def full() -> list[Case]:
    """Every combination, the refused ones included."""
    names = list(SHAPE) + list(OTHER)
    return [Case(*m, **dict(zip(names, values)))
            for m in models() for values in itertools.product(*SHAPE.values(), *OTHER.values())]


def _pairs(case: Case) -> set:
    """The pairs of factor values ``case`` covers, the model factors counted as one factor."""
    values = [("model", (case.cell, case.rule, case.activation))]
    values += [(f.name, getattr(case, f.name)) for f in fields(Case) if f.name not in MODEL]
    return set(itertools.combinations(values, 2))


def thinned() -> list[Case]:
    """For each combination of :data:`WHOLE` the library accepts, one row whose other factors cover
    the most pairs not yet covered (ties: the pairs used least so far, then the first in the
    factors' order); then, for any pair still
    uncovered, the first accepted row holding it."""
    accepted = [c for c in full() if refused(c) is None]
    groups: dict[tuple, list[Case]] = {}
    for c in accepted:
        groups.setdefault(tuple(getattr(c, k) for k in WHOLE), []).append(c)
    rows, covered, used = [], set(), {}
    for options in groups.values():
        # most new pairs; among equals the pairs used least so far, then the first
        best = max(options, key=lambda c: (len(_pairs(c) - covered), -sum(used.get(q, 0) for q in _pairs(c))))
        rows.append(best)
        covered |= _pairs(best)
        for q in _pairs(best):
            used[q] = used.get(q, 0) + 1
    for c in accepted:
        if not _pairs(c) <= covered:
            rows.append(c)
            covered |= _pairs(c)
    return rows


def every_pair(cases) -> set:
    return set().union(*(_pairs(c) for c in cases))


CASES = thinned()


def params(cases=None) -> list:
    """``cases`` (default: the table) as pytest parameters, each marked with what its backend needs."""
    return [pytest.param(c, id=c.id, marks=[needs(*BACKEND_NEEDS[c.backend])] if c.backend in BACKEND_NEEDS else [])
            for c in (CASES if cases is None else cases)]
