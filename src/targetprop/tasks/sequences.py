"""Sequence classification on a fixed data set of real series (UEA/UCR files, a user's file).

This module owns serving such a data set as a :class:`~targetprop.tasks.base.Task`: the
per-channel normalization, the missing-value rule, the order of the training batches and the
batching of variable lengths. Reading the files is :mod:`targetprop.tasks.tsfile`'s and
:mod:`targetprop.tasks.userfile`'s.

* **Normalization** (``normalize="standardize"``, the default): each channel ``c`` becomes
  ``(x_c − mean_c) / std_c`` with the mean and standard deviation of every training step of
  channel ``c`` (missing values left out); the test split never enters them. A channel constant
  over the training split is only centred. ``normalize="none"`` feeds the values as read.
* **Missing values** (NaN from a file's ``?``): after normalization they are 0, the training
  mean of their channel.
* **Batches**: when every series of both splits has the same length a batch is a plain
  tensor ``(B, T, d)``; otherwise it is a :class:`torch.nn.utils.rnn.PackedSequence` (batch
  first order of ``y``, ``enforce_sorted=False``), so the recurrent layer reads each series to its
  own end and ``h_n`` is each series' last valid state.
* **Order**: as the image tasks (:class:`~targetprop.tasks.seeding.EpochStream`), epoch after
  epoch, each a permutation drawn from ``(seed, epoch)``; the batch of iteration ``i`` is a pure
  function of ``(seed, i)``. Evaluation uses
  fixed subsets (drawn from a seed of their own, the same for every run), in file order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from .. import _validation as check
from .seeding import EpochStream, derived_generator

NORMALIZE = ("standardize", "none")
_SUBSET_SEED = 0  # evaluation subsets do not depend on the run's seed


@dataclass(frozen=True)
class SequenceData:
    """Two splits of series ``(T_i, d)`` (float64, NaN where missing) with int64 class labels in
    ``[0, num_classes)``; ``classes`` names them (or None)."""

    name: str
    train: list[Tensor]
    train_labels: Tensor
    test: list[Tensor]
    test_labels: Tensor
    num_classes: int
    classes: tuple[str, ...] | None = None

    @property
    def input_size(self) -> int:
        return self.train[0].shape[1]

    @property
    def lengths(self) -> list[int]:
        return [s.shape[0] for s in (*self.train, *self.test)]


class SequenceTask:
    """Classify real series (a :class:`~targetprop.tasks.base.Task`; the module docstring says how).

    Args:
        data: the two splits.
        seed: seeds the order of the training batches.
        batch_size: training mini-batch size.
        test_size: series of the fixed test subset (``None``: the whole test split).
        train_eval_size: series of the fixed training sample of ``eval_batches("train")``
            (``None``: the whole training split).
        eval_batch_size: series per evaluation batch.
        normalize: ``"standardize"`` (per channel, from the training split) or ``"none"``.
        dtype: floating dtype of the inputs.
    """

    loss = "cross_entropy"

    def __init__(self, data: SequenceData, *, seed: int = 0, batch_size: int = 16, test_size: int | None = None,
                 train_eval_size: int | None = None, eval_batch_size: int = 256,
                 normalize: Literal["standardize", "none"] = "standardize", dtype: torch.dtype = torch.float32):
        self.data = data
        self.name = data.name
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.batch_size = check.positive_int("batch_size", batch_size)
        self.eval_batch_size = check.positive_int("eval_batch_size", eval_batch_size)
        self.normalize = check.choice("normalize", normalize, NORMALIZE)
        self.input_size, self.output_size = data.input_size, data.num_classes
        lengths = data.lengths
        self.length = max(lengths)  # T: the longest series
        self.packed = min(lengths) != max(lengths)
        self.shift, self.scale = channel_normalization(data.train, self.normalize)
        self._train = [self._prepare(s, dtype) for s in data.train]
        self.stream = EpochStream(len(self._train), self.batch_size, self.seed)
        test = [self._prepare(s, dtype) for s in data.test]
        self._eval = {
            "train": self._eval_split(self._train, data.train_labels, train_eval_size, "train_eval_size"),
            "test": self._eval_split(test, data.test_labels, test_size, "test_size"),
        }

    def __repr__(self) -> str:
        return (f"SequenceTask(name={self.name!r}, series={len(self._train)}, d={self.input_size}, "
                f"length={self.length}{' (variable, packed)' if self.packed else ''}, seed={self.seed}, "
                f"batch_size={self.batch_size}, normalize={self.normalize!r})")

    # ------------------------------------------------------------------ Task protocol

    def train_batch(self, iteration: int):
        """The mini-batch of ``iteration``: positions ``iteration·B …`` of the epoch stream."""
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be a non-negative integer, got {iteration!r}")
        index = self.stream.indices(iteration)
        return self.batch([self._train[i] for i in index.tolist()]), self.data.train_labels[index]

    def eval_batches(self, split: Literal["train", "test"]) -> list:
        """Fixed evaluation batches: a sample of the training split, or the test subset."""
        return list(self._eval[check.choice("split", split, ("train", "test"))])

    def correct(self, output: Tensor, y: Tensor) -> Tensor:
        """Number of series whose highest output is their label."""
        return (output.argmax(dim=-1) == y).sum()

    # ------------------------------------------------------------------ building blocks

    def batch(self, series: list[Tensor]) -> Tensor | PackedSequence:
        """``(B, T, d)`` when every series of the data set has one length, else a PackedSequence."""
        if self.packed:
            return pack_sequence(series, enforce_sorted=False)
        return torch.stack(series)

    def _prepare(self, series: Tensor, dtype: torch.dtype) -> Tensor:
        x = (series - self.shift) / self.scale
        return torch.nan_to_num(x, nan=0.0).to(dtype)

    def _eval_split(self, series: list[Tensor], labels: Tensor, size: int | None, what: str) -> list:
        n = len(series)
        if size is None:
            index = torch.arange(n)
        else:
            size = check.positive_int(what, size)
            if size > n:
                split = "test" if what == "test_size" else "training"
                option = "--test-size N" if what == "test_size" else "--task-option train_eval_size=N"
                raise ValueError(f"{what}={size} exceeds the {n} {split} series of {self.name}: set {option} "
                                 f"to at most {n}, or leave it unset for all")
            index = torch.randperm(n, generator=derived_generator(_SUBSET_SEED, what))[:size].sort().values
        return [(self.batch([series[i] for i in chunk.tolist()]), labels[chunk])
                for chunk in index.split(self.eval_batch_size)]


def channel_normalization(series: list[Tensor], mode: str) -> tuple[Tensor, Tensor]:
    """Per-channel shift and scale ``(d,)`` (float64) from every step of ``series`` (NaN left out):
    the mean and standard deviation for ``"standardize"`` (scale 1 for a constant channel), 0 and
    1 for ``"none"``. A channel with no value at all is a ValueError."""
    d = series[0].shape[1]
    if mode == "none":
        return torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    steps = torch.cat(series)  # (sum T_i, d)
    present = ~torch.isnan(steps)
    counts = present.sum(0)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"channel(s) {', '.join(map(str, empty))} of the training split have no value "
                         "(all missing): cannot normalize them")
    values = torch.where(present, steps, 0.0)
    mean = values.sum(0) / counts
    var = (torch.where(present, steps - mean, 0.0) ** 2).sum(0) / counts
    std = var.sqrt()
    return mean, torch.where(std > 0, std, torch.ones_like(std))
