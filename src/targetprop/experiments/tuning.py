"""``targetprop tune``: a one- or two-axis grid search over settings, selected by the area under
the training-loss curve (as the paper does for Fig. 6a).

This module owns the grid's axes, the search and its outputs (``best.json``, ``tune.md``, a heat
map); running the grid's runs is :mod:`targetprop.experiments.pipeline` (:func:`~targetprop.experiments.pipeline.run_grid`).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..training import threads
from .pipeline import (BUDGETS, EXIT_HELP, EXIT_INCOMPLETE, Stopped, _json_or_text, best_by_auc, grid_matrix,
                          load_panel, method_settings, parse_setting, run_grid, set_value)
from ..training.trainer import TrainConfig


def add_tune(sub) -> None:
    """Add ``tune`` to the ``targetprop`` parser's sub-parsers ``sub``."""
    p = sub.add_parser("tune", help="grid search over one or two settings, selected by area under the loss",
                       description="Run a one- or two-axis grid over settings, print the table of areas under "
                                   "the training-loss curve, write OUT/best.json (the selected settings), "
                                   "OUT/tune.md and, for two axes, a heat map OUT/heatmap.png (Fig. 6a).")
    p.add_argument("--panel", help="start from this panel's settings (default: the task defaults)")
    p.add_argument("--method", help="the panel's method to start from (default: its first)")
    p.add_argument("--budget", choices=BUDGETS, default="short")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="a base setting (repeatable)")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=LO:HI[:N]|KEY=V1,V2,…",
                   help="an axis: a log grid from LO to HI (one point per decade, or N points) or a list")
    p.add_argument("--out", type=Path, default=Path("runs/tune"))
    p.add_argument("--title", help="the heat map's title (default: from the task and iterations)")
    p.add_argument("--threads", type=int, help=threads.HELP)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace runs in OUT that have other settings")
    p.epilog = EXIT_HELP
    p.set_defaults(handler=_tune, subparser=p)


def parse_axis(text: str) -> tuple[str, list]:
    """``lr=1e-4:1e1`` (powers of ten), ``lr=1e-4:1e1:11`` (11 log-spaced points) or ``lr=0,0.1,1``."""
    key, value = parse_setting(text)
    raw = text.partition("=")[2]
    if ":" in raw:
        parts = [float(v) for v in raw.split(":")]
        if len(parts) not in (2, 3) or parts[0] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"{text!r}: a log grid is LO:HI[:N] with 0 < LO <= HI")
        lo, hi = math.log10(parts[0]), math.log10(parts[1])
        n = int(parts[2]) if len(parts) == 3 else int(round(hi - lo)) + 1
        values = [float(f"{10 ** (lo + (hi - lo) * i / max(n - 1, 1)):.6g}") for i in range(n)]
    else:
        values = [_json_or_text(v) for v in raw.split(",")]
    return key, values


def tune(base: dict, axes: list[tuple[str, list]], out: Path, quiet: bool = True,
         overwrite: bool = False) -> tuple[dict, dict, dict]:
    """Run the grid; return ``(grid, cells, best)`` where ``best`` holds the selected settings
    (``{}`` if every run diverged). Runs never stop early on accuracy, so areas compare."""
    if not 1 <= len(axes) <= 2:
        raise ValueError("tune takes one or two --grid axes")
    grid = {"x": axes[0][0], "x_values": axes[0][1]}
    if len(axes) == 2:
        grid.update(y=axes[1][0], y_values=axes[1][1])
    cells = run_grid({**base, "stop_at_accuracy": None}, grid, out, quiet, overwrite)
    best_cell = best_by_auc({k: c["auc"] for k, c in cells.items()})
    best = {}
    if best_cell is not None:
        best = {grid["x"]: best_cell[0], **({grid["y"]: best_cell[1]} if len(axes) == 2 else {}),
                "auc": cells[best_cell]["auc"], "run": str(cells[best_cell]["run"])}
    return grid, cells, best


def tune_table(grid: dict, cells: dict, best: dict) -> str:
    """Markdown table of the grid's areas (rows over y), the selected cell starred."""
    ys = grid.get("y_values") or [None]
    corner = f"{grid.get('y', '')} \\ {grid['x']}" if "y" in grid else grid["x"]
    lines = [f"| {corner} | " + " | ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in grid["x_values"]) + " |",
             "|---" * (len(grid["x_values"]) + 1) + "|"]
    for y in ys:
        row = [str(y) if y is not None else "loss AUC"]
        for x in grid["x_values"]:
            auc = cells[(x, y)]["auc"]
            chosen = best and best.get(grid["x"]) == x and (y is None or best.get(grid.get("y")) == y)
            row.append("diverged" if not math.isfinite(auc) else f"{auc:.4g}{' *' if chosen else ''}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _tune(args, parser) -> int:
    from . import plotting

    try:
        base = {}
        if args.panel:
            settings = method_settings(load_panel(args.panel), args.budget)
            base = settings[args.method or next(iter(settings))]
        for text in args.set:
            base = set_value(base, *parse_setting(text))
        axes = [parse_axis(text) for text in args.grid]
        for key, _ in axes:
            set_value({}, key, None)
        TrainConfig.from_dict(base)
    except (ValueError, TypeError, KeyError) as err:
        parser.error(str(err))
    try:
        grid, cells, best = tune(base, axes, args.out, args.quiet, args.overwrite)
    except Stopped as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return err.code
    except ValueError as err:  # e.g. a run with other settings in OUT
        parser.error(str(err))
    text = tune_table(grid, cells, best)
    print(text)
    print("best:", json.dumps(best) if best else "none (every run diverged)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "best.json").write_text(json.dumps(best, indent=2) + "\n", encoding="utf-8")
    if "y" in grid:
        png = plotting.plot_heatmaps({"area under the training loss": grid_matrix(cells, grid, "auc")},
                                     grid["x_values"], grid["y_values"], args.out / "heatmap.png",
                                     xlabel=grid["x"], ylabel=grid["y"], metric="auc",
                                     title=args.title or _tune_title(base, [key for key, _ in axes]))
        print(f"heat map: {png}")
    return 0 if best else EXIT_INCOMPLETE


def _tune_title(base: dict, swept: list[str]) -> str:
    """Task, rule, optimizer and the step settings the grid does not sweep (the swept ones vary
    across the heat map, so their base values are left out), iterations, and the axes."""
    config = TrainConfig.from_dict(base)
    fixed = {"target_step": "γh", "reg": "r", "lr": "lr"}
    parts = [f"{name}={getattr(config, key):g}" for key, name in fixed.items() if key not in swept]
    rule = config.rule + (" through time" if config.through_time else "")
    return (f"{config.task}, {rule}, {config.optimizer} {' '.join(parts)}, {config.iterations} iterations; "
            f"grid: {' × '.join(swept)} (blank: diverged)")
