"""A run's folder: the one place that names, writes, reads and checks its files.

* ``config.json``: ``{"version", "config": {...every setting...}, "run": {"checkpoint_every": N},
  "environment": {...}}`` (the conditions of the latest session, :mod:`targetprop.training.environment`);
* ``metrics.csv``: one row per evaluation point, flushed row by row
  (:class:`~targetprop.training.metrics.MetricsLog`);
* ``summary.json``: the outcome, written when the run ends however it ends (status in
  :data:`STATUSES`);
* ``checkpoints/``: the checkpoint files (their format is :mod:`targetprop.training.checkpoint`'s);
* ``diagnostics.csv``: ``train --diagnose-every``'s rows (:mod:`targetprop.diagnose`'s format).

Every file is written atomically (:func:`targetprop.training.files.atomic_write`) but the two
logs, which are appended row by row and cut back atomically when a run continues.

What a run does with its folder is decided once, before anything is written (:func:`decide`):
start there (``empty``), continue the same run (``unfinished``: no summary, ``interrupted``, or
``failed`` because a process was lost) from its newest valid checkpoint, or reuse it
(``finished``: ``completed``, ``diverged`` or ``failed``). A run with other settings, or files
that are not a run's, are refused (:class:`~targetprop.training.files.RunFolderError`) unless
the caller overwrites; nothing here deletes a checkpoint or a ``*.corrupt`` file except when
asked to overwrite.

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
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import checkpoint
from .files import RunFolderError, atomic_write
from .metrics import METRICS, MetricsLog

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.csv", "summary.json"
DIAGNOSTICS_FILE, CHECKPOINT_FOLDER = "diagnostics.csv", "checkpoints"
STATUSES = ("completed", "diverged", "failed", "interrupted")
EXIT_CODES = {"completed": 0, "diverged": 3, "failed": 4}
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
    output of ``targetprop compare``) for the runs directly inside it, in name order; a file is
    passed over (``runs/demo/*`` also names ``comparison.md``). A ValueError names a path that
    does not exist or a folder that holds no run, or says that the files given are no runs."""
    runs, files = [], []
    for path in map(Path, paths):
        if is_run(path):
            runs.append(path)
        elif path.is_file():
            files.append(path)
        else:
            inner = sorted(p for p in path.iterdir() if is_run(p)) if path.is_dir() else []
            if not inner:
                raise RunFolderError(f"{path} is not a run directory (no {METRICS_FILE} in it or in its "
                                     f"subdirectories)")
            runs.extend(inner)
    if not runs and files:
        raise RunFolderError(f"no run among {', '.join(map(str, files))}: a run is a folder holding {METRICS_FILE}")
    return runs


def read_config(run: str | Path) -> dict:
    """The settings saved in the run's ``config.json``; a ValueError if ``run`` holds no readable run."""
    path = config_path(run)
    if not path.is_file():
        raise RunFolderError(f"{run} holds no run (no {CONFIG_FILE})")
    saved = (_read_json(path) or {}).get("config")
    if not isinstance(saved, dict):
        raise RunFolderError(f"{path} is unreadable")
    return saved


def read_options(run: str | Path) -> dict:
    """What the run's ``config.json`` records besides the settings: ``checkpoint_every``,
    ``diagnose_every`` and ``threads`` (each absent when not recorded: ``diagnose_every`` when 0)."""
    return _options(_read_json(config_path(run)) or {})


def _options(saved: dict) -> dict:
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


