"""What every task offers the trainer (synthetic sequences, pixel-by-pixel images, real series alike).

A task is deterministic given its seed: the training mini-batch of iteration ``i`` is a pure
function of ``(seed, i)``, so a resumed run draws exactly the batches an uninterrupted run
would, with no generator state to save; evaluation sets are fixed at construction.
"""
from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from torch import Tensor

# x (B, T, d) batch-first, y (B,) class indices or (B, k) targets; a task of variable-length
# series (tasks.sequences) gives x as a batch-first-ordered PackedSequence instead
Batch = tuple[Tensor, Tensor]


@runtime_checkable
class Task(Protocol):
    name: str
    input_size: int  # d, features per step
    output_size: int  # classes (cross-entropy) or regression outputs (mse)
    length: int  # T, steps per sequence
    loss: Literal["cross_entropy", "mse"]

    def train_batch(self, iteration: int) -> Batch:
        """The training mini-batch of ``iteration`` (a pure function of seed and iteration)."""

    def eval_batches(self, split: Literal["train", "test"]) -> list[Batch]:
        """Fixed evaluation batches: a fixed sample of training data, or the test set."""

    def correct(self, output: Tensor, y: Tensor) -> Tensor:
        """Number of correctly predicted samples in a batch (a 0-d tensor)."""
