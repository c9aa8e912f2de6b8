"""Registry of target-propagation rules, per cell.

A *rule* says how a displacement ``λ_t = v_t − h_t`` travels one step back in time
(docs/maths.md, "Targets (eqs. 1–2)"): ``λ_{t-1} = R(λ_t, t) − γ_h g_{t-1}``. Each cell registers the rules it
supports; the through-time engine (:mod:`targetprop.engine`) is the same for all of them.

A registered rule is an object with

* ``uses_target_step``: whether ``γ_h`` scales the injected loss gradients (False for ``bp``,
  whose displacements are the negated exact adjoints);
* ``prepare(tape, config) -> recursion``: everything that does not depend on ``λ`` computed
  once, for all steps at once; ``recursion(lam)`` then runs, in place on the (T+1, B, p)
  buffer that already holds the injected ``−γ_h g_t``, ``λ_{t-1} += R(λ_t, t)`` for t = T..1
  (a compiled loop, or :func:`propagate` over a per-step ``step(t, lam_t, out)`` that adds
  ``R(λ_t, t)`` into ``out`` without allocating);
* for stacks (:mod:`targetprop.stack`; a rule without them is one-layer only):
  ``input_displacement(tape, lam, config) -> y`` (T, B, gates·p), the input side's pre-activation
  displacement from the final ``λ``, and ``input_map``, how the layer below gets its displacement
  ``z`` from ``y``: ``"adjoint"`` (``z = y W_ih``, ``bp``), ``"inverse"`` (the ridge solve of
  ``z W_ihᵀ ≈ y``) or ``"direct"`` (``y`` is a target, not a difference: the solve minus ``x``);
  docs/maths.md, "Stacks".
"""
from __future__ import annotations

from typing import Callable, Protocol

from torch import Tensor

Step = Callable[[int, Tensor, Tensor], None]
Recursion = Callable[[Tensor], None]

#: every rule name the library knows, in the order the docs list them
RULE_NAMES = ("bp", "linearized", "difference", "direct", "learned")


class Rule(Protocol):
    uses_target_step: bool

    def prepare(self, tape, config) -> Recursion: ...


def stackable(rule) -> bool:
    """Whether ``rule`` can run in a stack or a bidirectional layer (it defines the step down)."""
    return hasattr(rule, "input_displacement")


_REGISTRY: dict[str, dict[str, Rule]] = {}
#: names a cell was known by before (the Elman cell's rules were registered as "elman")
CELL_ALIASES = {"elman": "rnn"}


def _rules_of(cell: str) -> dict[str, Rule]:
    return _REGISTRY.get(CELL_ALIASES.get(cell, cell), {})


def register(cell: str, name: str):
    """Class decorator: register an instance of the class as rule ``name`` of ``cell``."""

    def deco(cls):
        _REGISTRY.setdefault(cell, {})[name] = cls()
        return cls

    return deco


def available(cell: str) -> tuple[str, ...]:
    return tuple(n for n in RULE_NAMES if n in _rules_of(cell))


def check_rule_name(cell: str, name: str) -> str:
    """``name`` if ``cell`` supports it; a ``ValueError`` naming the allowed rules otherwise."""
    if name not in _rules_of(cell):
        hint = ""
        if name in RULE_NAMES:
            hint = f" ({name!r} is not defined for the {cell} cell)"
        raise ValueError(f"rule must be one of {list(available(cell))}, got {name!r}{hint}")
    return name


def get_rule(cell: str, name: str) -> Rule:
    return _rules_of(cell)[check_rule_name(cell, name)]


def propagate(step: Step, lam: Tensor) -> Tensor:
    """Run ``λ_{t-1} += R(λ_t, t)`` for t = T..1 in place on ``lam`` (T+1, B, p), one step at a time."""
    rows = lam.unbind(0)  # per-step views made once, not per step
    for t in range(len(rows) - 1, 0, -1):
        step(t, rows[t], rows[t - 1])
    return lam