# ---------------------------------------------------------------------------- writing runs


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (:func:`targetprop.training.files.atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n")


def write_config(run: Path, settings: dict, *, checkpoint_every: int, environment: dict,
                 diagnose_every: int = 0) -> None:
    """The run's ``config.json``: the settings, the checkpoint and diagnostics cadences and the
    session's conditions."""
    cadence = {"checkpoint_every": checkpoint_every, **({"diagnose_every": diagnose_every} if diagnose_every else {})}
    write_json(config_path(run), {"version": __version__, "config": settings, "run": cadence,
                                  "environment": environment})


def write_summary(run: Path, summary: dict) -> None:
    """The run's ``summary.json``: its outcome."""
    write_json(summary_path(run), summary)


def remove_summary(run: Path) -> None:
    """Remove the run's ``summary.json`` (a run that goes on has no outcome yet)."""
    summary_path(run).unlink(missing_ok=True)


def open_metrics(run: Path, keep: int | None = None) -> MetricsLog:
    """The run's metrics log: new, or cut back to its first ``keep`` rows to continue it."""
    return MetricsLog(metrics_path(run), keep=keep)


def _read_json(path: Path) -> dict | None:
    """The object in ``path``; None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------- what a folder allows


@dataclass
class Decision:
    """What a run does with its folder, decided once by :func:`decide` (which reads only):

    ``state``: ``empty`` (the run starts at iteration 0 there; with ``overwrite``, replacing
    whatever the folder holds), ``unfinished`` (the same run, continued from its newest valid
    checkpoint) or ``finished`` (the same run, done: reused as it is). ``summary``: the saved
    summary, if any; ``checkpoint``: the iteration of the newest checkpoint file (None if none);
    ``options``: what ``config.json`` records besides the settings (:func:`read_options`).
    """

    path: Path
    state: str
    summary: dict | None = None
    checkpoint: int | None = None
    options: dict = field(default_factory=dict)
    overwrite: bool = False

    def describe(self) -> str:
        """One line saying what the run does with its folder ("" when it starts afresh)."""
        out = self.path
        if self.state == "finished":
            return (f"{out} already holds this run, {self.summary['status']} after {self.summary['iterations']} "
                    f"iterations: nothing to do (--overwrite runs it again)")
        if self.state == "unfinished":
            where = (f"its checkpoint of iteration {self.checkpoint}" if self.checkpoint is not None
                     else "iteration 0 (no checkpoint yet)")
            return f"continuing the unfinished run in {out} from {where} (--overwrite starts it over)"
        return ""


def decide(out: str | Path, settings: dict, *, overwrite: bool = False, resume: bool = False) -> Decision:
    """What a run of ``settings`` does with the folder ``out`` (see :class:`Decision`); reads only.

    Without ``overwrite`` or ``resume``, the same run there is continued or reused, and a
    :class:`RunFolderError` refuses a run with other settings or files that are not a run's. With
    ``resume``, the folder must hold the run, and only the settings in :data:`RESUMABLE` (the
    iteration budget) may differ; the error lists the others.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a directory")
    blocked = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
    if blocked is not None:
        raise RunFolderError(f"output path {out} is under {blocked}, which is a file, not a directory")
    if overwrite:
        return Decision(out, "empty", overwrite=True)
    if not resume and (not out.is_dir() or not any(out.iterdir())):
        return Decision(out, "empty")
    if not config_path(out).exists():
        if resume:
            raise RunFolderError(f"{out} holds no run (no {CONFIG_FILE})")
        raise RunFolderError(f"output directory {out} is not empty and holds no run; "
                             f"use --overwrite to write there anyway, or another output directory")
    saved = _read_json(config_path(out)) or {}
    previous = saved.get("config")
    if resume:
        if not isinstance(previous, dict):
            raise RunFolderError(f"{config_path(out)} is unreadable")
        differs = _differences(previous, settings, ignore=RESUMABLE)
        if differs:
            raise RunFolderError(f"cannot resume {out} with different settings ({', '.join(differs)}); "
                                 f"only {', '.join(RESUMABLE)} may change")
    differs = describe_changes(previous, settings)
    if differs and not resume:
        hint = ("--resume OUT --iterations N changes a run's budget; " if isinstance(previous, dict)
                and not _differences(previous, settings, ignore=RESUMABLE) else "")
        raise RunFolderError(f"output directory {out} holds a run with different settings ({differs}); {hint}"
                             f"use --overwrite to replace it, or another output directory")
    summary = read_summary(out)
    listed = checkpoint.listed(checkpoint_dir(out))
    newest = listed[-1][0] if listed else None
    done = summary is not None and summary["status"] != "interrupted" and not summary.get("lost_ranks")
    return Decision(out, "finished" if done and not resume else "unfinished", summary, newest, _options(saved))


def start(run: Decision) -> None:
    """Make the folder of ``run`` ready for a run starting at iteration 0: create it; remove an
    earlier summary and, when overwriting, the earlier diagnostics and checkpoints."""
    run.path.mkdir(parents=True, exist_ok=True)
    remove_summary(run.path)
    if run.overwrite:
        diagnostics_path(run.path).unlink(missing_ok=True)
        checkpoint.clear(checkpoint_dir(run.path))


def corrupt_files(run: str | Path) -> list[Path]:
    """The checkpoints of ``run`` set aside as ``*.corrupt``."""
    folder = checkpoint_dir(run)
    return sorted(folder.glob("*.corrupt")) if folder.is_dir() else []


# ---------------------------------------------------------------------------- helpers


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
