"""The ``.ts`` time-series format of the UEA/UCR archive (and sktime): reading one file.

This module owns parsing and checking a ``.ts`` file; which files exist and where they come
from is :mod:`targetprop.tasks.ucr`'s, turning series into batches :mod:`targetprop.tasks.sequences`'.

A file is a header, then ``@data``, then one case (series) per line. Lines starting with ``#``
are comments and blank lines are skipped, anywhere. Header keys (case-insensitive, each at most
once):

* ``@problemName NAME`` (required), ``@univariate true|false`` (required), ``@classLabel true
  LABEL…`` (required: the class labels, in the order that gives their indices 0, 1, …; ``false``
  is refused, as is ``@targetLabel``: only classification is read);
* ``@timeStamps true|false`` (only ``false`` is read: time-stamped values are refused),
  ``@missing true|false``, ``@dimensions N``, ``@equalLength true|false``, ``@seriesLength N``.

A case is its dimensions separated by ``:``, each a comma-separated list of numbers, then ``:``
and the class label. Every dimension of a case has the same number of values (its length).
The checks: a univariate file has one dimension per case, and with ``@dimensions N`` every case
has ``N``, else every case as many as the first; with ``@equalLength true`` every case has the
same length, ``@seriesLength N`` when given. Missing values: ``?`` reads as NaN (what a task does
with them is its rule); in a file that declares ``@missing false`` a ``?`` is an error. Anything
else that is not a number, an unknown key, a label not declared, or no case at all is a
:class:`~targetprop.tasks.datasets.DatasetError` (a ValueError) naming the file and the line.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .datasets import DatasetError

_BOOLEAN_KEYS = ("timestamps", "missing", "univariate", "equallength")
_INTEGER_KEYS = ("dimensions", "serieslength")
_KEYS = ("problemname", *_BOOLEAN_KEYS, *_INTEGER_KEYS, "classlabel")
_REQUIRED = ("problemname", "univariate", "classlabel")


@dataclass(frozen=True)
class TSFile:
    """A ``.ts`` file's cases: ``series[i]`` is ``(T_i, d)`` float64 (NaN where a value is
    missing), ``labels[i]`` its class index into ``classes`` (int64)."""

    path: Path
    problem: str
    series: list[Tensor]
    labels: Tensor
    classes: tuple[str, ...]

    @property
    def dimensions(self) -> int:
        return self.series[0].shape[1]

    @property
    def lengths(self) -> list[int]:
        return [s.shape[0] for s in self.series]


def read_ts(path: str | os.PathLike) -> TSFile:
    """Read and check the ``.ts`` file at ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"missing data file: expected {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: unreadable ({err})") from None
    return _Parser(path).parse(text.splitlines())


