"""The files of a run directory: writing them, reading them, and what an existing one allows.

This module owns the run directory's files other than the checkpoints (those are
:mod:`targetprop.training.checkpoint`'s) and the rule that progress is never discarded unless asked:

* ``config.json``: ``{"version", "config": {...every setting...}, "run": {"checkpoint_every": N},
  "environment": {...}}`` (the conditions of the latest session, :mod:`targetprop.training.environment`);
* ``metrics.csv``: one row per evaluation point, flushed row by row (:class:`MetricsLog`);
* ``summary.json``: the outcome, written when the run ends however it ends (status in
  :data:`STATUSES`).

What a directory holds for a run of given settings (:func:`inspect`): nothing (``empty``), the
same run ``unfinished`` (no summary, ``interrupted``, or ``failed`` because a process was lost:
it is continued from its newest valid checkpoint) or ``finished`` (``completed``, ``diverged`` or
``failed``: reused as it is). A run with other settings, or files that are not a run's, are
refused (ValueError) unless the caller overwrites; nothing here deletes a checkpoint or a
``*.corrupt`` file except when asked to overwrite.

Reading runs (for tables, plots and experiments): :func:`is_run`, :func:`find_runs`,
:func:`read_config`, :func:`read_options`, :func:`read_summary`, :func:`read_metrics`, and the
paths of a run's files (:func:`metrics_path`, :func:`checkpoint_dir`, …): no other module spells
the files' names.

Exit codes of a run's outcome (:data:`EXIT_CODES`): 0 completed, 3 diverged, 4 failed.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .. import __version__

from . import checkpoint

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.csv", "summary.json"
DIAGNOSTICS_FILE, CHECKPOINT_FOLDER = "diagnostics.csv", "checkpoints"
STATUSES = ("completed", "diverged", "failed", "interrupted")
EXIT_CODES = {"completed": 0, "diverged": 3, "failed": 4}
METRICS = ("iteration", "time", "wall_time", "batch_loss", "train_loss", "train_accuracy",
           "test_loss", "test_accuracy")
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)
RESUMABLE = ("iterations",)  # the settings a resumed run may change


# ---------------------------------------------------------------------------- reading runs


def config_path(run: str | Path) -> Path:
    return Path(run) / CONFIG_FILE


def metrics_path(run: str | Path) -> Path:
    return Path(run) / METRICS_FILE


def summary_path(run: str | Path) -> Path:
    return Path(run) / SUMMARY_FILE


def diagnostics_path(run: str | Path) -> Path:
    """``diagnostics.csv`` (``train --diagnose-every``; :mod:`targetprop.diagnose` writes and reads its rows)."""
    return Path(run) / DIAGNOSTICS_FILE


def checkpoint_dir(run: str | Path) -> Path:
    """Where the checkpoints of ``run`` live (:mod:`targetprop.training.checkpoint` names the files)."""
    return Path(run) / CHECKPOINT_FOLDER


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run's folder: one a run has started in (it holds ``metrics.csv``)."""
    return metrics_path(path).is_file()


def find_runs(paths) -> list[Path]:
    """The runs among ``paths``: a run's folder stands for itself, a folder of runs (e.g. the
    output of ``targetprop compare``) for the runs directly inside it, in name order. A
    ValueError names a path that is neither."""
    runs = []
    for path in map(Path, paths):
        if is_run(path):
            runs.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if is_run(p)) if path.is_dir() else []
        if not inner:
            raise ValueError(f"{path} is not a run directory (no {METRICS_FILE} in it or in its subdirectories)")
        runs.extend(inner)
    return runs


def read_config(run: str | Path) -> dict:
    """The settings saved in the run's ``config.json``; a ValueError if ``run`` holds no readable run."""
    path = config_path(run)
    if not path.is_file():
        raise ValueError(f"{run} holds no run (no {CONFIG_FILE})")
    saved = (_read_json(path) or {}).get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is unreadable")
    return saved


def read_options(run: str | Path) -> dict:
    """What the run's ``config.json`` records besides the settings: ``checkpoint_every``,
    ``diagnose_every`` and ``threads`` (each absent when not recorded, as in runs of targetprop 0.1.0)."""
    saved = _read_json(config_path(run)) or {}
    options = {}
    for key in ("checkpoint_every", "diagnose_every"):
        every = (saved.get("run") or {}).get(key)
        if isinstance(every, int) and not isinstance(every, bool) and every >= 0:
            options[key] = every
    threads = (saved.get("environment") or {}).get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0:
        options["threads"] = threads
    return options


def read_summary(run: str | Path) -> dict | None:
    """The run's ``summary.json``, or None when there is none (yet: the run is going or was
    killed) or it is unreadable."""
    summary = _read_json(summary_path(run))
    return summary if summary is not None and summary.get("status") in STATUSES else None


def read_metrics(run: str | Path) -> dict[str, list[float]]:
    """The columns of the run's ``metrics.csv`` as lists of floats (empty cells become NaN)."""
    with open(metrics_path(run), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows] for k in METRICS}


read_run_config, read_run_options = read_config, read_options  # the earlier names


# ---------------------------------------------------------------------------- writing runs


