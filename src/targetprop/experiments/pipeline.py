"""The paper's experiments as data: ``targetprop reproduce`` and ``targetprop tune``.

This module owns the experiment files (``targetprop/configs/fig*.toml`` and
``linearized-vs-difference.toml``, one per figure panel), running them and their grids; the
``tune`` command is :mod:`targetprop.experiments.tuning`'s.
Training is :mod:`targetprop.training.trainer`'s; drawing is :mod:`targetprop.experiments.plotting`'s.

A panel file is a comparison file (see :mod:`targetprop.experiments.commands`) with a few more keys::

    figure = "fig3"                # the figure it belongs to (``reproduce fig3`` runs all fig3 panels)
    title = "Temporal order, T = 60"
    kind = "curves"                # curves (Figs. 3, 4) | grid (Figs. 6a, 6b)
    [budgets.full]                 # settings laid over [common]: the paper's budget
    iterations = 40000
    [budgets.short]                # a budget that finishes in minutes
    iterations = 2000
    [common] …                     # shared settings (fields of TrainConfig)
    [methods.NAME] …               # one table per method
    [grid]                         # kind = "grid" only
    x = "lr"                       # a setting (``task.KEY`` for a task option, ``layer.KEY`` for a layer option)
    x_values = [1e-4, 1e-2, 1]
    y = "reg"
    y_values = [0.0, 1.0]
    metric = "auc"                 # what the heat map shows: auc (area under the training loss) | accuracy
    [grid.select]                  # optional: per cell, the best of these settings by area under the loss
    lr = [1e-2, 1e-1]              # (a method's own ``select`` table replaces it for that method)

The string ``"none"`` stands for None (TOML has no null), e.g. ``divergence_factor = "none"``.
A budget may hold a ``grid`` table that replaces keys of ``[grid]`` (a smaller grid for ``short``)
and ``[budgets.B.methods.NAME]`` tables laid over the methods' (e.g. a shorter ``select``).
Runs already in the output folder are reused when finished and continued when not (the same
settings), and refused when their settings differ, unless ``--overwrite``.
``targetprop tune`` searches one- or two-axis grids over settings and selects by the area under
the training-loss curve (the loss on the fixed training sample against iterations), as the paper
does for Fig. 6a; a run that diverged or failed has no area and is never selected.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import signal
import sys
import time
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..training import rundir, threads
from ..tasks.datasets import DatasetError
from ..tasks.registry import task_options
from ..training.trainer import Trainer, TrainConfig, build_task, read_metrics

FIGURES = ("fig3", "fig4", "fig6a", "fig6b", "linearized-vs-difference")
BUDGETS = ("full", "short")
PANEL_KEYS = ("figure", "title", "description", "kind", "budgets", "common", "methods", "grid")
KINDS = ("curves", "grid")
METRICS = ("auc", "accuracy")
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
OPTION_PREFIXES = {"task": "task_options", "layer": "layer_options"}
EXIT_INCOMPLETE = 1  # reproduce: every panel skipped (no data); tune: every run diverged or failed
EXIT_HELP = ("exit codes: 0 done (runs that diverged or failed are listed), 1 nothing could be done (reproduce: "
             "no panel's data; tune: every run diverged or failed), 2 bad input, 130/143 interrupted by "
             "SIGINT/SIGTERM (the same command continues). The same command reuses finished runs in OUT and "
             "continues unfinished ones.")


# ---------------------------------------------------------------------------- panels as data


def panel_names() -> list[str]:
    """Names of the panel files shipped in ``targetprop/configs`` (those with a ``figure`` key)."""
    folder = resources.files("targetprop") / "configs"
    names = sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".toml"))
    return [n for n in names if "figure" in _read_toml(folder / f"{n}.toml", n)]


def load_panel(spec: str) -> dict:
    """The panel table of a file path or built-in name, validated; ValueError names what is wrong."""
    path = Path(spec)
    if path.is_file():
        table, name = _read_toml(path, spec), path.stem
    else:
        if spec not in panel_names():
            raise ValueError(f"no panel {spec!r} (built-in panels: {', '.join(panel_names())})")
        table, name = _read_toml(resources.files("targetprop") / "configs" / f"{spec}.toml", spec), spec
    _check_panel(spec, table)
    return {**table, "name": name}


def _read_toml(path, spec: str) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{spec}: not valid TOML: {err}") from None


def _check_panel(spec: str, table: dict) -> None:
    unknown = sorted(set(table) - set(PANEL_KEYS))
    if unknown:
        raise ValueError(f"{spec}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(PANEL_KEYS)})")
    if table.get("figure") not in FIGURES:
        raise ValueError(f"{spec}: figure must be one of {', '.join(FIGURES)}, got {table.get('figure')!r}")
    if table.get("kind", "curves") not in KINDS:
        raise ValueError(f"{spec}: kind must be one of {', '.join(KINDS)}")
    missing = [b for b in BUDGETS if not isinstance(table.get("budgets", {}).get(b), dict)]
    if missing:
        raise ValueError(f"{spec}: needs [budgets.{missing[0]}]")
    if not isinstance(table.get("methods"), dict) or not table["methods"]:
        raise ValueError(f"{spec}: needs at least one [methods.NAME] table")
    if table.get("kind") == "grid":
        grid = panel_grid(table, "full")
        if grid.get("metric", "auc") not in METRICS or "x" not in grid or "x_values" not in grid:
            raise ValueError(f"{spec}: [grid] needs x, x_values and a metric in {', '.join(METRICS)}")


def panels_of(figure: str) -> list[str]:
    """The built-in panels of ``figure`` (e.g. ``fig3``), in name order."""
    return [n for n in panel_names() if load_panel(n)["figure"] == figure]


def panel_grid(panel: dict, budget: str) -> dict:
    """The panel's ``[grid]`` with the budget's ``grid`` table laid over it."""
    return {**panel.get("grid", {}), **panel["budgets"][budget].get("grid", {})}


def set_value(values: dict, key: str, value) -> dict:
    """``values`` with the setting ``key`` set: a TrainConfig field, or ``task.K`` / ``layer.K``."""
    prefix, dot, rest = key.partition(".")
    values = {**values}
    if dot and prefix in OPTION_PREFIXES:
        field = OPTION_PREFIXES[prefix]
        values[field] = {**values.get(field, {}), rest: value}
    elif key in FIELDS:
        values[key] = value
    else:
        raise ValueError(f"unknown setting {key!r} (a TrainConfig field, task.KEY or layer.KEY)")
    return values


def merge(*layers: dict) -> dict:
    """Settings laid over each other; ``task_options``/``layer_options`` merge key by key, and the
    string ``"none"`` (TOML has no null) stands for None."""
    out = {}
    for layer in layers:
        for key, value in layer.items():
            if key in OPTION_PREFIXES.values():
                out[key] = {**out.get(key, {}), **value}
            else:
                out[key] = None if isinstance(value, str) and value.lower() == "none" else value
    return out


def method_tables(panel: dict, budget: str) -> dict[str, dict]:
    """The ``[methods.NAME]`` tables with the budget's ``[budgets.B.methods.NAME]`` laid over them."""
    extra = panel["budgets"][budget].get("methods", {})
    return {name: {**table, **extra.get(name, {})} for name, table in panel["methods"].items()}