class _Parser:
    def __init__(self, path: Path):
        self.path = path
        self.header: dict[str, object] = {}
        self.series: list[Tensor] = []
        self.labels: list[int] = []

    def fail(self, line: int, message: str) -> DatasetError:
        return DatasetError(f"{self.path}, line {line}: {message}")

    def parse(self, lines: list[str]) -> TSFile:
        data_line = None
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if data_line is None:
                if not line.startswith("@"):
                    raise self.fail(number, f"expected a header line (@key value) or @data before the cases, "
                                            f"got {line[:40]!r}")
                if line.lower() == "@data":
                    self._check_header(number)
                    data_line = number
                else:
                    self._header_line(number, line)
            elif line.startswith("@"):
                raise self.fail(number, f"header line {line.split()[0]!r} after @data")
            else:
                self._case(number, line)
        if data_line is None:
            raise DatasetError(f"{self.path}: no @data line (is it a .ts file?)")
        if not self.series:
            raise self.fail(data_line, "no case after @data")
        return TSFile(self.path, str(self.header["problemname"]), self.series,
                      torch.tensor(self.labels, dtype=torch.int64), self.header["classlabel"])

    # ------------------------------------------------------------------ header

    def _header_line(self, number: int, line: str) -> None:
        key, _, value = line[1:].partition(" ")
        key, value = key.lower(), value.strip()
        if key == "targetlabel":
            raise self.fail(number, "@targetLabel (a regression file) is not supported: only classification "
                                    "(@classLabel true ...)")
        if key not in _KEYS:
            raise self.fail(number, f"unknown header key @{line[1:].split()[0]}")
        if key in self.header:
            raise self.fail(number, f"@{line[1:].split()[0]} given twice")
        if key in _BOOLEAN_KEYS:
            self.header[key] = self._boolean(number, key, value)
        elif key in _INTEGER_KEYS:
            if not value.isdigit() or int(value) == 0:
                raise self.fail(number, f"@{key} must be a positive integer, got {value!r}")
            self.header[key] = int(value)
        elif key == "classlabel":
            words = value.split()
            if not words or words[0].lower() not in ("true", "false"):
                raise self.fail(number, f"@classLabel must be 'true LABEL...' or 'false', got {value!r}")
            if words[0].lower() == "false":
                raise self.fail(number, "@classLabel false: only classification files (with class labels) "
                                        "are supported")
            classes = tuple(words[1:])
            if not classes:
                raise self.fail(number, "@classLabel true names no label")
            if len(set(classes)) != len(classes):
                raise self.fail(number, "@classLabel names a label twice")
            self.header[key] = classes
        else:  # problemname
            if not value:
                raise self.fail(number, "@problemName has no name")
            self.header[key] = value
        if key == "timestamps" and self.header[key]:
            raise self.fail(number, "@timeStamps true (time-stamped values) is not supported")

    def _boolean(self, number: int, key: str, value: str) -> bool:
        if value.lower() not in ("true", "false"):
            raise self.fail(number, f"@{key} must be true or false, got {value!r}")
        return value.lower() == "true"

    def _check_header(self, number: int) -> None:
        missing = [k for k in _REQUIRED if k not in self.header]
        if missing:
            names = {"problemname": "@problemName", "univariate": "@univariate", "classlabel": "@classLabel"}
            raise self.fail(number, f"@data before the required header key(s) {', '.join(names[k] for k in missing)}")
        if self.header["univariate"] and self.header.get("dimensions", 1) != 1:
            raise self.fail(number, f"@univariate true with @dimensions {self.header['dimensions']}")

    # ------------------------------------------------------------------ cases

    def _case(self, number: int, line: str) -> None:
        *fields, label = line.split(":")
        if not fields:
            raise self.fail(number, "a case needs its values, ':' and its class label")
        classes = self.header["classlabel"]
        if label.strip() not in classes:
            raise self.fail(number, f"class label {label.strip()!r} is not one of @classLabel's "
                                    f"({' '.join(classes)})")
        expected = 1 if self.header["univariate"] else self.header.get("dimensions")
        if expected is None and self.series:
            expected = self.series[0].shape[1]
        if expected is not None and len(fields) != expected:
            raise self.fail(number, f"{len(fields)} dimension(s), expected {expected}")
        channels = [self._values(number, i, field) for i, field in enumerate(fields, 1)]
        length = len(channels[0])
        for i, channel in enumerate(channels[1:], 2):
            if len(channel) != length:
                raise self.fail(number, f"dimension {i} has {len(channel)} values, dimension 1 has {length}")
        if self.header.get("equallength"):
            want = self.header.get("serieslength", self.series[0].shape[0] if self.series else length)
            if length != want:
                raise self.fail(number, f"length {length}, but the file declares equal lengths of {want}")
        self.series.append(torch.tensor(channels, dtype=torch.float64).T.contiguous())
        self.labels.append(classes.index(label.strip()))

    def _values(self, number: int, dim: int, field: str) -> list[float]:
        if not field.strip():
            raise self.fail(number, f"dimension {dim} has no values")
        values = []
        for word in field.split(","):
            word = word.strip()
            if not word:
                raise self.fail(number, f"dimension {dim}: an empty value (two commas in a row, or one at an end)")
            if word == "?":
                if self.header.get("missing") is False:
                    raise self.fail(number, f"missing value '?' in dimension {dim}, but the file declares "
                                            "@missing false")
                values.append(math.nan)
                continue
            try:
                value = float(word)
            except ValueError:
                raise self.fail(number, f"dimension {dim}: {word[:20]!r} is not a number") from None
            if not math.isfinite(value):
                raise self.fail(number, f"dimension {dim}: {word!r} is not finite (write '?' for a missing value)")
            values.append(value)
        return values
