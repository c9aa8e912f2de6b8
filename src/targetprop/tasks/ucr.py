"""The UEA/UCR archive's series as tasks: ``ucr-japanese-vowels``, ``ucr-acsf1``, ``ucr-osuleaf``,
``ucr-plaid``, ``ucr-basic-motions``, ``ucr-gunpoint``, ``ucr-arrowhead``.

This module owns which archive data set each task reads and loading a data set's two ``.ts``
files (``<data_dir>/ucr/NAME/NAME_TRAIN.ts`` and ``NAME_TEST.ts``, put there by ``targetprop
data fetch ucr``; the folder rules are :func:`~targetprop.tasks.datasets.search_dirs`'). The
archive's own train/test split is used; parsing is :mod:`targetprop.tasks.tsfile`'s, batching
and normalization :mod:`targetprop.tasks.sequences`'. Where each data set comes from and how to
cite it: docs/DATA.md.

=====================  ==============  ===  =========  =======  =========  ======
task                   data set        d    length     classes  train      test
=====================  ==============  ===  =========  =======  =========  ======
ucr-japanese-vowels    JapaneseVowels  12   7–29       9        270        370
ucr-acsf1              ACSF1           1    1460       10       100        100
ucr-osuleaf            OSULeaf         1    427        6        200        242
ucr-plaid              PLAID           1    100–1344   11       537        537
ucr-basic-motions      BasicMotions    6    100        4        40         40
ucr-gunpoint           GunPoint        1    150        2        50         150
ucr-arrowhead          ArrowHead       1    251        3        36         175
=====================  ==============  ===  =========  =======  =========  ======
"""
from __future__ import annotations

import os

from .datasets import DatasetError, UCR_SETS, _first_dir_with
from .sequences import SequenceData, SequenceTask
from .tsfile import read_ts

#: Task name -> the archive's name of its data set.
UCR_TASKS_SETS = {
    "ucr-japanese-vowels": "JapaneseVowels",
    "ucr-acsf1": "ACSF1",
    "ucr-osuleaf": "OSULeaf",
    "ucr-plaid": "PLAID",
    "ucr-basic-motions": "BasicMotions",
    "ucr-gunpoint": "GunPoint",
    "ucr-arrowhead": "ArrowHead",
}
assert sorted(UCR_TASKS_SETS.values()) == sorted(UCR_SETS)


def load_ucr(name: str, data_dir: str | os.PathLike | None = None, *, task: str | None = None) -> SequenceData:
    """The two splits of archive data set ``name`` (e.g. ``"JapaneseVowels"``); a DatasetError
    (a ValueError) when a file is missing, malformed, or the splits disagree."""
    if name not in UCR_SETS:
        raise ValueError(f"unknown UCR data set {name!r}; known: {', '.join(UCR_SETS)}")
    folder = _first_dir_with(f"ucr:{name}", data_dir, (f"{name}_TRAIN.ts",))
    train, test = read_ts(folder / f"{name}_TRAIN.ts"), read_ts(folder / f"{name}_TEST.ts")
    if train.dimensions != test.dimensions:
        raise DatasetError(f"{test.path}: {test.dimensions} dimension(s), but {train.path} has {train.dimensions}")
    if train.classes != test.classes:
        raise DatasetError(f"{test.path}: class labels {' '.join(test.classes)}, but {train.path} declares "
                           f"{' '.join(train.classes)}")
    return SequenceData(task or name, train.series, train.labels, test.series, test.labels,
                        len(train.classes), train.classes)


def ucr_task(task: str, data_dir: str | os.PathLike | None = None, **options) -> SequenceTask:
    """The task ``task`` (a key of :data:`UCR_TASKS_SETS`); ``options`` as
    :class:`~targetprop.tasks.sequences.SequenceTask` takes them (``seed``, ``batch_size``,
    ``test_size``, ``train_eval_size``, ``eval_batch_size``, ``normalize``)."""
    return SequenceTask(load_ucr(UCR_TASKS_SETS[task], data_dir, task=task), **options)


def _factory(task: str):
    def make(data_dir: str | os.PathLike | None = None, *, seed: int = 0, batch_size: int = 16,
             test_size: int | None = None, train_eval_size: int | None = None, eval_batch_size: int = 256,
             normalize: str = "standardize") -> SequenceTask:
        return ucr_task(task, data_dir, seed=seed, batch_size=batch_size, test_size=test_size,
                        train_eval_size=train_eval_size, eval_batch_size=eval_batch_size, normalize=normalize)

    make.__name__ = make.__qualname__ = task.replace("-", "_")
    make.__doc__ = f"UCR/UEA {UCR_TASKS_SETS[task]} (files from ``data_dir`` or ``$TARGETPROP_DATA``, in ucr/)."
    return make


UCR_TASKS = {task: _factory(task) for task in UCR_TASKS_SETS}
