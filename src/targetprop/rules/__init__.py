"""The rule table: every (cell, rule name) the layers accept, and the objects that implement them.

A rule (:class:`targetprop.rules.base.Rule`) owns how displacements ``λ_t = v_t − h_t`` travel one
step back in time, ``λ_{t-1} = R(λ_t, t) − γ_h g_{t-1}`` (docs/maths.md, "Targets (eqs. 1–2)"),
whether γ_h applies, and its step down a stack; one file per cell (``rules/elman.py``,
``rules/gru.py``). The names the layers, the command line and the docs list are read from
:data:`TABLE`; nothing is registered by importing a module.
"""
from __future__ import annotations

from . import elman, gru, lstm
from .base import AdjointRule, InverseRule, Rule

#: (cell name, rule name) → the rule, in the order the docs list them
TABLE: dict[tuple[str, str], Rule] = {
    ("rnn", "bp"): elman.BP(),
    ("rnn", "linearized"): elman.Linearized(),
    ("rnn", "difference"): elman.Difference(),
    ("rnn", "direct"): elman.Direct(),
    ("rnn", "learned"): elman.Learned(),
    ("gru", "bp"): gru.BP(),
    ("gru", "linearized"): gru.Linearized(),
    ("lstm", "bp"): lstm.BP(),
    ("lstm", "linearized"): lstm.Linearized(),
}

#: every rule name, in the table's order
RULE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for _, name in TABLE))

__all__ = ["TABLE", "RULE_NAMES", "Rule", "AdjointRule", "InverseRule", "available", "check_rule_name", "get_rule"]


def available(cell: str) -> tuple[str, ...]:
    """The rule names ``cell`` supports, in the table's order."""
    return tuple(name for c, name in TABLE if c == cell)


def check_rule_name(cell: str, name: str) -> str:
    """``name`` if ``cell`` supports it; a ``ValueError`` naming the allowed rules otherwise."""
    if (cell, name) not in TABLE:
        hint = f" ({name!r} is not defined for the {cell} cell)" if name in RULE_NAMES else ""
        raise ValueError(f"rule must be one of {list(available(cell))}, got {name!r}{hint}")
    return name


def get_rule(cell: str, name: str) -> Rule:
    return TABLE[(cell, check_rule_name(cell, name))]
