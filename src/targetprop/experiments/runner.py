"""Run or reuse: the one way ``compare``, ``reproduce`` and ``tune`` turn settings into runs.

This module owns, for a list of runs (:class:`Job`: settings and a folder), deciding what each
does with its folder before any run starts (:func:`check_jobs`, once per run), then per run:
reuse a finished run with the same settings as it is (nothing is built or trained), continue an
unfinished one from its newest checkpoint, start an empty one, and refuse a folder holding other
settings unless ``overwrite`` (which starts the run over). It also owns grids of runs
(:func:`grid_jobs`, :func:`run_cells`) and the selection in each cell, by default by the area
under the training-loss curve (:data:`targetprop.experiments.reports.SELECTIONS`). Training is
:class:`targetprop.training.trainer.Trainer`'s; the run folder is
:mod:`targetprop.training.rundir`'s. What happens to each run is logged (logger
``targetprop.experiments.runner``, level INFO): the commands print it.
"""
from __future__ import annotations

import json
import logging
import math
import signal
from dataclasses import dataclass
from pathlib import Path

from ..training import rundir, threads
from ..training.config import TrainConfig
from ..training.build import build_task
from ..training.trainer import Trainer
from . import specs
from .reports import SELECTIONS, Selection, late_accuracy, loss_auc, select, summary_line

log = logging.getLogger(__name__)

TASK_KEYS = ("task", "length", "batch_size", "test_size", "task_options", "seed", "dtype")
_TASKS: dict[str, object] = {}


class Stopped(Exception):
    """A run was interrupted (SIGINT/SIGTERM): the whole experiment stops; ``code`` is the exit
    code (128 + the signal)."""

    def __init__(self, out: Path, code: int):
        super().__init__(f"interrupted during {out}; the same command continues")
        self.code = code


class RunRefused(ValueError):
    """The settings of a run passed validation but its model or data cannot be built (the
    message names the run's folder)."""


@dataclass
class Job:
    """One run of an experiment: its settings, its folder and, once checked, what the run does
    with the folder (:class:`targetprop.training.rundir.Decision`)."""

    config: TrainConfig
    out: Path
    decision: rundir.Decision | None = None


def task_for(config: TrainConfig):
    """The config's task, shared between runs with the same task settings (a grid loads its images
    once; tasks serve batches as pure functions of the seed and the iteration)."""
    key = json.dumps({k: getattr(config, k) for k in TASK_KEYS}, sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS.clear()  # hold one data set at a time
        _TASKS[key] = build_task(config)
    return _TASKS[key]


def check_jobs(jobs: list[Job], overwrite: bool = False) -> list[Job]:
    """Decide what every job does with its folder before any run starts
    (:func:`targetprop.training.rundir.decide`, which reads only): a
    :class:`~targetprop.training.files.RunFolderError` (a ValueError) names the first folder that
    holds a run with other settings or files that are not a run's (with ``overwrite``: only a
    folder path that is a file). Returns ``jobs`` with ``decision`` filled in."""
    for job in jobs:
        job.decision = rundir.decide(job.out, job.config.to_dict(), overwrite=overwrite)
    return jobs


def run_job(job: Job, *, progress: bool = False) -> dict:
    """Run or reuse one checked job (see the module docstring); return its summary. Raises
    :class:`Stopped` when the run was interrupted, :class:`RunRefused` when its trainer cannot be built."""
    if job.decision.state != "empty":
        log.info(job.decision.describe())
    if job.decision.state == "finished":
        return job.decision.summary
    try:
        task = task_for(job.config)
        trainer = Trainer(job.config, task)
    except ValueError as err:  # missing data, or a layer option the layer does not take
        raise RunRefused(f"{job.out}: {err}") from None
    threads.apply(task, job.config)
    summary = trainer.run(decision=job.decision, progress=progress)
    log.info(summary_line(job.out, summary))
    if summary["status"] == "interrupted":  # Ctrl-C or SIGTERM: stop the whole experiment, not one run
        raise Stopped(job.out, 128 + signal.Signals[summary.get("signal", "SIGINT")])
    return summary


# ---------------------------------------------------------------------------- grids


def grid_jobs(base: dict, grid: dict, out: Path) -> dict[tuple, list[Job]]:
    """Per cell ``(x, y)``: one job per setting of ``[grid.select]``, in ``out/CELL``."""
    cells = {}
    for x, y in specs.grid_cells(grid):
        cells[(x, y)] = []
        for extra in specs.select_settings(grid):
            values = specs.set_value(base, grid["x"], x)
            values = specs.set_value(values, grid["y"], y) if y is not None else values
            for key, value in extra.items():
                values = specs.set_value(values, key, value)
            name = specs.cell_name(grid, x, y, extra)
            values["label"] = f"{base.get('label', 'run')} {name}"
            cells[(x, y)].append(Job(TrainConfig.from_dict(values), out / name.replace("/", "_")))
    return cells


def run_cells(jobs: dict[tuple, list[Job]], *, progress: bool = False,
              selection: Selection = SELECTIONS["loss-auc"]) -> dict:
    """Run the checked jobs of :func:`grid_jobs`; per cell the run of ``[grid.select]`` that
    ``selection`` picks (by default the smallest area). Returns ``{(x, y): {"auc", "accuracy",
    "late_accuracy", "run", "status"}}`` of the selected run (auc ``inf``, run None, accuracies None
    when the cell has none: every run of it diverged or failed; ``accuracy``: the final one)."""
    cells = {}
    for key, cell in jobs.items():
        summaries = {job.out: run_job(job, progress=progress) for job in cell}
        best = select({run: run for run in summaries}, selection)
        cells[key] = {"auc": loss_auc(best) if best else math.inf, "run": best,
                      "accuracy": summaries[best]["final_test_accuracy"] if best else None,
                      "late_accuracy": late_accuracy(best) if best else None,
                      "status": summaries[best]["status"] if best else "diverged"}
    return cells
