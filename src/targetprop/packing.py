"""Variable-length batches: ``PackedSequence`` in and out, and time reversal within each sequence.

A stack runs on a padded time-major tensor (T, B, d) in the caller's batch order with each
sequence's length; a packed input is unpacked by one index (its rows' (step, sequence) pairs), and
the output packed back by the same index, so it has the input's ``batch_sizes``,
``sorted_indices`` and ``unsorted_indices`` whatever the order of equal lengths. A reverse
direction runs on each sequence reversed within its own length (:class:`Steps`), so it starts at
the sequence's own end; padded steps stay where they are, after the valid ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


@dataclass
class Packing:
    """Where each row of a packed input sits in the padded (T, B, ·) tensor."""

    steps: Tensor  # (N,): step of each packed row
    rows: Tensor  # (N,): sequence (caller's order) of each packed row
    lengths: Tensor  # (B,) int64, the caller's order
    like: PackedSequence

    @classmethod
    def of(cls, packed: PackedSequence) -> "Packing":
        sizes = packed.batch_sizes  # (T,) int64 on the CPU
        T, B = len(sizes), int(sizes[0])
        order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(B)
        order = order.cpu()
        steps = torch.repeat_interleave(torch.arange(T), sizes)
        first = torch.cumsum(sizes, 0) - sizes  # the packed row where each step starts
        rows = order[torch.arange(len(steps)) - first[steps]]  # row j of a step is sequence order[j]
        lengths = torch.zeros(B, dtype=torch.int64).index_add_(0, rows, torch.ones_like(rows))
        device = packed.data.device
        return cls(steps.to(device), rows.to(device), lengths, packed)

    def pad(self, data: Tensor) -> Tensor:
        """(N, d) packed rows → (T, B, d) zero-padded (differentiable)."""
        T, B = len(self.like.batch_sizes), len(self.lengths)
        out = data.new_zeros(T, B, data.shape[-1])
        return out.index_put((self.steps, self.rows), data)

    def pack(self, padded: Tensor) -> PackedSequence:
        """(T, B, d) → a PackedSequence with the input's batch sizes and indices (differentiable)."""
        like = self.like
        return PackedSequence(padded[self.steps, self.rows], like.batch_sizes, like.sorted_indices,
                              like.unsorted_indices)


class Steps:
    """The valid steps of a batch: every step (``lengths`` None) or each sequence's first ``lengths[b]``."""

    def __init__(self, T: int, B: int, lengths: Tensor | None, device):
        self.T, self.B = T, B
        self.lengths = None if lengths is None else lengths.to(device)
        if self.lengths is not None:
            t = torch.arange(T, device=device).unsqueeze(1)
            n = self.lengths.unsqueeze(0)
            self._reverse = torch.where(t < n, n - 1 - t, t)  # (T, B): an involution
            self.valid = (t < n).unsqueeze(-1)  # (T, B, 1) bool

    def reverse(self, x: Tensor) -> Tensor:
        """``x`` (T, B, k) with each sequence reversed within its length (a new tensor)."""
        if self.lengths is None:
            return x.flip(0)
        return x.gather(0, self._reverse.unsqueeze(-1).expand(x.shape))

    def last(self, out: Tensor) -> Tensor:
        """Each sequence's last valid state (B, p) of ``out`` (T, B, p)."""
        if self.lengths is None:
            return out[-1]
        idx = (self.lengths - 1).view(1, -1, 1).expand(1, *out.shape[1:])
        return out.gather(0, idx).squeeze(0)

    def add_at_last_(self, lam: Tensor, g: Tensor, alpha: float) -> None:
        """``λ[len_b, b] += alpha·g[b]`` for displacements ``lam`` (T+1, B, p) (slot t is ``h_t``)."""
        if self.lengths is None:
            lam[-1].add_(g, alpha=alpha)
        else:
            idx = self.lengths.view(1, -1, 1).expand(1, *lam.shape[1:])
            lam.scatter_add_(0, idx, (g * alpha).unsqueeze(0))

    def mask_(self, y: Tensor) -> Tensor:
        """Zero ``y`` (T, B, k) at the padded steps, in place."""
        if self.lengths is not None:
            y.mul_(self.valid)
        return y