def method_settings(panel: dict, budget: str, overrides: dict | None = None) -> dict[str, dict]:
    """Per method: ``[common]``, then the budget, then the method's table (less its ``select``),
    then ``overrides``."""
    base = {k: v for k, v in panel["budgets"][budget].items() if k not in ("grid", "methods")}
    out = {}
    for name, settings in method_tables(panel, budget).items():
        values = merge(panel.get("common", {}), base, {k: v for k, v in settings.items() if k != "select"})
        for key, value in (overrides or {}).items():
            values = set_value(values, key, value)
        values.setdefault("label", name)
        out[name] = values
    return out


def panel_configs(panel: dict, budget: str, overrides: dict | None = None) -> dict[str, TrainConfig]:
    """Validated configs of the panel's methods (ValueError names the method)."""
    configs = {}
    for name, values in method_settings(panel, budget, overrides).items():
        try:
            configs[name] = TrainConfig.from_dict(values)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{panel['name']}: methods.{name}: {err}") from None
    return configs


# ---------------------------------------------------------------------------- area under the loss


def loss_auc(run_dir: str | Path) -> float:
    """Area under the training-loss curve (trapezoid over iterations) of a completed run; ``inf``
    when it diverged or failed (so it is never selected) or has fewer than two points."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if summary["status"] != "completed":
        return math.inf
    m = read_metrics(run_dir)
    xs, ys = m["iteration"], m["train_loss"]
    if len(xs) < 2 or not all(math.isfinite(y) for y in ys):
        return math.inf
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


def best_by_auc(aucs: dict) -> object | None:
    """The key of the smallest finite area, or None if every run diverged."""
    finite = {k: v for k, v in aucs.items() if math.isfinite(v)}
    return min(finite, key=finite.get) if finite else None


# ---------------------------------------------------------------------------- running


class Stopped(Exception):
    """A run of the experiment was interrupted (SIGINT/SIGTERM): the whole experiment stops;
    ``code`` is the exit code (128 + the signal)."""

    def __init__(self, out: Path, code: int):
        super().__init__(f"interrupted during {out}; the same command continues")
        self.code = code


def run_config(config: TrainConfig, out: Path, quiet: bool = True, overwrite: bool = False) -> dict:
    """Train ``config`` into ``out``; the same run there is reused when finished and continued when
    not (one line says so), a run with other settings refused (ValueError) unless ``overwrite``.
    Returns the summary; raises :class:`Stopped` when the run was interrupted."""
    existing = None if overwrite else rundir.inspect(out, config.to_dict())
    if existing is not None and existing.state == "unfinished":
        print(existing.describe(out), flush=True)
    task = _task(config)
    threads.apply(task, config)
    trainer = Trainer(config, task)
    summary = trainer.run(out, overwrite=overwrite)
    if not quiet and not trainer.reused:
        print(_summary_line(out, summary), flush=True)
    if summary["status"] == "interrupted":  # Ctrl-C or SIGTERM: stop the whole experiment, not one run
        raise Stopped(out, 128 + (trainer.stop_signal or signal.SIGINT))
    return summary


_TASKS: dict[str, object] = {}
TASK_KEYS = ("task", "length", "batch_size", "test_size", "task_options", "seed", "dtype")


def _task(config: TrainConfig):
    """The config's task, shared between runs with the same task settings (a grid loads its
    images once; tasks serve batches as pure functions of the seed and iteration)."""
    key = json.dumps({k: getattr(config, k) for k in TASK_KEYS}, sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS.clear()  # hold one data set at a time
        _TASKS[key] = build_task(config)
    return _TASKS[key]


def _summary_line(out: Path, s: dict) -> str:
    acc = "n/a" if s["final_test_accuracy"] is None else f"{s['final_test_accuracy']:.1%}"
    return (f"  {s['label']}: {s['status']} after {s['iterations']} iterations, test accuracy {acc}, "
            f"{s['wall_time']:.1f} s -> {out}")


def check_methods(panel: dict, methods) -> list[str]:
    """The panel's methods to run: ``methods`` in the order given (all of them when empty); a
    ValueError names an unknown one and lists the panel's."""
    if not methods:
        return list(panel["methods"])
    unknown = [m for m in methods if m not in panel["methods"]]
    if unknown:
        raise ValueError(f"panel {panel['name']!r} has no method {unknown[0]!r} "
                         f"(its methods: {', '.join(panel['methods'])})")
    return list(dict.fromkeys(methods))


