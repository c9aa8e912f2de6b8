"""``train --diagnose-every``: :func:`targetprop.diagnose.diagnose` during a run, and its log.

This module owns the diagnosis of a run's model on the fixed batch of iteration 0 without
touching any random stream (:func:`diagnose_run`), and the run's ``diagnostics.csv``
(:class:`DiagnosticsLog`: one row of :data:`COLUMNS` per rule per diagnosed iteration, written
through :class:`~targetprop.training.metrics.CsvLog`, so that a continued run cuts it back
atomically to its checkpoint's past); :func:`read` reads it back (``targetprop plot``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import diagnose
from .build import to_run
from .distributed import cuda_devices
from .metrics import CsvLog, read_rows

#: columns of a run's ``diagnostics.csv`` (one row per rule per diagnosed iteration)
COLUMNS = ("iteration", "rule", "cosine_whh", "norm_ratio_whh", "horizon_1e-6", "horizon_zero",
           "last_step_share", "last10_share")


def diagnose_run(trainer) -> dict:
    """The diagnostics of ``trainer``'s model on the batch of iteration 0 (its own rule, the
    through-time variant and bp); every random stream is left as it was."""
    x, y = to_run(trainer.task.train_batch(0), trainer.dtype, trainer.device)
    with torch.random.fork_rng(devices=cuda_devices(trainer.device)):
        return diagnose.diagnose(trainer.model, x, y, trainer.loss_fn, diagnose.default_rules(trainer.config.rule))


def rows(iteration: int, result: dict) -> list[dict]:
    """The ``diagnostics.csv`` rows of one :func:`~targetprop.diagnose.diagnose` result (W_hh's
    cosine and norm ratio)."""
    out = []
    for name, cosines in result["cosine_with_bp"].items():
        h = result["horizon"][name]
        out.append({"iteration": iteration, "rule": name, "cosine_whh": cosines["weight_hh_l0"],
                    "norm_ratio_whh": result["norm_ratio"][name]["weight_hh_l0"], "horizon_1e-6": h["1e-6"],
                    "horizon_zero": h["zero"], "last_step_share": result["last_step_share"][name],
                    "last10_share": result["last10_share"][name]})
    return out


class DiagnosticsLog:
    """A run's ``diagnostics.csv``, appended row by row; opened to continue a run from its
    checkpoint of ``iteration``, it keeps the rows up to that iteration (the checkpoint's past)."""

    def __init__(self, path: str | Path, iteration: int | None = None):
        keep = None if iteration is None else sum(int(r["iteration"]) <= iteration for r in read(path))
        self._log = CsvLog(path, COLUMNS, keep=keep, missing_ok=True)

    def append(self, iteration: int, result: dict) -> None:
        self._log.append(*rows(iteration, result))

    def close(self) -> None:
        self._log.close()


def read(path: str | Path) -> list[dict]:
    """The rows of a ``diagnostics.csv`` (empty if there is none), values as strings."""
    return read_rows(path)
