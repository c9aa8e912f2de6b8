"""Stopping a run at the first NaN or inf: in a mini-batch, in its loss, or in the TP direction.

This module owns the finiteness checks of a training step and when they cost a host sync.

* The mini-batch is checked where the task made it (on the CPU for every built-in task), before
  it is moved or sharded: no device sync, and under DDP the same verdict on every rank.
* The loss is checked before ``backward``; the direction (the parameters' ``.grad`` after
  ``backward``, and after DDP's all-reduce) through its total norm, one fused reduction over all
  parameters (:func:`direction_norm`). A NaN or inf anywhere makes the norm non-finite; so does a
  norm too large for the dtype (about 1e19 per entry in float32), which is divergence too.
* ``deferred=False`` (the CPU): loss and norm are read at once, a host sync that costs nothing
  on the CPU; a bad step raises before the optimizer moves the parameters.
* ``deferred=True`` (CUDA): the step never syncs; the first bad iteration and what was bad stay
  on the device until :meth:`FiniteGuard.flush`, which the trainer calls at every evaluation
  point, before every checkpoint and at the end. The parameters may then have taken a few bad
  steps, but no checkpoint ever holds them, and the message names the first bad iteration.
* ``check_loss=False`` (DDP): each rank sees only its shard's loss, and a rank that stopped alone
  would leave the others waiting in the next all-reduce; the loss is then checked at evaluation
  points on the mean over ranks, and per step only through the direction (which every rank
  shares after the all-reduce; a NaN loss on any rank makes it NaN).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

WHAT = {1: "loss", 2: "direction"}
DESCRIPTION = {
    "batch": "the mini-batch",
    "loss": "the mini-batch loss",
    "direction": "the training direction (the parameters' .grad after backward)",
}


class NonFinite(FloatingPointError):
    """A NaN or inf in ``what`` (``batch``, ``loss`` or ``direction``) at ``iteration``."""

    def __init__(self, what: str, iteration: int, detail: str = ""):
        self.what, self.iteration = what, iteration
        super().__init__(f"{DESCRIPTION[what]} of iteration {iteration} holds NaN or inf{detail}")


def direction_norm(parameters: Iterable[Tensor]) -> Tensor:
    """The 2-norm of all the parameters' ``.grad`` together: one fused reduction, on the device."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total_norm = getattr(nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total_norm is not None:
        return total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class FiniteGuard:
    """The checks of one run (see the module docstring for what each costs).

    Args:
        device: where the loss and the direction live.
        deferred: keep the verdict on the device until :meth:`flush` (CUDA) instead of reading
            it at every step (CPU).
        check_loss: check each step's loss (off under DDP, where each rank has its own).
    """

    def __init__(self, device: torch.device, *, deferred: bool, check_loss: bool = True):
        self.deferred, self.check_loss_enabled = deferred, check_loss
        self._first = torch.full((), -1, dtype=torch.int64, device=device)  # first bad iteration
        self._what = torch.zeros((), dtype=torch.int64, device=device)  # its WHAT code

    def check_batch(self, iteration: int, x: Tensor, y: Tensor) -> None:
        """Raise :class:`NonFinite` if the batch holds NaN or inf (host-side for CPU batches)."""
        finite = bool(torch.isfinite(x.data if isinstance(x, PackedSequence) else x).all())
        if finite and y.is_floating_point():
            finite = bool(torch.isfinite(y).all())
        if not finite:
            raise NonFinite("batch", iteration)

    def check_loss(self, iteration: int, loss: Tensor) -> None:
        """Check the mini-batch loss (before ``backward``)."""
        if self.check_loss_enabled:
            self._check(iteration, 1, loss.detach())

    def check_direction(self, iteration: int, norm: Tensor) -> None:
        """Check the direction through its total norm (after ``backward``, before the step)."""
        self._check(iteration, 2, norm.detach())

    def flush(self) -> None:
        """Deferred mode: read the device-side verdict (one host sync); raise for a bad step."""
        if not self.deferred:
            return
        first, what = torch.stack([self._first, self._what]).tolist()
        if first >= 0:
            raise NonFinite(WHAT[what], first, " (found at a later check: on this device the "
                                               "steps are checked without waiting for them)")

    def _check(self, iteration: int, code: int, value: Tensor) -> None:
        if not self.deferred:
            if not bool(torch.isfinite(value)):
                raise NonFinite(WHAT[code], iteration, f" ({WHAT[code]} {'norm ' if code == 2 else ''}"
                                                      f"is {value.item()})")
            return
        new = ~torch.isfinite(value) & (self._first < 0)
        self._first = torch.where(new, iteration, self._first)
        self._what = torch.where(new, code, self._what)
