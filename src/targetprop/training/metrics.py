"""A run's CSV logs, appended row by row: :class:`CsvLog`, and the metrics log (:class:`MetricsLog`).

This module owns how a log's rows are written (LF line ends, flushed row by row), cut back
atomically when a run continues (:func:`targetprop.training.files.atomic_write`) and made
durable, and the metrics log's columns (:data:`METRICS`); where the files live is
:mod:`targetprop.training.rundir`'s.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .files import RunFolderError, atomic_write

METRICS = ("iteration", "time", "wall_time", "batch_loss", "train_loss", "train_accuracy",
           "test_loss", "test_accuracy")
LINE_END = "\n"


class CsvLog:
    """A CSV file of ``columns``: a header, then one row per :meth:`append`, flushed row by row.

    A new log (``keep=None``) writes the header, replacing any file; with ``keep``, the existing
    file is cut back to its header and first ``keep`` rows (a run that continues) and rows are
    appended after them; a missing file is then an error unless ``missing_ok`` (it starts anew).
    """

    def __init__(self, path: str | Path, columns: tuple[str, ...], keep: int | None = None,
                 missing_ok: bool = False):
        self.path, self.columns = Path(path), columns
        header = ",".join(columns) + LINE_END
        if keep is None or missing_ok and not self.path.is_file():
            atomic_write(self.path, header)
        else:
            lines = read_lines(self.path)
            if not lines or lines[0] != header:
                raise RunFolderError(f"{self.path} is missing or is not a log of {','.join(columns)}")
            if len(lines) - 1 < keep:
                raise RunFolderError(f"{self.path} holds {len(lines) - 1} rows, fewer than the {keep} of the "
                                     f"checkpoint")
            atomic_write(self.path, "".join(lines[:keep + 1]))
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, lineterminator=LINE_END)

    def append(self, *rows: dict) -> None:
        self._writer.writerows({k: _csv_value(row[k]) for k in self.columns} for row in rows)
        self._file.flush()

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint counts them)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class MetricsLog(CsvLog):
    """The metrics file: one row of :data:`METRICS` per evaluation point."""

    def __init__(self, path: str | Path, keep: int | None = None):
        super().__init__(path, METRICS, keep)


def read_lines(path: Path) -> list[str]:
    """The lines of a log, each ending in :data:`LINE_END` whatever it ended in ([] if there is none)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [line.rstrip("\r\n") + LINE_END for line in f]
    except FileNotFoundError:
        return []


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a log as dicts of strings ([] if there is none)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value
