"""Pixel-by-pixel image classification (Section 4, Figs. 4 and 6): MNIST, permuted MNIST,
Fashion-MNIST and CIFAR-10 read as sequences.

This module owns turning images into sequences and serving them as a
:class:`~targetprop.tasks.base.Task`; reading the files is :mod:`targetprop.tasks.datasets`' job.

An image is flattened in row-major order; a CIFAR-10 image channel by channel (its 1024 red
values, then green, then blue: 3072 steps). ``k`` consecutive values make one step, so a
sequence has ``length = values / k`` steps of ``input_size = k`` features. An optional fixed
permutation of the flattened values (by its own seed: permuted MNIST) is applied before the
chunking. Values are optionally scaled to [0, 1] and standardized per channel with the mean
and standard deviation of the training images. Raw values (``normalize="none"``, 0..255)
saturate tanh and sigmoid to exactly ±1 / 0 / 1 in the first step, where the TP rules' inverse is
undefined (a NaN direction at iteration 0); the trainer refuses them for TP rules.

Training batches: the training set is read epoch after epoch, each epoch in the order of a
permutation drawn from a generator seeded by ``(seed, epoch)``; iteration ``i`` takes positions
``i·B … i·B+B-1`` of that stream. So the batch of iteration ``i`` is a pure function of
``(seed, i)`` and every training image is seen exactly once per epoch. Evaluation uses fixed
subsets (the same for every seed, so runs compare on the same images).
"""
from __future__ import annotations

import math
import os
from typing import Literal

import torch
from torch import Tensor

from .. import _validation as check
from .datasets import ImageData, load_cifar10, load_fashion_mnist, load_mnist
from .base import Batch
from .seeding import EpochStream, derived_generator

Normalize = Literal["none", "scale", "standardize"]
NORMALIZE = ("none", "scale", "standardize")
_SUBSET_SEED = 0  # evaluation subsets do not depend on the run's seed
OPTION = {  # how a run sets each size (command line, then config file)
    "test_size": "--test-size N (test_size)",
    "train_eval_size": "--task-option train_eval_size=N (task_options.train_eval_size)",
}