def run_curves_panel(panel: dict, budget: str, out: Path, overrides=None, quiet=True, methods=None,
                     overwrite=False) -> list[dict]:
    """Run the methods of a ``curves`` panel (all, or ``methods`` in that order); return one
    results row per method run."""
    configs = panel_configs(panel, budget, overrides)
    rows = []
    for name in check_methods(panel, methods):
        config = configs[name]
        summary = run_config(config, out / name, quiet, overwrite)
        rows.append(_row(panel, budget, name, config, summary, loss_auc(out / name)))
    return rows


def grid_cells(grid: dict) -> list[tuple]:
    """``(x, y)`` pairs of the grid (``y`` is None for a one-axis grid)."""
    ys = grid.get("y_values") or [None]
    return list(itertools.product(grid["x_values"], ys))


def select_settings(grid: dict) -> list[dict]:
    """The settings tried in each cell (``[grid.select]``'s product; one empty dict if none)."""
    select = grid.get("select", {})
    keys = list(select)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(select[k] for k in keys))]


def _cell_name(grid: dict, x, y, extra: dict) -> str:
    parts = [f"{grid['x']}={x}"] + ([f"{grid['y']}={y}"] if y is not None else [])
    return ",".join(parts + [f"{k}={v}" for k, v in extra.items()])


