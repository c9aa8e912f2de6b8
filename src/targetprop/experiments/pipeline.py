"""An experiment file from settings to runs, rows and a picture: what ``compare`` and
``reproduce`` both do.

This module owns one file's methods as runs in a folder, first checked (:func:`plan`: a
``curves`` file one run per method in ``OUT/METHOD``, or per method and seed in
``OUT/METHOD-seedN``, a ``grid`` file one folder of cells per method), then run or reused
(:func:`execute`), its picture (:func:`draw`), and a figure panel end to end
(:func:`plan_panel`, :func:`reproduce`: runs, PNG, rows appended to ``results.md``).
The files are :mod:`~targetprop.experiments.specs`'; running or reusing each run is
:mod:`~targetprop.experiments.runner`'s; rows are :mod:`~targetprop.experiments.reports`'. What
it does is logged (logger ``targetprop.experiments.pipeline``, level INFO): the commands print it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..tasks.datasets import DatasetError
from ..tasks.registry import task_options
from ..training import rundir
from . import reports, specs
from .runner import Job, check_jobs, grid_jobs, run_cells, run_job, task_for

log = logging.getLogger(__name__)


@dataclass
class Planned:
    """An experiment file's runs, checked and not yet run (:func:`plan`): per method, a
    ``curves`` file's :class:`~targetprop.experiments.runner.Job`, a ``grid`` file's jobs per cell;
    over seeds, per method and seed a ``curves`` file's job (named ``METHOD seed N``), grouped
    per method in ``seeds``."""

    table: dict
    budget: str | None
    out: Path
    jobs: dict = field(default_factory=dict)
    label: str = ""  # reproduce: the budget as the results table names it
    seeds: dict[str, list[str]] = field(default_factory=dict)  # over seeds: per method, its jobs' names


@dataclass
class Outcome:
    """What :func:`execute` ran: ``rows`` (a row's name and its run folder, None for a grid cell
    where every run diverged), ``summaries`` (per row name; grid cells: the selected run's status
    only), for a grid, ``cells`` per method (see :func:`~targetprop.experiments.runner.run_cells`)
    and, over seeds, ``seeds``: per method, its runs."""

    rows: list[tuple[str, Path | None]] = field(default_factory=list)
    summaries: dict[str, dict] = field(default_factory=dict)
    cells: dict[str, dict] = field(default_factory=dict)
    seeds: dict[str, list[Path]] = field(default_factory=dict)

    def table_rows(self) -> list[tuple[str, Path | list[Path] | None]]:
        """The rows of the results table: every row, and over seeds after each method's seeds its
        mean (``METHOD mean``, the list of its runs: :func:`~targetprop.experiments.reports.mean_cells`)."""
        if not self.seeds:
            return list(self.rows)
        rows = []
        for method, runs in self.seeds.items():
            rows += [(name, run) for name, run in self.rows if run in runs]
            rows.append((f"{method} mean", runs))
        return rows


def plan(table: dict, budget: str | None, out: Path, *, overrides: dict | None = None, methods=None,
         seeds: list[int] | None = None, overwrite: bool = False) -> Planned:
    """The runs of an experiment file's methods (all, or ``methods`` in that order) in ``out``,
    every folder checked (:func:`~targetprop.experiments.runner.check_jobs`); a ValueError names
    bad settings or a folder holding other settings, before anything runs. ``seeds`` (a
    ``curves`` file only): each method once per seed, in ``OUT/METHOD-seedN``, labelled
    ``LABEL seed N``."""
    names = specs.check_methods(table, methods)
    result = Planned(table, budget, out)
    if seeds:
        if table.get("kind", "curves") != "curves":
            raise ValueError(f"{table['name']}: seeds apply to a curves file, not a grid")
        configs = {seed: specs.configs(table, budget, {**(overrides or {}), "seed": seed}) for seed in seeds}
        for name in names:
            for seed in seeds:
                row, config = f"{name} seed {seed}", configs[seed][name]
                result.jobs[row] = Job(dataclasses.replace(config, label=f"{config.label} seed {seed}"),
                                       out / f"{name}-seed{seed}")
                result.seeds.setdefault(name, []).append(row)
        check_jobs(list(result.jobs.values()), overwrite)
        return result
    if table.get("kind", "curves") == "curves":
        configs = specs.configs(table, budget, overrides)
        result.jobs = {name: Job(configs[name], out / name) for name in names}
        check_jobs(list(result.jobs.values()), overwrite)
        return result
    grid = specs.grid_of(table, budget)
    tables, settings = specs.method_tables(table, budget), specs.method_settings(table, budget, overrides)
    for name in names:
        select = tables[name].get("select")
        result.jobs[name] = grid_jobs(settings[name], {**grid, "select": select} if select else grid, out / name)
    check_jobs([job for cells in result.jobs.values() for cell in cells.values() for job in cell], overwrite)
    return result


def execute(planned: Planned, *, progress: bool = False) -> Outcome:
    """Run or reuse every run of ``planned``, in order. Raises
    :class:`~targetprop.experiments.runner.Stopped` when one is interrupted."""
    outcome = Outcome()
    if planned.table.get("kind", "curves") == "curves":
        for name, job in planned.jobs.items():
            outcome.summaries[name] = run_job(job, progress=progress)
            outcome.rows.append((name, job.out))
        outcome.seeds = {method: [planned.jobs[row].out for row in rows] for method, rows in planned.seeds.items()}
        return outcome
    grid = specs.grid_of(planned.table, planned.budget)
    for name, jobs in planned.jobs.items():
        cells = outcome.cells[name] = run_cells(jobs, progress=progress)
        for (x, y), c in cells.items():
            row = f"{name} {specs.cell_name(grid, x, y)}"
            outcome.rows.append((row, c["run"]))
            outcome.summaries[row] = {"status": c["status"]}
    return outcome


def draw(table: dict, budget: str | None, out: Path, outcome: Outcome, png: Path, *, title: str,
         detailed: bool = False) -> Path:
    """The experiment's picture: a ``curves`` file's runs found in ``out`` (over seeds: those of
    ``outcome``; loss and accuracy against iterations; ``detailed``: against training time too),
    a ``grid`` file's heat maps."""
    from . import plotting

    if table.get("kind", "curves") == "curves":
        folders = [run for runs in outcome.seeds.values() for run in runs] or [out / m for m in table["methods"]]
        runs = [run for run in folders if rundir.is_run(run)]
        return (plotting.plot_runs if detailed else plotting.plot_panel)(runs, png, title=title)
    grid = specs.grid_of(table, budget)
    metric = grid.get("metric", "auc")
    return plotting.plot_heatmaps({m: reports.grid_matrix(c, grid, metric) for m, c in outcome.cells.items()},
                                  grid["x_values"], grid.get("y_values") or [None], png, xlabel=grid["x"],
                                  ylabel=grid.get("y", ""), title=title, metric=metric)


