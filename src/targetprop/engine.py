"""The backward pass through time, shared by every rule and every cell (paper, Section 3).

Displacements ``λ_t = v_t − h_t`` (t = 0..T) are stored time-major in one (T+1, B, p) buffer.
It is first filled with the injected loss gradients, ``λ_t ← −s·g_t`` where ``g_t = ∂ℓ/∂h_t``
is the loss's direct dependence on ``h_t`` and ``s = γ_h`` (``s = 1`` for ``bp``), eq. (1);
then, for t = T..1, the rule adds ``R(λ_t, t)`` into ``λ_{t-1}``, eq. (2). Nothing is
allocated inside the loop: rules precompute every per-step factor before it.

With ``through_time=True`` (the authors' public code) the targets ``v_t`` are the same, but the
parameter direction is the gradient of ``Σ_t ½‖h_t − v_t‖²`` back-propagated through the
whole recurrence: a second, BP-like recursion whose injected gradients are ``−λ_t``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from . import rules


class Workspace:
    """Scratch buffers of a layer's backward pass, kept from one backward to the next.

    Every backward needs (T+1, B, p)-sized scratch tensors (the displacements, the derivatives,
    the GRU's pre-activation adjoints). Allocated afresh, each is new memory from the operating
    system whose first touch costs a page fault per 4 KiB (measured: ~100 ms for 160 MB, more than
    the arithmetic on it at B = 512); kept, it costs that once. Only scratch that no result of the
    backward refers to lives here. A layer owns one (not saved, not copied); None means no reuse.
    """

    def __init__(self):
        self._buffers: dict[str, Tensor] = {}
        self._parts: dict = {}

    def empty(self, name: str, shape, like: Tensor) -> Tensor:
        """An uninitialized buffer ``name`` of ``shape`` with ``like``'s dtype and device."""
        buf = self._buffers.get(name)
        shape = tuple(shape)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != like.dtype or buf.device != like.device:
            self._buffers[name] = buf = like.new_empty(shape)
        return buf

    def part(self, key) -> "Workspace":
        """The workspace of one part of a backward (a stack's direction: its layers use it one after
        the other, since a layer's scratch is dead before the layer below starts)."""
        if key not in self._parts:
            self._parts[key] = Workspace()
        return self._parts[key]

    def clear(self) -> None:
        self._buffers.clear()
        self._parts.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held, parts included."""
        return sum(b.nbytes for b in self._buffers.values()) + sum(w.nbytes for w in self._parts.values())

    def __deepcopy__(self, memo):
        return Workspace()

    def __getstate__(self):
        return {"_buffers": {}, "_parts": {}}

    def __setstate__(self, state):  # a layer pickled before parts existed comes back with them
        self.__init__()


@dataclass(frozen=True)
class TPConfig:
    """Hyper-parameters of one backward pass (validated by the module that builds it)."""

    cell: str
    rule: str
    activation: object
    reg: float
    target_step: float
    tol: float
    through_time: bool = False
    backend: str = "auto"
    inverse: object = None  # the learned rule's reverse layer (targetprop.learned.ReverseLayer)
    workspace: Workspace | None = None  # the layer's scratch buffers (None: fresh ones each backward)


_recorders: list[list] = []


@contextlib.contextmanager
def recording():
    """Within the block, each TP layer's backward appends ``(tape, config, λ)`` to the yielded
    list: ``λ`` a copy of the displacements of eqs. (1)–(2) (before any through-time pass), with
    the tape and settings that turn displacements into directions (:mod:`targetprop.diagnose`)."""
    records: list = []
    _recorders.append(records)
    try:
        yield records
    finally:
        _recorders.remove(records)


def injection_scale(config: TPConfig) -> float:
    """``s`` of ``λ_t ← −s·g_t`` (eq. 1): ``γ_h``, or 1 for a rule whose displacements are BP's adjoints."""
    return config.target_step if rules.get_rule(config.cell, config.rule).uses_target_step else 1.0


def inject(grad_output: Tensor | None, grad_last: Tensor | None, scale: float, out: Tensor,
           workspace: Workspace) -> Tensor:
    """The (T+1, B, p) buffer holding ``−scale·g_t`` at t = 1..T and 0 at t = 0, for hidden
    states ``out`` (T, B, p); a gradient given as None (an output the loss does not use) is 0."""
    T, B, p = out.shape
    lam = workspace.empty("displacements", (T + 1, B, p), out)
    if grad_output is None:
        lam.zero_()
    else:
        lam[0].zero_()
        torch.mul(grad_output, -scale, out=lam[1:])
    if grad_last is not None:
        lam[T].add_(grad_last, alpha=-scale)
    return lam


def displacements(tape, grad_output: Tensor | None, grad_last: Tensor | None, config: TPConfig) -> Tensor:
    """The displacements whose negation drives every parameter direction (eq. 3).

    Returns the (T+1, B, p) buffer ``λ`` of eqs. (1)–(2) or, with ``through_time``, the
    (negated) adjoints of ``Σ_t ½‖h_t − v_t‖²`` through the unrolled recurrence.
    """
    rule = rules.get_rule(config.cell, config.rule)
    lam = inject(grad_output, grad_last, injection_scale(config), tape.out, tape.workspace)
    rule.prepare(tape, config)(lam)
    record(tape, config, lam)
    return through_time_(tape, lam, config)


def record(tape, config: TPConfig, lam: Tensor) -> None:
    """Within :func:`recording` blocks, keep a copy of ``λ`` (eqs. 1–2, before any through-time
    pass) with its tape and settings; nothing otherwise."""
    if _recorders:
        entry = (tape, config, lam.clone())
        for records in _recorders:
            records.append(entry)


def through_time_(tape, lam: Tensor, config: TPConfig) -> Tensor:
    """With ``through_time`` (and a rule other than ``bp``), turn the displacements ``λ`` into the
    negated adjoints ``ν`` of ``Σ_t ½‖h_t − v_t‖²`` in place; otherwise return ``λ`` as it is."""
    if config.through_time and config.rule != "bp":
        # ν_T = λ_T, ν_{t-1} = BP-step(ν_t) + λ_{t-1} for t-1 ≥ 1; h_0 has no target loss. In place:
        # when step t writes ν_{t-1} into slot t-1, that slot holds λ_{t-1}, which nothing needs after.
        lam[0].zero_()
        tape.adjoint_recursion()(lam)
    return lam
