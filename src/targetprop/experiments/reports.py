"""What experiments say about their runs: Markdown tables, one-line summaries, budget labels.

This module owns the one results row (:data:`RESULT_COLUMNS`, :func:`result_cells`; one
method's mean over seeds, :func:`mean_cells`; its tables are written by
:func:`targetprop.markdown.table`) that ``compare``, ``table`` and ``reproduce`` print, each
after its own leading columns naming the row (``method``; ``run``; ``panel``, ``budget``,
``method``), the one-line summary of a run (:func:`summary_line`), and the rules by
which grids and ``tune`` select a run (:data:`SELECTIONS`, :func:`select`): by the area under its
training-loss curve (:func:`loss_auc`, as the paper does for Fig. 6a) or by its late test
accuracy (:func:`late_accuracy`). Runs are read through :mod:`targetprop.training.rundir`.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .. import markdown
from ..training import rundir
from ..training.config import TrainConfig

RESULT_COLUMNS = ("settings", "status", "iterations", "final test accuracy", "best (at iteration)",
                  "iterations to 100%", "loss AUC", "train time", "wall time", "threads")
NOT_RUN = "n/a"


def results_table(keys: Sequence[str], rows: Iterable[tuple[Sequence, Path | list[Path] | None]]) -> str:
    """The results table: ``keys`` columns then :data:`RESULT_COLUMNS`; each row is its key
    cells and a run folder (None: no run, e.g. a grid cell where every run diverged), or a list
    of run folders (the same method over seeds: their mean, :func:`mean_cells`)."""
    return markdown.table([*keys, *RESULT_COLUMNS],
                          ([*key, *(mean_cells(run) if isinstance(run, list) else result_cells(run))]
                           for key, run in rows))


def append_results(path: Path, keys: Sequence[str], rows: list[tuple[Sequence, Path | None]]) -> None:
    """Append ``rows`` to the results table in the Markdown file ``path``; a new file (or one
    whose last table has other columns) gets the header first."""
    text = results_table(keys, rows)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = old.splitlines()
    headers = [line for line, after in zip(lines, lines[1:]) if after.startswith("|---")]
    same = bool(headers) and headers[-1] == text.split("\n", 1)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(("\n".join(text.split("\n")[2:]) if same else ("\n" if old else "") + text) + "\n")


def result_cells(run: Path | None) -> list[str]:
    """The :data:`RESULT_COLUMNS` cells of the run in ``run``: its settings, its summary (or, for
    a run without one yet, what its metrics say), the area under its training loss and its threads.
    A ValueError names a folder whose files cannot be read."""
    if run is None:
        return ["", "diverged", *[NOT_RUN] * (len(RESULT_COLUMNS) - 2)]
    try:
        settings = TrainConfig.from_dict(rundir.read_config(run)).method()
        summary = rundir.read_summary(run) or _partial_summary(run)
        threads = (summary.get("environment") or {}).get("threads") or rundir.read_options(run).get("threads", "?")
        auc = loss_auc(run)
        best = NOT_RUN if summary["best_test_accuracy"] is None else \
            f"{summary['best_test_accuracy']:.1%} ({summary['best_at']})"
        reached = "not reached" if summary["iteration_to_100"] is None else str(summary["iteration_to_100"])
        return [settings, summary["status"], str(summary["iterations"]), percent(summary["final_test_accuracy"]),
                best, reached, NOT_RUN if not math.isfinite(auc) else f"{auc:.4g}",
                f"{summary['train_time']:.0f} s", f"{summary['wall_time']:.0f} s", str(threads)]
    except KeyError as err:
        raise ValueError(f"{run}: unreadable run files ({rundir.SUMMARY_FILE} has no {err})") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{run}: unreadable run files ({err})") from None


def mean_cells(runs: list[Path]) -> list[str]:
    """The :data:`RESULT_COLUMNS` cells of one method over several runs (seeds): the first run's
    settings, how many ended how, and the means of the numbers (the final accuracy with its
    sample standard deviation; iterations to 100% and the loss area over the runs that have one,
    saying how many of them when not all do)."""
    n = len(runs)
    try:
        settings = TrainConfig.from_dict(rundir.read_config(runs[0])).method()
        summaries = [rundir.read_summary(run) or _partial_summary(run) for run in runs]
        aucs = [auc for auc in map(loss_auc, runs) if math.isfinite(auc)]
        threads = sorted({str((s.get("environment") or {}).get("threads")
                              or rundir.read_options(run).get("threads", "?")) for s, run in zip(summaries, runs)})
        statuses = {}
        for s in summaries:
            statuses[s["status"]] = statuses.get(s["status"], 0) + 1
        final = [s["final_test_accuracy"] for s in summaries if s["final_test_accuracy"] is not None]
        best = [s["best_test_accuracy"] for s in summaries if s["best_test_accuracy"] is not None]
        reached = [s["iteration_to_100"] for s in summaries if s["iteration_to_100"] is not None]
        return [settings, ", ".join(f"{k} {v}/{n}" for k, v in statuses.items()),
                f"{_mean([s['iterations'] for s in summaries]):.0f}", _mean_and_sd(final),
                percent(_mean(best)) if best else NOT_RUN,
                f"{_mean(reached):.0f}{_of(reached, n)}" if reached else "not reached",
                f"{_mean(aucs):.4g}{_of(aucs, n)}" if aucs else NOT_RUN,
                f"{_mean([s['train_time'] for s in summaries]):.0f} s",
                f"{_mean([s['wall_time'] for s in summaries]):.0f} s", ", ".join(threads)]
    except KeyError as err:
        raise ValueError(f"{runs}: unreadable run files ({rundir.SUMMARY_FILE} has no {err})") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{runs}: unreadable run files ({err})") from None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _of(values: list, n: int) -> str:
    return "" if len(values) == n else f" ({len(values)} of {n})"


def _mean_and_sd(values: list[float]) -> str:
    if not values:
        return NOT_RUN
    mean = _mean(values)
    if len(values) == 1:
        return percent(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1%} ± {sd:.1%}"


def _partial_summary(run: Path) -> dict:
    """A summary-like dict from the metrics of a run that has no summary yet (running or killed)."""
    m = rundir.read_metrics(run)
    its, acc = [int(i) for i in m["iteration"]], m["test_accuracy"]
    s = {"status": "no summary (running?)", "iterations": 0, "final_test_accuracy": None, "best_test_accuracy": None,
         "best_at": None, "iteration_to_100": None, "train_time": 0.0, "wall_time": 0.0}
    if its:
        best = max(range(len(acc)), key=acc.__getitem__)
        s.update(iterations=its[-1], final_test_accuracy=acc[-1], best_test_accuracy=acc[best], best_at=its[best],
                 iteration_to_100=next((i for i, a in zip(its, acc) if a >= 1.0), None),
                 train_time=m["time"][-1], wall_time=m["wall_time"][-1])
    return s


def loss_auc(run: str | Path) -> float:
    """Area under the training-loss curve (trapezoid over iterations) of a completed run; ``inf``
    when it diverged, failed or is unfinished (so it is never selected) or has fewer than two points."""
    summary = rundir.read_summary(run)
    if summary is None or summary["status"] != "completed":
        return math.inf
    m = rundir.read_metrics(run)
    xs, ys = m["iteration"], m["train_loss"]
    if len(xs) < 2 or not all(math.isfinite(y) for y in ys):
        return math.inf
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


LATE_FRACTION = 0.25  # late_accuracy: the share of a run's evaluations it averages, the last ones


def late_accuracy(run: str | Path) -> float | None:
    """The mean test accuracy over the last quarter of a completed run's evaluations (its last
    ``ceil(n / 4)`` metrics rows of ``n``; the final one at least): unlike the best value, it shows
    a run that collapsed late in its budget. None when the run diverged, failed or is unfinished,
    or an accuracy there is not finite."""
    summary = rundir.read_summary(run)
    if summary is None or summary["status"] != "completed":
        return None
    accuracy = rundir.read_metrics(run)["test_accuracy"]
    late = accuracy[-math.ceil(len(accuracy) * LATE_FRACTION):] if accuracy else []
    return sum(late) / len(late) if late and all(math.isfinite(a) for a in late) else None


@dataclass(frozen=True)
class Selection:
    """A rule choosing one run among several (``tune --select``, a grid cell's ``[grid.select]``).

    ``rank(run)``: the run's sort key, smaller first; None for a run that is never selected.
    ``rule``: the rule in words (the command's help, ``tune.md``). ``metric``: the key of the
    cells of :func:`~targetprop.experiments.runner.run_cells` it ranks by first (the tables and
    heat map show it)."""

    name: str
    rule: str
    metric: str
    rank: Callable[[Path], tuple | None]


def _rank_by_auc(run: Path) -> tuple | None:
    auc = loss_auc(run)
    return (auc,) if math.isfinite(auc) else None


def _rank_by_late_accuracy(run: Path) -> tuple | None:
    accuracy, auc = late_accuracy(run), loss_auc(run)
    return (-accuracy, auc) if accuracy is not None and math.isfinite(auc) else None


SELECTIONS = {s.name: s for s in (
    Selection("loss-auc", "the smallest area under the training-loss curve (trapezoid over the evaluated "
                          "iterations)", "auc", _rank_by_auc),
    Selection("accuracy", "the highest test accuracy averaged over the last quarter of the evaluated iterations "
                          "(which shows a collapse late in the budget, unlike the best-ever value), ties broken by "
                          "the smaller area under the training-loss curve", "late_accuracy", _rank_by_late_accuracy),
)}
SELECTION_NOTE = "runs that diverged, failed or did not finish are never selected"


def select(runs: dict, selection: Selection) -> object | None:
    """The key of ``runs`` (key → run folder) whose run ``selection`` ranks first; None when it
    selects none of them (every run diverged or failed). Equal ranks: the first key."""
    ranks = {key: rank for key, run in runs.items() if (rank := selection.rank(Path(run))) is not None}
    return min(ranks, key=ranks.get) if ranks else None


def percent(value: float | None) -> str:
    return NOT_RUN if value is None else f"{value:.1%}"


def summary_line(out: Path, s: dict) -> str:
    """One line on a run's outcome: label, status (and why), iterations, test accuracy, when it
    first reached 100%, wall time and its folder."""
    reached = ("100% not reached" if s["iteration_to_100"] is None
               else f"100% first at iteration {s['iteration_to_100']}")
    why = f" ({s['message']})" if s.get("message") else ""
    return (f"{s['label']}: {s['status']}{why} after {s['iterations']} iterations, test accuracy "
            f"{percent(s['final_test_accuracy'])}, {reached}, {s['wall_time']:.1f} s -> {out}")


def not_completed(rows: Iterable[tuple[str, dict | None]]) -> str:
    """``not completed: NAME (diverged), …`` for the runs that diverged or failed ("" if none)."""
    bad = [f"{name} ({s['status']})" for name, s in rows if s is not None and s["status"] in ("diverged", "failed")]
    return f"not completed: {', '.join(bad)}" if bad else ""


def budget_label(budget: str, overrides: dict | None) -> str:
    """``short budget``, ``full budget``, with what ``--set`` changed: ``full budget, iterations=10000``
    (plain ``full`` when nothing changed: the paper's budget)."""
    changed = [f"{k}={v}" for k, v in (overrides or {}).items() if k != "task.data_dir"]
    if budget == "full" and not changed:
        return "full"
    return ", ".join([f"{budget} budget", *changed])


def grid_matrix(cells: dict, grid: dict, metric: str) -> list[list[float]]:
    """Rows over y, columns over x, of the cells' ``metric`` (``auc``, ``accuracy``: final,
    ``late_accuracy``; NaN where the cell diverged: blank in the plot)."""
    rows = []
    for y in grid.get("y_values") or [None]:
        row = []
        for x in grid["x_values"]:
            c = cells[(x, y)]
            value = c.get(metric)
            row.append(math.nan if value is None or not math.isfinite(value) or c["run"] is None else value)
        rows.append(row)
    return rows
