"""The backward pass through time of one layer and direction, shared by every rule and every cell
(paper, Section 3), and the scratch and settings it runs with.

Displacements ``λ_t = v_t − h_t`` (t = 0..T) are stored time-major in one (T+1, B, p) buffer (for a
cell whose step carries more than ``h``, the LSTM's ``[h, c]``, one (T+1, B, S·p) buffer of the whole state).
It is first filled with the injected loss gradients, ``λ_t ← −s·g_t`` where ``g_t = ∂ℓ/∂h_t``
is the loss's direct dependence on ``h_t`` and ``s = γ_h`` (``s = 1`` for ``bp``), eq. (1), plus,
in a stack, the displacement handed down from the layer above (no second ``γ_h``); then, for
t = T..1, the rule adds ``R(λ_t, t)`` into ``λ_{t-1}``, eq. (2). Nothing is allocated inside the
loop: rules precompute every per-step factor before it.

With ``through_time=True`` (the authors' public code) the targets ``v_t`` are the same, but the
parameter direction is the gradient of ``Σ_t ½‖h_t − v_t‖²`` back-propagated through the
whole recurrence: a second, BP-like recursion whose injected gradients are ``−λ_t``.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from .rules import Rule


class Workspace:
    """Scratch buffers of a layer's backward pass, kept from one backward to the next, per thread.

    Every backward needs (T+1, B, p)-sized scratch tensors (the displacements, the derivatives,
    the GRU's pre-activation adjoints). Allocated afresh, each is new memory from the operating
    system whose first touch costs a page fault per 4 KiB (measured: ~100 ms for 160 MB, more than
    the arithmetic on it at B = 512); kept, it costs that once. Only scratch that no result of the
    backward refers to lives here. Buffers belong to the thread that asked for them, so backward
    passes running at once in several threads (``nn.DataParallel`` replicas, threaded evaluation)
    never share one; a thread's buffers go with the thread. Not saved, not copied.
    """

    def __init__(self):
        self._local = threading.local()

    def _buffers(self) -> dict:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        return buffers

    def empty(self, name, shape, like: Tensor) -> Tensor:
        """An uninitialized buffer ``name`` of ``shape`` with ``like``'s dtype and device (this thread's)."""
        buffers = self._buffers()
        buf = buffers.get(name)
        shape = tuple(shape)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != like.dtype or buf.device != like.device:
            buffers[name] = buf = like.new_empty(shape)
        return buf

    def part(self, key) -> "WorkspacePart":
        """The scratch of one part of a backward (a stack's direction: its layers use it one after
        the other, since a layer's scratch is dead before the layer below starts)."""
        return WorkspacePart(self, key)

    def clear(self) -> None:
        """Free this thread's buffers."""
        self._buffers().clear()

    @property
    def nbytes(self) -> int:
        """Bytes held by this thread's buffers."""
        return sum(b.nbytes for b in self._buffers().values())

    def __deepcopy__(self, memo):
        return Workspace()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


@dataclass(frozen=True)
class WorkspacePart:
    """The buffers of one :class:`Workspace` whose names start with ``key``."""

    workspace: Workspace
    key: object

    def empty(self, name, shape, like: Tensor) -> Tensor:
        return self.workspace.empty((self.key, name), shape, like)


@dataclass(frozen=True)
class Settings:
    """The hyper-parameters of one backward pass (validated by the layer that builds them)."""

    rule: Rule
    activation: object
    reg: float
    target_step: float
    tol: float
    through_time: bool = False
    backend: str = "auto"
    check_finite: bool = True
    inverse: object = None  # the learned rule's reverse layer (targetprop.learned.ReverseLayer)
    update_inverse: bool = False  # train it in this backward (training mode, parameters needing directions)
    signal_below: str = "gradient"  # the input's and h0's: "gradient" (÷ γ_h, BP's scale) or "target" (eq. 3's)


_recorders: list[list] = []


@contextlib.contextmanager
def recording():
    """Within the block, each TP layer's backward appends ``(tape, settings, λ)`` to the yielded
    list per layer and direction: ``λ`` a copy of the displacements of eqs. (1)–(2) (before any
    through-time pass), with the tape and settings that turn displacements into directions
    (:mod:`targetprop.diagnose`)."""
    records: list = []
    _recorders.append(records)
    try:
        yield records
    finally:
        _recorders.remove(records)


def record(tape, settings: Settings, lam: Tensor) -> None:
    """Within :func:`recording` blocks, keep a copy of ``λ`` with its tape and settings; nothing otherwise."""
    if _recorders:
        entry = (tape, settings, lam.clone())
        for records in _recorders:
            records.append(entry)


def injection_scale(settings: Settings, shards: int = 1) -> float:
    """``s`` of ``λ_t ← −s·g_t`` (eq. 1): ``γ_h``, or 1 for a rule whose displacements are BP's adjoints.

    With the batch split over ``shards`` data-parallel processes, each process's loss is a mean
    over its own shard, so its ``g_t`` is ``shards`` times the whole batch's for the same sequence;
    ``γ_h / shards`` gives every sequence the displacement one process would give it (which
    matters for the rules whose step back in time is not linear in λ: difference, learned, and
    the projection by τ), and the backward multiplies its outputs by ``shards`` to undo the
    all-reduce's mean over processes (:func:`data_parallel_shards`)."""
    return settings.target_step / shards if settings.rule.makes_targets else 1.0


def data_parallel_shards(settings: Settings) -> int:
    """How many data-parallel processes share each batch: 1 for a rule that makes no targets
    (BP's gradients are linear in the loss) or without an initialized ``torch.distributed``
    process group, else the default group's world size (DDP and FSDP shard every batch over it)."""
    dist = torch.distributed
    if not settings.rule.makes_targets or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def inject(grad_output: Tensor | None, scale: float, out: Tensor, workspace) -> Tensor:
    """The (T+1, B, W) buffer holding ``−scale·g_t`` at t = 1..T and 0 at t = 0, for the states
    ``out`` (T, B, W); a gradient given as None (an output the loss does not use) is 0. A cell
    whose state is wider than its output (the LSTM's ``[h, c]``) gets ``g_t`` (T, B, p) in its
    first ``p`` columns, the rest 0."""
    T, B, width = out.shape
    lam = workspace.empty("displacements", (T + 1, B, width), out)
    if grad_output is not None and grad_output.shape[-1] == width:
        lam[0].zero_()  # every other slot is written below
    else:
        lam.zero_()
    if grad_output is not None:
        torch.mul(grad_output, -scale, out=lam[1:, :, :grad_output.shape[-1]])
    return lam


def propagate_targets(tape, lam: Tensor, settings: Settings):
    """Eq. (2) in place on ``lam`` (already holding the injections); returns what the rule's
    recursion handed over for the directions (or None), after recording ``λ``."""
    adjoints = settings.rule.recursion(tape, settings)(lam)
    record(tape, settings, lam)
    return adjoints


def through_time_(tape, lam: Tensor, settings: Settings, adjoints=None):
    """With ``through_time`` (and a rule that makes targets), turn the displacements ``λ`` into the
    negated adjoints ``ν`` of ``Σ_t ½‖h_t − v_t‖²`` in place and return the adjoint recursion's
    hand-over; otherwise leave ``λ`` as it is and return ``adjoints``."""
    if not (settings.through_time and settings.rule.makes_targets):
        return adjoints
    # ν_T = λ_T, ν_{t-1} = BP-step(ν_t) + λ_{t-1} for t-1 ≥ 1; h_0 has no target loss. In place:
    # when step t writes ν_{t-1} into slot t-1, that slot holds λ_{t-1}, which nothing needs after.
    lam[0].zero_()
    return tape.adjoint_recursion()(lam)
