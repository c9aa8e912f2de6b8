"""The paper's synthetic sequence tasks (Section 4, Fig. 3): temporal order and adding.

This module owns generating their sequences and serving them as a
:class:`~targetprop.tasks.base.Task`.

Positions are counted from 1 as in the paper (``t ∈ {1, …, T}``); the tensor index of step
``t`` is ``t − 1``. A range ``[a·T, b·T]`` holds the integers ``⌈a·T⌉ … ⌊b·T⌋`` (at least 1).

* **Temporal order** (Hochreiter & Schmidhuber 1997; Manchev & Spratling 2020). Every step is
  one of the symbols ``a, b, c, d`` drawn uniformly, except ``n`` marker steps (``n = 1`` bit:
  2 markers, 4 classes; ``n = 3`` bits: 3 markers, 8 classes) holding ``X`` or ``Y``, at
  ``t1 ∈ [T/10, 2T/10]``, ``t2 ∈ [4T/10, 5T/10]`` and, for 3 bits, ``t3 ∈ [6T/10, 7T/10]``.
  Inputs are one-hot over the 6 symbols ``a, b, c, d, X, Y`` (in that order). The class reads
  the markers as binary digits, first marker most significant, ``X = 0`` and ``Y = 1``:
  ``XX = 0, XY = 1, YX = 2, YY = 3``.
* **Adding** (Hochreiter & Schmidhuber 1997). Two channels: values drawn uniformly in [0, 1],
  and a marker channel that is 1 at ``t1 ∈ [1, T/10]`` and ``t2 ∈ [T/10 + 1, T/2]`` (the
  paper writes ``[T/10, T/2]``; we start one step later so the markers never coincide) and 0
  elsewhere. The target is the mean of the two marked values; the loss is the mean squared
  error; a sample is correct when its squared error is below 0.04 (the paper's text), or with
  ``criterion="absolute"`` when its absolute error is (the authors' public code).

Batches are a pure function of ``(seed, iteration)``: each is drawn from its own generator,
seeded by hashing ``(seed, "train", iteration)``
(:func:`~targetprop.tasks.seeding.derived_generator`). The evaluation sets are fixed: the test set
is drawn from ``test_seed`` (the same for every run by default, so runs compare on the same
sequences), the training sample from ``(seed, "train-eval")``.
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from torch import Tensor

from .. import _validation as check
from .base import Batch
from .seeding import derived_generator

SYMBOLS = ("a", "b", "c", "d", "X", "Y")
TEMPORAL_ORDER_RANGES = ((0.1, 0.2), (0.4, 0.5), (0.6, 0.7))  # of T, one per marker
ERROR_THRESHOLD = 0.04
CRITERIA = ("squared", "absolute")


def position_range(length: int, low: float, high: float) -> tuple[int, int]:
    """The 1-based steps ``⌈low·T⌉ … ⌊high·T⌋`` of a sequence of ``length`` steps (inclusive)."""
    return max(1, math.ceil(low * length - 1e-9)), min(length, math.floor(high * length + 1e-9))


class _SyntheticTask:
    """What the synthetic tasks share: seeding, batch sizes and the fixed evaluation sets.

    Subclasses implement ``sample(n, generator) -> (x, y)``.
    """

    name: str
    input_size: int
    output_size: int
    loss: str

    def __init__(self, length: int, *, seed: int, batch_size: int, test_size: int,
                 train_eval_size: int, eval_batch_size: int, test_seed: int, dtype: torch.dtype):
        self.length = check.positive_int("length", length)
        self.seed = _non_negative("seed", seed)
        self.test_seed = _non_negative("test_seed", test_seed)
        self.batch_size = check.positive_int("batch_size", batch_size)
        self.test_size = check.positive_int("test_size", test_size)
        self.train_eval_size = check.positive_int("train_eval_size", train_eval_size)
        self.eval_batch_size = check.positive_int("eval_batch_size", eval_batch_size)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._eval: dict[str, list[Batch]] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, length={self.length}, seed={self.seed}, "
                f"batch_size={self.batch_size}, test_size={self.test_size})")

    def sample(self, n: int, generator: torch.Generator) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ Task protocol

    def train_batch(self, iteration: int) -> Batch:
        """The mini-batch of ``iteration``, drawn from a generator seeded by ``(seed, iteration)``."""
        iteration = _non_negative("iteration", iteration)
        return self.sample(self.batch_size, derived_generator(self.seed, "train", iteration))

    def eval_batches(self, split: Literal["train", "test"]) -> list[Batch]:
        """Fixed evaluation batches: the test set, or a fixed sample from the training stream."""
        split = check.choice("split", split, ("train", "test"))
        if split not in self._eval:  # drawn once, on first use
            if split == "test":
                size, gen = self.test_size, derived_generator(self.test_seed, "test")
            else:
                size, gen = self.train_eval_size, derived_generator(self.seed, "train-eval")
            x, y = self.sample(size, gen)
            self._eval[split] = list(zip(x.split(self.eval_batch_size), y.split(self.eval_batch_size)))
        return list(self._eval[split])


class TemporalOrder(_SyntheticTask):
    """Temporal order with ``bits`` markers (1: XX/XY/YX/YY, 4 classes; 3: 8 classes).

    Args:
        length: ``T``, steps per sequence (at least 10 so that the marker ranges are disjoint).
        bits: 1 (two markers, 4 classes, as the paper) or 3 (three markers, 8 classes).
        seed: seeds the training batches.
        batch_size: sequences per training batch (20 in the paper).
        test_size: sequences in the fixed test set.
        train_eval_size: sequences in the fixed sample of training data evaluated as "train".
        eval_batch_size: sequences per evaluation batch.
        test_seed: seeds the test set (shared by all runs by default).
        dtype: floating dtype of the inputs.
    """

    input_size = len(SYMBOLS)
    loss = "cross_entropy"

    def __init__(self, length: int = 60, *, bits: int = 1, seed: int = 0, batch_size: int = 20,
                 test_size: int = 1000, train_eval_size: int = 1000, eval_batch_size: int = 1000,
                 test_seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(length, seed=seed, batch_size=batch_size, test_size=test_size,
                         train_eval_size=train_eval_size, eval_batch_size=eval_batch_size,
                         test_seed=test_seed, dtype=dtype)
        if bits not in (1, 3):
            raise ValueError(f"bits must be 1 or 3, got {bits!r}")
        self.bits = bits
        self.markers = 2 if bits == 1 else 3
        self.output_size = 2 ** self.markers
        self.name = "temporal-order" if bits == 1 else "temporal-order-3bit"
        self.ranges = [position_range(self.length, lo, hi) for lo, hi in TEMPORAL_ORDER_RANGES[: self.markers]]
        _check_ranges(self.name, self.length, self.ranges)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` sequences ``(n, T, 6)`` one-hot and their classes ``(n,)`` (int64)."""
        symbols = torch.randint(0, 4, (n, self.length), generator=generator)
        marks = torch.randint(0, 2, (n, self.markers), generator=generator)  # 0 = X, 1 = Y
        rows = torch.arange(n)
        for k, (lo, hi) in enumerate(self.ranges):
            steps = torch.randint(lo, hi + 1, (n,), generator=generator) - 1
            symbols[rows, steps] = 4 + marks[:, k]
        weights = 2 ** torch.arange(self.markers - 1, -1, -1)
        y = (marks * weights).sum(dim=1)
        return torch.nn.functional.one_hot(symbols, len(SYMBOLS)).to(self.dtype), y

    def correct(self, output: Tensor, y: Tensor) -> Tensor:
        """Number of sequences whose highest output is their class."""
        return (output.argmax(dim=-1) == y).sum()


