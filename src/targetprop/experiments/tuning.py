"""``targetprop tune``: a one- or two-axis grid search over settings, selected by the area under
the training-loss curve (as the paper does for Fig. 6a; ``--select loss-auc``, the default) or by
the test accuracy late in the budget (``--select accuracy``); the rules are
:data:`targetprop.experiments.reports.SELECTIONS`.

This module owns the grid's axes (:func:`parse_axis`), the search (:func:`plan`, :func:`tune`)
and what it reports (:func:`tune_report`, :func:`tune_table`, the heat map's title); running the
grid's runs is :mod:`targetprop.experiments.runner`'s, the command's wiring
:mod:`targetprop.experiments.commands`'.

The tuned-BP protocol: BP's optimizer and step size chosen per task on a quarter of the full
budget, by late accuracy, each candidate clipped at 1. A grid is one optimizer's (the optimizers
take different settings), so it is one ``tune`` per optimizer, each from the panel's ``bp``
method, then the best of their ``best.json`` files by the same rule (highest ``late_accuracy``,
then smallest ``auc``; ``targetprop table OUT/*`` lists all the runs). For permuted MNIST (40000
iterations)::

    P="--panel fig4-permuted-mnist --method bp --budget full --set iterations=10000 --set clip=1"
    S="--select accuracy"
    O="runs/tune-bp/fig4-permuted-mnist"
    targetprop tune $P $S --set optimizer=sgd --set momentum=0.9 --set nesterov=true --grid lr=1e-4,1e-3,1e-2 \\
        --out $O/sgd-nesterov
    targetprop tune $P $S --set optimizer=adam --set momentum=0 --set nesterov=false --grid lr=1e-4,1e-3,1e-2 \\
        --out $O/adam
    targetprop tune $P $S --set optimizer=rmsprop --set momentum=0 --set nesterov=false --grid lr=1e-4,1e-3 \\
        --out $O/rmsprop
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import markdown
from ..argtypes import key_value
from ..training.config import TrainConfig
from .reports import SELECTION_NOTE, SELECTIONS, Selection, select
from .runner import check_jobs, grid_jobs, run_cells


def parse_axis(text: str) -> tuple[str, list]:
    """``lr=1e-4:1e1`` (powers of ten), ``lr=1e-4:1e1:11`` (11 log-spaced points) or ``lr=0,0.1,1``
    (each value read as ``KEY=VALUE`` reads it); ``argparse.ArgumentTypeError`` names a bad one."""
    key, _ = key_value(text)
    raw = text.partition("=")[2]
    if ":" not in raw:
        return key, [key_value(f"{key}={part}")[1] for part in raw.split(",")]
    try:
        parts = [float(v) for v in raw.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or parts[0] <= 0 or parts[1] < parts[0] or len(parts) == 3 and parts[2] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a log grid is KEY=LO:HI[:N] with 0 < LO <= HI and N >= 1")
    lo, hi = math.log10(parts[0]), math.log10(parts[1])
    n = int(parts[2]) if len(parts) == 3 else int(round(hi - lo)) + 1
    return key, [float(f"{10 ** (lo + (hi - lo) * i / max(n - 1, 1)):.6g}") for i in range(n)]


def plan(base: dict, axes: list[tuple[str, list]], out: Path, *, overwrite: bool = False) -> tuple[dict, dict]:
    """The grid of ``axes`` over ``base`` settings and its runs in ``out``, every folder checked
    (a ValueError names bad settings or a folder holding other settings). Runs never stop early
    on accuracy, so their areas compare."""
    if not 1 <= len(axes) <= 2:
        raise ValueError("tune takes one or two --grid axes")
    grid = {"x": axes[0][0], "x_values": axes[0][1]}
    if len(axes) == 2:
        grid.update(y=axes[1][0], y_values=axes[1][1])
    jobs = grid_jobs({**base, "stop_at_accuracy": None}, grid, out)
    check_jobs([job for cell in jobs.values() for job in cell], overwrite)
    return grid, jobs


def tune(grid: dict, jobs: dict, *, selection: Selection = SELECTIONS["loss-auc"],
         progress: bool = False) -> tuple[dict, dict]:
    """Run the planned grid (:func:`plan`); return ``(cells, best)`` where ``best`` holds the
    settings ``selection`` picks, its area, its late accuracy, its run and the rule's name
    (``{}`` if every run diverged or failed)."""
    cells = run_cells(jobs, progress=progress, selection=selection)
    best_cell = select({k: c["run"] for k, c in cells.items() if c["run"] is not None}, selection)
    best = {}
    if best_cell is not None:
        chosen = cells[best_cell]
        best = {grid["x"]: best_cell[0], **({grid["y"]: best_cell[1]} if "y" in grid else {}),
                "auc": chosen["auc"], "late_accuracy": chosen["late_accuracy"], "run": str(chosen["run"]),
                "select": selection.name}
    return cells, best


#: how the tables name the cells' metrics, and write their values
METRIC_NAMES = {"auc": "loss AUC", "late_accuracy": "late test accuracy"}
_FORMATS = {"auc": "{:.4g}", "late_accuracy": "{:.2%}"}


def tune_table(grid: dict, cells: dict, best: dict, metric: str = "auc") -> str:
    """Markdown table of the grid's ``metric`` (rows over y), the selected cell starred."""
    corner = f"{grid.get('y', '')} \\ {grid['x']}" if "y" in grid else grid["x"]
    rows = []
    for y in grid.get("y_values") or [None]:
        row = [str(y) if y is not None else METRIC_NAMES[metric]]
        for x in grid["x_values"]:
            cell = cells[(x, y)]
            chosen = best and best.get(grid["x"]) == x and (y is None or best.get(grid.get("y")) == y)
            value = cell[metric]
            row.append("diverged" if cell["run"] is None or value is None or not math.isfinite(value)
                       else f"{_FORMATS[metric].format(value)}{' *' if chosen else ''}")
        rows.append(row)
    return markdown.table([corner, *(_tick(x) for x in grid["x_values"])], rows)


def tune_report(grid: dict, cells: dict, best: dict, selection: Selection) -> str:
    """What ``tune`` prints and writes to ``tune.md``: the rule, then a table of the metric it
    selects by and, when that is not the area, a table of the area (its tie-break)."""
    metrics = list(dict.fromkeys([selection.metric, "auc"]))
    rule = f"selected by {selection.name}: {selection.rule}; {SELECTION_NOTE} (* the selected setting)."
    tables = [f"{METRIC_NAMES[m]}:\n\n{tune_table(grid, cells, best, m)}" for m in metrics]
    return "\n\n".join([rule, *tables])


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def tune_title(base: dict, swept: list[str]) -> str:
    """Task, rule, optimizer and the step settings the grid does not sweep (the swept ones vary
    across the heat map, so their base values are left out), iterations, and the axes."""
    config = TrainConfig.from_dict(base)
    fixed = {"target_step": "γh", "reg": "r", "lr": "lr"}
    parts = [f"{name}={getattr(config, key):g}" for key, name in fixed.items() if key not in swept]
    rule = config.rule + (" through time" if config.through_time else "")
    return (f"{config.task}, {rule}, {config.optimizer} {' '.join(parts)}, {config.iterations} iterations; "
            f"grid: {' × '.join(swept)} (blank: diverged)")