def run_grid(base: dict, grid: dict, out: Path, quiet: bool = True, overwrite: bool = False) -> dict:
    """Run ``base`` settings over the grid; per cell the best of ``[grid.select]`` by area.

    Returns ``{(x, y): {"auc", "accuracy", "run", "status"}}`` (auc ``inf`` when every run of the cell
    diverged; ``run`` is the selected run directory or None).
    """
    cells = {}
    for x, y in grid_cells(grid):
        aucs, summaries = {}, {}
        for extra in select_settings(grid):
            values = set_value(base, grid["x"], x)
            values = set_value(values, grid["y"], y) if y is not None else values
            for key, value in extra.items():
                values = set_value(values, key, value)
            name = _cell_name(grid, x, y, extra)
            values["label"] = f"{base.get('label', 'run')} {name}"
            run_dir = out / name.replace("/", "_")
            summaries[run_dir] = run_config(TrainConfig.from_dict(values), run_dir, quiet, overwrite)
            aucs[run_dir] = loss_auc(run_dir)
        best = best_by_auc(aucs)
        cells[(x, y)] = {"auc": aucs[best] if best else math.inf, "run": best,
                         "accuracy": summaries[best]["final_test_accuracy"] if best else None,
                         "status": summaries[best]["status"] if best else "diverged"}
    return cells


def grid_matrix(cells: dict, grid: dict, metric: str) -> list[list[float]]:
    """Rows over y, columns over x, of ``metric`` (NaN where the cell diverged: blank in the plot)."""
    ys = grid.get("y_values") or [None]
    rows = []
    for y in ys:
        row = []
        for x in grid["x_values"]:
            c = cells[(x, y)]
            value = c["auc"] if metric == "auc" else c["accuracy"]
            row.append(math.nan if value is None or not math.isfinite(value) or c["run"] is None else value)
        rows.append(row)
    return rows


def run_grid_panel(panel: dict, budget: str, out: Path, overrides=None, quiet=True,
                   overwrite=False) -> tuple[list[dict], dict]:
    """Run every method of a ``grid`` panel over its grid; return the results rows and the cells per method."""
    grid = panel_grid(panel, budget)
    rows, all_cells = [], {}
    for name, values in method_settings(panel, budget, overrides).items():
        select = method_tables(panel, budget)[name].get("select")
        method_grid = {**grid, "select": select} if select else grid
        cells = all_cells[name] = run_grid(values, method_grid, out / name, quiet, overwrite)
        for (x, y), c in cells.items():
            cell = _cell_name(grid, x, y, {})
            rows.append({"panel": panel["name"], "budget": budget, "method": f"{name} {cell}",
                         "settings": "", "status": c["status"], "iterations": values.get("iterations"),
                         "accuracy": c["accuracy"], "to100": None, "auc": c["auc"], "wall": None})
    return rows, all_cells