class MetricsLog:
    """``metrics.csv``: a header, then one row per evaluation point, flushed row by row.

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
        self.rows = keep or 0

    def _cut(self, keep: int) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True) if self.path.is_file() else []
        if not lines or lines[0].rstrip("\r\n") != ",".join(METRICS):
            raise ValueError(f"{self.path} is missing or is not a metrics file (its header is not "
                             f"{','.join(METRICS)})")
        if len(lines) - 1 < keep:
            raise ValueError(f"{self.path} holds {len(lines) - 1} rows, fewer than the {keep} of the checkpoint")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(lines[:keep + 1]), encoding="utf-8", newline="")
        tmp.replace(self.path)

    def append(self, row: dict) -> None:
        self._writer.writerow({k: _csv_value(row[k]) for k in METRICS})
        self._file.flush()
        self.rows += 1

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint counts them)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------- config.json, summary.json


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_config(out: Path, settings: dict, *, checkpoint_every: int, environment: dict,
                 diagnose_every: int = 0) -> None:
    """``out/config.json``: the settings, the checkpoint and diagnostics cadences and the session's
    conditions."""
    run = {"checkpoint_every": checkpoint_every, **({"diagnose_every": diagnose_every} if diagnose_every else {})}
    write_json(out / "config.json", {"version": __version__, "config": settings, "run": run,
                                     "environment": environment})


def _read_json(path: Path) -> dict | None:
    """The object in ``path``; None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------- what a directory allows


@dataclass
class Existing:
    """What :func:`inspect` found: ``state`` (``empty``, ``unfinished``, ``finished``), the saved
    summary (if any) and the iteration of the newest checkpoint file (None if there is none)."""

    state: str
    summary: dict | None = None
    checkpoint: int | None = None

    def describe(self, out: Path) -> str:
        """One line saying what a run of these settings does with ``out``."""
        if self.state == "finished":
            return (f"{out} already holds this run, {self.summary['status']} after {self.summary['iterations']} "
                    f"iterations: nothing to do (--overwrite runs it again)")
        if self.state == "unfinished":
            where = (f"its checkpoint of iteration {self.checkpoint}" if self.checkpoint is not None
                     else "iteration 0 (no checkpoint yet)")
            return f"continuing the unfinished run in {out} from {where} (--overwrite starts it over)"
        return ""


def inspect(out: str | Path, settings: dict) -> Existing:
    """What ``out`` holds for a run of ``settings`` (reads only); a ValueError if it holds a run
    with other settings or files that are not a run's."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return Existing("empty")
    if not (out / "config.json").exists():
        raise ValueError(f"output directory {out} is not empty and holds no run; "
                         f"use --overwrite to write there anyway, or another output directory")
    previous = (_read_json(out / "config.json") or {}).get("config")
    differs = describe_changes(previous, settings)
    if differs:
        hint = ("--resume OUT --iterations N changes a run's budget; " if isinstance(previous, dict)
                and not _differences(previous, settings, ignore=RESUMABLE) else "")
        raise ValueError(f"output directory {out} holds a run with different settings ({differs}); {hint}"
                         f"use --overwrite to replace it, or another output directory")
    summary = read_summary(out)
    listed = checkpoint.listed(checkpoint.checkpoint_dir(out))
    newest = listed[-1][0] if listed else None
    if summary is not None and summary["status"] != "interrupted" and not summary.get("lost_ranks"):
        return Existing("finished", summary, newest)
    return Existing("unfinished", summary, newest)


def check_resume(out: str | Path, settings: dict) -> None:
    """Raise ValueError unless ``settings`` may continue the run in ``out``: the same settings,
    except those in :data:`RESUMABLE` (the iteration budget); the message lists the others."""
    differs = _differences(read_run_config(out), settings, ignore=RESUMABLE)
    if differs:
        raise ValueError(f"cannot resume {out} with different settings ({', '.join(differs)}); "
                         f"only {', '.join(RESUMABLE)} may change")


def prepare(out: Path, *, overwrite: bool) -> None:
    """Make ``out`` ready for a run starting at iteration 0 (checked by :func:`inspect` first):
    create it; with ``overwrite``, remove an earlier run's summary and checkpoints. Without it, a
    directory holding checkpoints (or ``*.corrupt`` files) is refused: they are a run's progress."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    folder = checkpoint.checkpoint_dir(out)
    if overwrite:
        (out / "summary.json").unlink(missing_ok=True)
        (out / "diagnostics.csv").unlink(missing_ok=True)
        checkpoint.clear(folder)
    elif checkpoint.listed(folder) or corrupt_files(out):
        raise ValueError(f"{out} holds a run's checkpoints; continue the run, or use --overwrite to start "
                         f"it over")
    else:
        (out / "summary.json").unlink(missing_ok=True)


def corrupt_files(out: str | Path) -> list[Path]:
    """The checkpoints of ``out`` set aside as ``*.corrupt``."""
    folder = checkpoint.checkpoint_dir(out)
    return sorted(folder.glob("*.corrupt")) if folder.is_dir() else []


# ---------------------------------------------------------------------------- helpers


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def describe_changes(previous, current: dict, ignore=()) -> str:
    """``differs in KEY: OLD → NEW, …`` ("" when nothing but ``ignore`` differs)."""
    if not isinstance(previous, dict):
        return "its config.json is unreadable"
    differs = _differences(previous, current, ignore)
    return "differs in " + ", ".join(differs) if differs else ""


def _differences(previous: dict, current: dict, ignore=()) -> list[str]:
    """``KEY: OLD → NEW`` for every setting that differs, but those in ``ignore``."""
    keys = sorted(k for k in set(previous) | set(current) if k not in ignore and previous.get(k) != current.get(k))
    return [f"{k}: {previous.get(k)!r} → {current.get(k)!r}" for k in keys]