class PixelSequenceTask:
    """Classify an image read ``k`` values per step (a :class:`~targetprop.tasks.base.Task`).

    Args:
        data: the images and labels (:mod:`targetprop.tasks.datasets`).
        name: the task's name (defaults to ``data.name``).
        k: values per step; must divide the values per image (784, or 3072 for CIFAR-10).
        seed: seeds the order of the training batches.
        batch_size: training mini-batch size (16 in the paper).
        test_size: images of the fixed test subset (``None``: the whole test set).
        train_eval_size: images of the fixed training sample evaluated by ``eval_batches("train")``
            (``None``: the whole training set).
        eval_batch_size: images per evaluation batch.
        normalize: ``"none"`` (raw 0..255), ``"scale"`` (to [0, 1]) or ``"standardize"``
            (to [0, 1], then per channel ``(x − mean) / std`` of the training images).
        permutation_seed: if given, one fixed permutation of the flattened values, drawn from
            this seed, is applied to every image (permuted MNIST).
        dtype: floating dtype of the inputs.
    """

    loss = "cross_entropy"

    def __init__(
        self,
        data: ImageData,
        *,
        name: str | None = None,
        k: int = 1,
        seed: int = 0,
        batch_size: int = 16,
        test_size: int | None = 1000,
        train_eval_size: int | None = 1000,
        eval_batch_size: int = 500,
        normalize: Normalize = "scale",
        permutation_seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.data = data
        self.name = name or data.name
        self.values = math.prod(data.image_shape)
        self.k = _divisor(k, self.values, self.name)
        self.seed = _integer("seed", seed)
        self.batch_size = check.positive_int("batch_size", batch_size)
        self.eval_batch_size = check.positive_int("eval_batch_size", eval_batch_size)
        self.normalize = check.choice("normalize", normalize, NORMALIZE)
        self.permutation_seed = permutation_seed if permutation_seed is None else _integer(
            "permutation_seed", permutation_seed)
        self.dtype = dtype
        self.input_size, self.length, self.output_size = self.k, self.values // self.k, data.num_classes
        self.permutation = self._permutation()
        self._shift, self._scale = (t.to(dtype) for t in _normalization(data, self.normalize))
        self._stream = EpochStream(data.train_images.shape[0], self.batch_size, self.seed)
        self._eval = {
            "train": self._eval_split(data.train_images, data.train_labels, train_eval_size, "train_eval_size"),
            "test": self._eval_split(data.test_images, data.test_labels, test_size, "test_size"),
        }

    def __repr__(self) -> str:
        perm = "" if self.permutation_seed is None else f", permutation_seed={self.permutation_seed}"
        return (f"PixelSequenceTask(name={self.name!r}, k={self.k}, length={self.length}, seed={self.seed}, "
                f"batch_size={self.batch_size}, normalize={self.normalize!r}{perm})")

    # ------------------------------------------------------------------ Task protocol

    def train_batch(self, iteration: int) -> Batch:
        """The mini-batch of ``iteration``: positions ``iteration·B …`` of the epoch stream."""
        index = self.train_indices(_integer("iteration", iteration))
        return self.sequences(self.data.train_images[index]), self.data.train_labels[index]

    def eval_batches(self, split: Literal["train", "test"]) -> list[Batch]:
        """Fixed evaluation batches: a sample of the training set, or the test subset."""
        return list(self._eval[check.choice("split", split, ("train", "test"))])

    def correct(self, output: Tensor, y: Tensor) -> Tensor:
        """Number of samples whose highest output is their label."""
        return (output.argmax(dim=-1) == y).sum()

    # ------------------------------------------------------------------ building blocks

    def sequences(self, images: Tensor) -> Tensor:
        """uint8 images ``(B, *image_shape)`` as float sequences ``(B, length, k)``."""
        flat = images.reshape(images.shape[0], self.values).to(self.dtype)
        flat = (flat - self._shift) / self._scale
        if self.permutation is not None:
            flat = flat[:, self.permutation]
        return flat.reshape(-1, self.length, self.k)

    def train_indices(self, iteration: int) -> Tensor:
        """Training-set indices of the batch of ``iteration`` (epochs follow one another)."""
        return self._stream.indices(iteration)

    def epoch_order(self, epoch: int) -> Tensor:
        """The order in which epoch ``epoch`` reads the training set (seeded by seed and epoch)."""
        return self._stream.order(epoch)

    def _permutation(self) -> Tensor | None:
        if self.permutation_seed is None:
            return None
        return torch.randperm(self.values, generator=derived_generator(self.permutation_seed, "pixels"))

    def _eval_split(self, images: Tensor, labels: Tensor, size: int | None, what: str) -> list[Batch]:
        index = _subset(images.shape[0], size, what)
        return [
            (self.sequences(images[chunk]), labels[chunk])
            for chunk in index.split(self.eval_batch_size)
        ]


# ---------------------------------------------------------------------------- helpers


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _divisor(k, values: int, name: str) -> int:
    k = check.positive_int("k", k)
    if values % k:
        raise ValueError(f"k={k} pixels per step does not divide the sequence length {values} of a {name} image: "
                         f"set --task-option k=N (task_options.k) to a divisor of {values}")
    return k


def _subset(n: int, size: int | None, what: str) -> Tensor:
    """Sorted indices of a fixed random subset of ``size`` of ``n`` items (all when ``size`` is None)."""
    if size is None:
        return torch.arange(n)
    size = check.positive_int(what, size)
    if size > n:
        split = "test" if what == "test_size" else "training"
        raise ValueError(f"{what}={size} exceeds the {n} {split} images available: set {OPTION[what]} "
                         f"to at most {n}")
    return torch.randperm(n, generator=derived_generator(_SUBSET_SEED, what))[:size].sort().values


def _normalization(data: ImageData, mode: str) -> tuple[Tensor, Tensor]:
    """Per-value shift and scale (float64, length = values per image) mapping raw bytes to inputs."""
    values = math.prod(data.image_shape)
    if mode == "none":
        return torch.zeros(values, dtype=torch.float64), torch.ones(values, dtype=torch.float64)
    if mode == "scale":
        return torch.zeros(values, dtype=torch.float64), torch.full((values,), 255.0, dtype=torch.float64)
    mean, std = channel_stats(data.train_images)
    per_channel = values // mean.numel()
    return (mean * 255).repeat_interleave(per_channel), (std * 255).repeat_interleave(per_channel)


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of uint8 ``images`` scaled to [0, 1], per channel (exact, float64).

    ``(N, H, W)`` has one channel, ``(N, C, H, W)`` has ``C``. Computed from byte histograms,
    so no float copy of the data set is made.
    """
    channels = images if images.dim() == 4 else images[:, None]
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(channels.shape[1]):
        counts = torch.bincount(channels[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * levels).sum() / total
        var = (counts * (levels - mean) ** 2).sum() / total
        if var == 0:
            raise ValueError(f"cannot standardize: channel {c} of the training images is constant")
        means.append(mean)
        stds.append(var.sqrt())
    return torch.stack(means), torch.stack(stds)


# ---------------------------------------------------------------------------- named tasks


def mnist(data_dir: str | os.PathLike | None = None, **options) -> PixelSequenceTask:
    """MNIST, 784 steps at ``k=1`` (files from ``data_dir`` or ``$TARGETPROP_DATA``)."""
    return PixelSequenceTask(load_mnist(data_dir), name="mnist", **options)


def permuted_mnist(data_dir: str | os.PathLike | None = None, *, permutation_seed: int = 0,
                   **options) -> PixelSequenceTask:
    """MNIST with one fixed permutation of the 784 pixels, drawn from ``permutation_seed``."""
    return PixelSequenceTask(load_mnist(data_dir), name="permuted-mnist",
                             permutation_seed=permutation_seed, **options)


def fashion_mnist(data_dir: str | os.PathLike | None = None, **options) -> PixelSequenceTask:
    """Fashion-MNIST, 784 steps at ``k=1`` (default files: the Debian package's folder)."""
    return PixelSequenceTask(load_fashion_mnist(data_dir), name="fashion-mnist", **options)


def cifar10(data_dir: str | os.PathLike | None = None, **options) -> PixelSequenceTask:
    """CIFAR-10 channel by channel, 3072 steps at ``k=1`` (files from ``data_dir`` or ``$TARGETPROP_DATA``)."""
    return PixelSequenceTask(load_cifar10(data_dir), name="cifar10", **options)


IMAGE_TASKS = {
    "mnist": mnist,
    "permuted-mnist": permuted_mnist,
    "fashion-mnist": fashion_mnist,
    "cifar10": cifar10,
}