def _row(panel, budget, name, config, s, auc) -> dict:
    return {"panel": panel["name"], "budget": budget, "method": name, "settings": config.method(),
            "status": s["status"], "iterations": s["iterations"], "accuracy": s["final_test_accuracy"],
            "to100": s["iteration_to_100"], "auc": auc, "wall": s["wall_time"]}


# ---------------------------------------------------------------------------- results table


TABLE_HEADER = ("| panel | budget | method | settings | status | iterations | final test accuracy "
                "| iterations to 100% | loss AUC | wall time |\n|---|---|---|---|---|---|---|---|---|---|\n")


def format_rows(rows: list[dict]) -> str:
    """Markdown rows of the results table."""
    def fmt(value, spec):
        return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)
    return "".join(
        f"| {r['panel']} | {r['budget']} | {r['method']} | {r['settings']} | {r['status']} | {r['iterations']} | "
        f"{fmt(r['accuracy'], '.1%')} | {r['to100'] or 'not reached'} | {fmt(r['auc'], '.4g')} | "
        f"{fmt(r['wall'], '.0f')}{' s' if r['wall'] is not None else ''} |\n" for r in rows)


def append_results(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the Markdown table at ``path`` (its header written first if new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with path.open("a", encoding="utf-8") as f:
        f.write((TABLE_HEADER if new else "") + format_rows(rows))


# ---------------------------------------------------------------------------- reproduce


def budget_label(budget: str, overrides: dict | None) -> str:
    """``short budget``, ``full budget``, with what ``--set`` changed: ``full budget, iterations=10000``
    (plain ``full`` when nothing changed: the paper's budget)."""
    changed = [f"{k}={v}" for k, v in (overrides or {}).items() if k != "task.data_dir"]
    if budget == "full" and not changed:
        return "full"
    return ", ".join([f"{budget} budget", *changed])


def reproduce_panel(name: str, budget: str, out_root: Path, *, data_dir=None, overrides=None,
                    quiet=True, methods=None, overwrite=False) -> Path | None:
    """Run one panel into ``out_root/NAME``, draw its PNG, append to ``out_root/results.md``.
    ``methods``: run only these of a curves panel (e.g. one per machine or core); the PNG shows
    every method whose run is already in the folder. Returns the PNG, or None when the panel was
    skipped because its data is missing."""
    from . import plotting

    panel = load_panel(name)
    if data_dir and "data_dir" in task_options(panel.get("common", {}).get("task", "temporal-order")):
        overrides = {**(overrides or {}), "task.data_dir": str(data_dir)}
    missing = _missing_data(panel, budget, overrides)
    if missing:
        print(f"{panel['name']}: skipped, data not available ({missing})")
        return None
    out = out_root / panel["name"]
    label = budget_label(budget, overrides)
    title = panel.get("title", panel["name"]) + ("" if label == "full" else f" ({label})")
    start = time.perf_counter()
    if panel.get("kind", "curves") == "curves":
        rows = run_curves_panel(panel, budget, out, overrides, quiet, methods, overwrite)
        runs = [out / m for m in panel["methods"] if (out / m / "metrics.csv").is_file()]
        png = plotting.plot_panel(runs, out / f"{panel['name']}.png", title=title)
    else:
        rows, cells = run_grid_panel(panel, budget, out, overrides, quiet, overwrite)
        grid = panel_grid(panel, budget)
        metric = grid.get("metric", "auc")
        png = plotting.plot_heatmaps({m: grid_matrix(c, grid, metric) for m, c in cells.items()},
                                     grid["x_values"], grid.get("y_values") or [None],
                                     out / f"{panel['name']}.png", xlabel=grid["x"], ylabel=grid.get("y", ""),
                                     title=title, metric=metric)
    for row in rows:
        row["budget"] = label
    append_results(out_root / "results.md", rows)
    print(f"{panel['name']}: {len(rows)} rows, {time.perf_counter() - start:.0f} s, plot {png}")
    bad = [f"{r['method']} ({r['status']})" for r in rows if r["status"] in ("diverged", "failed")]
    if bad:
        print(f"{panel['name']}: not completed: {', '.join(bad)}")
    return png


def _missing_data(panel: dict, budget: str, overrides: dict) -> str:
    """Why the panel's data cannot be read ('' when it can): builds the first method's task."""
    config = next(iter(panel_configs(panel, budget, overrides).values()))
    try:
        _task(config)
    except DatasetError as err:
        return str(err)
    return ""


# ---------------------------------------------------------------------------- the commands


def add_commands(sub) -> None:
    """Add ``reproduce`` and ``tune`` to the ``targetprop`` parser's sub-parsers ``sub``."""
    from .tuning import add_tune

    _add_reproduce(sub)
    add_tune(sub)


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a figure of the paper (its panels' methods), plot it, tabulate it",
                       description="Run every panel of a figure (files in targetprop/configs), draw a PNG per "
                                   "panel, append to OUT/results.md. Panels whose data is missing are skipped.")
    p.add_argument("figure", choices=FIGURES)
    p.add_argument("--panel", help="run only this panel (a built-in name)")
    p.add_argument("--method", action="append", default=[], metavar="NAME",
                   help="run only this method of the panel (needs --panel where the figure has several; "
                        "repeatable; runs in the order given; "
                        "the plot shows every method already run in OUT)")
    p.add_argument("--budget", choices=BUDGETS, default="short", help="full: the paper's; short: minutes (default)")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="output folder (default runs/reproduce)")
    p.add_argument("--data-dir", help="image tasks: folder of the data files (default: $TARGETPROP_DATA)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a setting of every method (e.g. iterations=100, task.k=4; repeatable)")
    p.add_argument("--threads", type=int, help=threads.HELP)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace runs in OUT that have other settings, and "
                                                            "run finished ones again")
    p.epilog = EXIT_HELP
    p.set_defaults(handler=_reproduce, subparser=p)