class Adding(_SyntheticTask):
    """The adding problem: regress the mean of the two marked values.

    Args:
        length: ``T``, steps per sequence (at least 10).
        criterion: ``"squared"`` (squared error < 0.04, the paper) or ``"absolute"``
            (absolute error < 0.04, the authors' code) for counting a sample as correct.
        Others: as :class:`TemporalOrder`.
    """

    name = "adding"
    input_size = 2
    output_size = 1
    loss = "mse"

    def __init__(self, length: int = 30, *, criterion: str = "squared", seed: int = 0, batch_size: int = 20,
                 test_size: int = 1000, train_eval_size: int = 1000, eval_batch_size: int = 1000,
                 test_seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(length, seed=seed, batch_size=batch_size, test_size=test_size,
                         train_eval_size=train_eval_size, eval_batch_size=eval_batch_size,
                         test_seed=test_seed, dtype=dtype)
        self.criterion = check.choice("criterion", criterion, CRITERIA)
        tenth = position_range(self.length, 0.0, 0.1)[1]
        self.ranges = [(1, tenth), (tenth + 1, position_range(self.length, 0.0, 0.5)[1])]
        _check_ranges(self.name, self.length, self.ranges)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` sequences ``(n, T, 2)`` (values, markers) and their targets ``(n, 1)``."""
        values = torch.rand(n, self.length, generator=generator, dtype=torch.float64)
        markers = torch.zeros(n, self.length, dtype=torch.float64)
        rows = torch.arange(n)
        target = torch.zeros(n, dtype=torch.float64)
        for lo, hi in self.ranges:
            steps = torch.randint(lo, hi + 1, (n,), generator=generator) - 1
            markers[rows, steps] = 1.0
            target += values[rows, steps] / 2
        x = torch.stack([values, markers], dim=-1).to(self.dtype)
        return x, target.unsqueeze(1).to(self.dtype)

    def correct(self, output: Tensor, y: Tensor) -> Tensor:
        """Number of samples whose error (squared or absolute, see ``criterion``) is below 0.04."""
        error = (output.reshape(y.shape) - y).detach()
        error = error.square() if self.criterion == "squared" else error.abs()
        return (error.reshape(error.shape[0], -1).amax(dim=1) < ERROR_THRESHOLD).sum()


SYNTHETIC_TASKS = {
    "temporal-order": TemporalOrder,
    "temporal-order-3bit": functools.partial(TemporalOrder, bits=3),
    "adding": Adding,
}


# ---------------------------------------------------------------------------- helpers


def _non_negative(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _check_ranges(name: str, length: int, ranges: list[tuple[int, int]]) -> None:
    """Every marker range non-empty and after the previous one, else a ValueError naming the length."""
    previous = 0
    for lo, hi in ranges:
        if lo > hi or lo <= previous:
            raise ValueError(f"length={length} is too short for {name}: its marker ranges "
                             f"{ranges} must be non-empty and disjoint (use length >= 10)")
        previous = hi
