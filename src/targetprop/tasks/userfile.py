"""The task ``file``: sequence classification on a user's own data, read from one ``.npz`` or ``.pt`` file.

This module owns reading and checking such a file; batching and normalization are
:mod:`targetprop.tasks.sequences`' (the same as for the UEA/UCR tasks). Use it as
``targetprop train --task file --task-option path=DATA.npz`` (or ``task = "file"`` with
``[task_options] path = "DATA.npz"`` in a settings or experiment file).

The file holds, by key:

* ``x``: the series, either one array ``(N, T, d)`` (``(N, T)`` is read as ``d = 1``) or, in a
  ``.pt`` file, a list of ``N`` arrays ``(T_i, d)`` (or ``(T_i,)``) of their own lengths;
* ``y``: ``N`` integer class labels in ``0 … C−1`` (``C`` is the largest label of both splits + 1);
* ``lengths`` (optional, with an array ``x``): each series' length, ``1 ≤ lengths[i] ≤ T``; the
  steps after it are padding and are never read (they may hold anything, NaN included);
* ``x_test``, ``y_test``, ``lengths_test`` (optional): a test split, written as ``x``, ``y``,
  ``lengths``. Without it, a seeded fraction ``test_fraction`` (default 0.2) of the series is
  held out, drawn from ``split_seed`` (default 0, the same for every run whatever its seed).

A ``.npz`` file is read without pickles (``numpy.load(allow_pickle=False)``), so it cannot hold a
list of arrays of different lengths: pad them into one ``x`` and give ``lengths``. A ``.pt`` file
is read with ``torch.load(weights_only=True)``: a dict of tensors (or lists of tensors). Every
problem (a missing or unknown key, a wrong shape, NaN or inf in a series, labels that are not
integers or are negative, a length out of range, too few series to split) is a one-line
:class:`~targetprop.tasks.datasets.DatasetError` (a ValueError) naming the file and the key.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .datasets import DatasetError
from .seeding import derived_generator
from .sequences import SequenceData, SequenceTask

KEYS = ("x", "y", "lengths", "x_test", "y_test", "lengths_test")


def load_file(path: str | os.PathLike, *, test_fraction: float = 0.2, split_seed: int = 0,
              name: str = "file") -> SequenceData:
    """The two splits of the user's file at ``path`` (see the module docstring)."""
    path = Path(path)
    arrays = _read(path)
    fail = lambda message: DatasetError(f"{path}: {message}")  # noqa: E731
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}; a file holds {', '.join(KEYS)}")
    for key in ("x", "y"):
        if key not in arrays:
            raise fail(f"missing key {key!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise fail("x_test and y_test go together: give both or neither")
    for key in ("lengths", "lengths_test"):
        if key in arrays and f"x{key[7:]}" not in arrays:
            raise fail(f"{key} without x{key[7:]}")
    train, train_labels = _split(fail, arrays, "")
    if "x_test" in arrays:
        test, test_labels = _split(fail, arrays, "_test")
        if test[0].shape[1] != train[0].shape[1]:
            raise fail(f"x_test has {test[0].shape[1]} feature(s) per step, x has {train[0].shape[1]}")
    else:
        train, train_labels, test, test_labels = _held_out(fail, train, train_labels, test_fraction, split_seed)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    return SequenceData(name, train, train_labels, test, test_labels, classes)


def file_task(path: str | os.PathLike | None = None, *, test_fraction: float = 0.2, split_seed: int = 0,
              seed: int = 0, batch_size: int = 16, test_size: int | None = None, train_eval_size: int | None = None,
              eval_batch_size: int = 256, normalize: str = "standardize") -> SequenceTask:
    """The ``file`` task on the data in ``path`` (required: ``--task-option path=FILE``)."""
    if path is None or path == "":
        raise ValueError("task 'file' needs the data file: --task-option path=FILE.npz|FILE.pt "
                         "(task_options.path); docs/DATA.md says what it holds")
    data = load_file(Path(str(path)), test_fraction=test_fraction, split_seed=split_seed)
    return SequenceTask(data, seed=seed, batch_size=batch_size, test_size=test_size,
                        train_eval_size=train_eval_size, eval_batch_size=eval_batch_size, normalize=normalize)


# ----------------------------------------------------------------------------- reading


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: _numpy(path, key, npz) for key in npz.files}
        except (OSError, ValueError, EOFError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{path}: not a readable .npz file ({' '.join(str(err).split())})") from None
    if suffix == ".pt":
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (pickle errors of every kind)
            raise DatasetError(f"{path}: not a readable .pt file of tensors "
                               f"({' '.join(str(err).split())[:200]})") from None
        if not isinstance(content, dict) or not all(isinstance(k, str) for k in content):
            raise DatasetError(f"{path}: a .pt data file must hold a dict keyed by name (x, y, ...), "
                               f"got {type(content).__name__}")
        return content
    raise DatasetError(f"{path}: the data file must end in .npz or .pt")


def _numpy(path: Path, key: str, npz) -> Tensor:
    try:
        array = npz[key]
    except ValueError:  # an object array needs pickles
        raise DatasetError(f"{path}: key {key!r} is an object array (a list of arrays of different lengths?); "
                           "a .npz file must hold plain arrays: pad x and give lengths, or use a .pt file") from None
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: key {key!r} has dtype {array.dtype}, not numbers")
    return torch.from_numpy(array.copy())


def _split(fail, arrays: dict, suffix: str) -> tuple[list[Tensor], Tensor]:
    """The series and labels of one split (``suffix``: ``""`` or ``"_test"``), checked."""
    xk, yk, lk = f"x{suffix}", f"y{suffix}", f"lengths{suffix}"
    series = _series(fail, xk, arrays[xk], arrays.get(lk), lk)
    labels = _labels(fail, yk, arrays[yk], len(series))
    return series, labels


def _series(fail, key: str, x, lengths, lkey: str) -> list[Tensor]:
    if isinstance(x, (list, tuple)):
        if not x:
            raise fail(f"{key} is an empty list")
        items = []
        for i, item in enumerate(x):
            if not isinstance(item, Tensor) or item.dim() not in (1, 2) or item.shape[0] == 0:
                what = f"shape {tuple(item.shape)}" if isinstance(item, Tensor) else type(item).__name__
                raise fail(f"{key}[{i}] must be a non-empty (T_i, d) or (T_i,) tensor, got {what}")
            items.append(item[:, None] if item.dim() == 1 else item)
        widths = {item.shape[1] for item in items}
        if len(widths) > 1:
            raise fail(f"the series of {key} have different feature counts {sorted(widths)}")
        if lengths is not None:
            got = _integers(fail, lkey, lengths, len(items))
            if got.tolist() != [item.shape[0] for item in items]:
                raise fail(f"{lkey} disagrees with the lengths of the series in the list {key}")
    else:
        if not isinstance(x, Tensor) or x.dim() not in (2, 3):
            what = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise fail(f"{key} must be an array (N, T, d) or (N, T), or a list of (T_i, d) arrays; got {what}")
        x = x[..., None] if x.dim() == 2 else x
        n, t = x.shape[:2]
        if n == 0 or t == 0 or x.shape[2] == 0:
            raise fail(f"{key} is empty (shape {tuple(x.shape)})")
        if lengths is None:
            items = list(x)
        else:
            got = _integers(fail, lkey, lengths, n)
            bad = ((got < 1) | (got > t)).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise fail(f"{lkey}[{i}] = {int(got[i])} is out of range: lengths must lie in 1..{t} (T of {key})")
            items = [x[i, :length] for i, length in enumerate(got.tolist())]
    for i, item in enumerate(items):
        if not item.is_floating_point() and item.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                              torch.uint8):
            raise fail(f"{key} has dtype {item.dtype}, not numbers")
        item = item.double()
        if not bool(torch.isfinite(item).all()):
            step = int((~torch.isfinite(item)).any(1).nonzero()[0])
            raise fail(f"{key}: series {i} holds NaN or inf (at step {step}); missing values are not supported "
                       f"in a user's file: fill them first")
        items[i] = item
    return items