def missing_data(table: dict, budget: str | None, overrides: dict | None) -> str:
    """Why the file's data cannot be read ("" when it can): builds the first method's task."""
    config = next(iter(specs.configs(table, budget, overrides).values()))
    try:
        task_for(config)
    except DatasetError as err:
        return str(err)
    return ""


# ---------------------------------------------------------------------------- reproduce

RESULT_KEYS = ("panel", "budget", "method")


def plan_panel(name: str, budget: str, out_root: Path, *, data_dir=None, overrides=None, methods=None,
               overwrite: bool = False) -> Planned | None:
    """The runs of one panel in ``out_root/NAME`` (:func:`plan`); None, logged, when the panel's
    data is missing. ``methods``: only these (e.g. one per machine or core)."""
    panel = specs.load_panel(name)
    if data_dir and "data_dir" in task_options(panel.get("common", {}).get("task", "temporal-order")):
        overrides = {**(overrides or {}), "task.data_dir": str(data_dir)}
    missing = missing_data(panel, budget, overrides)
    if missing:
        log.info("%s: skipped, data not available (%s)", panel["name"], missing)
        return None
    result = plan(panel, budget, out_root / panel["name"], overrides=overrides, methods=methods, overwrite=overwrite)
    result.label = reports.budget_label(budget, overrides)
    return result


def reproduce(planned: Planned, results: Path, *, progress: bool = False) -> Path:
    """Run a planned panel (:func:`plan_panel`), draw its PNG (every method whose run is in its
    folder), append its rows to the Markdown file ``results``; return the PNG."""
    panel, out, label = planned.table, planned.out, planned.label
    title = panel.get("title", panel["name"]) + ("" if label == "full" else f" ({label})")
    start = time.perf_counter()
    outcome = execute(planned, progress=progress)
    png = draw(panel, planned.budget, out, outcome, out / f"{panel['name']}.png", title=title)
    reports.append_results(results, RESULT_KEYS, [((panel["name"], label, row), run) for row, run in outcome.rows])
    log.info("%s: %d rows, %.0f s, plot %s", panel["name"], len(outcome.rows), time.perf_counter() - start, png)
    bad = reports.not_completed(outcome.summaries.items())
    if bad:
        log.info("%s: %s", panel["name"], bad)
    return png


def reproduce_panel(name: str, budget: str, out_root: Path, *, data_dir=None, overrides=None, methods=None,
                    overwrite: bool = False, progress: bool = False) -> Path | None:
    """Plan and reproduce one panel into ``out_root/NAME`` (results appended to
    ``out_root/results.md``); the PNG, or None when the panel's data is missing."""
    planned = plan_panel(name, budget, out_root, data_dir=data_dir, overrides=overrides, methods=methods,
                         overwrite=overwrite)
    if planned is None:
        return None
    return reproduce(planned, out_root / "results.md", progress=progress)