def _reproduce(args, parser) -> int:
    try:
        overrides = dict(parse_setting(s) for s in args.set)
        names = [args.panel] if args.panel else panels_of(args.figure)
        for name in names:
            if load_panel(name)["figure"] != args.figure:
                raise ValueError(f"panel {name!r} is not part of {args.figure}")
        if args.method:
            if len(names) != 1:
                raise ValueError(f"--method needs --panel ({args.figure} has {len(names)} panels)")
            if load_panel(names[0]).get("kind", "curves") != "curves":
                raise ValueError(f"--method applies to curves panels; {names[0]!r} is a grid")
            check_methods(load_panel(names[0]), args.method)
    except ValueError as err:
        parser.error(str(err))
    pngs = []
    try:
        for name in names:
            pngs.append(reproduce_panel(name, args.budget, args.out, data_dir=args.data_dir, overrides=overrides,
                                        quiet=args.quiet, methods=args.method, overwrite=args.overwrite))
    except Stopped as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return err.code
    except ValueError as err:  # e.g. a run with other settings in OUT
        parser.error(str(err))
    print(f"results: {args.out / 'results.md'}")
    return 0 if any(png is not None for png in pngs) else EXIT_INCOMPLETE


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE``, VALUE read as JSON when it parses (numbers, true, null), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), _json_or_text(raw)


def _json_or_text(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
