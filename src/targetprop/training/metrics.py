"""The metrics log of a run: one CSV row per evaluation point, flushed row by row (:class:`MetricsLog`).

This module owns the columns (:data:`METRICS`) and how rows are written, cut back and made
durable; where the file lives is :mod:`targetprop.training.rundir`'s.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .files import RunFolderError, atomic_write

METRICS = ("iteration", "time", "wall_time", "batch_loss", "train_loss", "train_accuracy",
           "test_loss", "test_accuracy")


class MetricsLog:
    """The metrics file: a header, then one row per evaluation point, flushed row by row.

    A new log writes the header (replacing any file); with ``keep``, the existing file is cut
    back to its header and first ``keep`` rows (a resumed run), and rows are appended after them.
    """

    def __init__(self, path: Path, keep: int | None = None):
        self.path = Path(path)
        if keep is None:
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=METRICS).writeheader()
        else:
            self._cut(keep)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=METRICS)

    def _cut(self, keep: int) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True) if self.path.is_file() else []
        if not lines or lines[0].rstrip("\r\n") != ",".join(METRICS):
            raise RunFolderError(f"{self.path} is missing or is not a metrics file (its header is not "
                             f"{','.join(METRICS)})")
        if len(lines) - 1 < keep:
            raise RunFolderError(f"{self.path} holds {len(lines) - 1} rows, fewer than the {keep} of the checkpoint")
        atomic_write(self.path, "".join(lines[:keep + 1]))

    def append(self, row: dict) -> None:
        self._writer.writerow({k: _csv_value(row[k]) for k in METRICS})
        self._file.flush()

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint counts them)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value