def _integers(fail, key: str, value, n: int) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 1:
        what = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise fail(f"{key} must be a 1-D array of {n} integers, got {what}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise fail(f"{key} must hold integers, got dtype {value.dtype}")
    if value.shape[0] != n:
        raise fail(f"{key} has {value.shape[0]} entries for {n} series")
    return value.long()


def _labels(fail, key: str, y, n: int) -> Tensor:
    labels = _integers(fail, key, y, n)
    if bool((labels < 0).any()):
        i = int((labels < 0).nonzero()[0])
        raise fail(f"{key}[{i}] = {int(labels[i])}: class labels must be integers 0, 1, ..., C-1")
    return labels


def _held_out(fail, series: list[Tensor], labels: Tensor, fraction: float, seed: int):
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"split_seed must be a non-negative integer, got {seed!r}")
    n = len(series)
    n_test = round(n * fraction)
    if n_test < 1 or n_test >= n:
        raise fail(f"{n} series cannot be split at test_fraction={fraction:g} into a non-empty training and test "
                   "split: give more series, another test_fraction, or x_test and y_test")
    order = torch.randperm(n, generator=derived_generator(seed, "file-split"))
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    return ([series[i] for i in train.tolist()], labels[train], [series[i] for i in test.tolist()], labels[test])


FILE_TASKS = {"file": file_task}
