"""Experiment files: finding, loading and validating them, and the settings they give each method.

This module owns the one format shared by ``targetprop compare`` and ``targetprop reproduce``
(and read by ``targetprop tune --panel``). A **comparison file**::

    description = "what this compares"      # optional, printed first
    title = "…"                              # optional: the plot's title
    out = "runs/demo"                        # optional: one run per method in OUT/METHOD
    plot = "curves.png"                      # optional: draw the runs into OUT/curves.png
    kind = "curves"                          # curves (default) | grid
    [common]                                 # settings shared by every method (TrainConfig fields)
    task = "temporal-order"
    [methods.tp]                             # one table per method, run in this order
    rule = "linearized"

A **panel** (one per figure panel, ``configs/fig*.toml``) is a comparison file with a
``figure`` and its budgets, and without ``out`` and ``plot`` (``reproduce`` names its folders
and images after the panel)::

    figure = "fig3"                # reproduce fig3 runs every fig3 panel
    [budgets.full]                 # settings laid over [common]: the paper's budget
    iterations = 40000
    [budgets.short]                # a budget that finishes in minutes
    iterations = 2000

A ``grid`` (kind = "grid")::

    [grid]
    x = "lr"                       # a setting (``task.KEY`` / ``layer.KEY`` for a task / layer option)
    x_values = [1e-4, 1e-2, 1]
    y = "reg"                      # optional second axis
    y_values = [0.0, 1.0]
    metric = "auc"                 # what the heat map shows: auc (area under the training loss) | accuracy
    [grid.select]                  # optional: per cell, the best of these settings by area under the loss
    lr = [1e-2, 1e-1]              # (a method's own ``select`` table replaces it for that method)

A budget may hold a ``grid`` table laid over ``[grid]`` and ``[budgets.B.methods.NAME]``
tables laid over the methods'. Settings are layered ``[common]``, then the budget, then the
method's table, then the command line's overrides. TOML has no null: the string ``"none"`` is
"off" (None) for any optional setting, in either kind of file and on the command line
(:func:`targetprop.training.config.merge`, the one merge of settings).
"""
from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from ..training import config
from ..training.config import FIELDS, TrainConfig

FIGURES = ("fig3", "fig4", "fig6a", "fig6b", "linearized-vs-difference")
BUDGETS = ("full", "short")
KINDS = ("curves", "grid")
METRICS = ("auc", "accuracy")
SHARED_KEYS = ("description", "title", "kind", "grid", "common", "methods")
COMPARISON_KEYS = SHARED_KEYS + ("out", "plot")
PANEL_KEYS = SHARED_KEYS + ("figure", "budgets")
OPTION_PREFIXES = {"task": "task_options", "layer": "layer_options"}


# ---------------------------------------------------------------------------- finding and loading


def _builtin_folder():
    return resources.files("targetprop") / "configs"


def builtin_names() -> list[str]:
    """Names of every experiment file shipped in ``targetprop/configs``."""
    return sorted(f.name[:-5] for f in _builtin_folder().iterdir() if f.name.endswith(".toml"))


def _is_panel(name: str) -> bool:
    return "figure" in _read_toml(_builtin_folder() / f"{name}.toml", name)


def comparison_names() -> list[str]:
    """The built-in comparison files (``targetprop compare NAME``)."""
    return [n for n in builtin_names() if not _is_panel(n)]


def panel_names() -> list[str]:
    """The built-in panels (``targetprop reproduce``): the files with a ``figure`` key."""
    return [n for n in builtin_names() if _is_panel(n)]


def _read_toml(path, spec: str) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{spec}: not valid TOML: {err}") from None


def load(spec: str) -> dict:
    """The validated table of an experiment file given by path or built-in name, with its
    ``name`` added (the file's stem); a ValueError names what is wrong."""
    path = Path(spec)
    if path.is_file():
        table, name = _read_toml(path, spec), path.stem
    elif spec in builtin_names():
        table, name = _read_toml(_builtin_folder() / f"{spec}.toml", spec), spec
    else:
        raise ValueError(f"no experiment file {spec!r} (not a file, nor a built-in: {', '.join(builtin_names())})")
    check(spec, table)
    return {**table, "name": name}


def load_comparison(spec: str) -> dict:
    """A comparison file (:func:`load`); a panel is refused, naming ``reproduce``."""
    table = load(spec)
    if is_panel(table):
        raise ValueError(f"{spec} is a figure panel: run it with targetprop reproduce {table['figure']} --panel {spec}")
    return table


def load_panel(spec: str) -> dict:
    """A panel (:func:`load`); a comparison file is refused, naming ``compare``."""
    table = load(spec)
    if not is_panel(table):
        raise ValueError(f"{spec} is not a figure panel (no figure key): run it with targetprop compare {spec}")
    return table


def is_panel(table: dict) -> bool:
    return "figure" in table


def panels_of(figure: str) -> list[str]:
    """The built-in panels of ``figure`` (e.g. ``fig3``), in name order."""
    return [n for n in panel_names() if load(n)["figure"] == figure]


# ---------------------------------------------------------------------------- validation


def check(spec: str, table: dict) -> None:
    """A ValueError, prefixed with ``spec``, unless ``table`` is a valid comparison file or panel
    (see the module docstring): its keys, kind, grid and every method's settings in every budget."""
    panel = is_panel(table) or "budgets" in table
    allowed = PANEL_KEYS if panel else COMPARISON_KEYS
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        kind = "a panel (a file with figure and budgets)" if panel else "a comparison file"
        raise ValueError(f"{spec}: unknown key(s) {', '.join(unknown)} (allowed in {kind}: {', '.join(allowed)})")
    if panel:
        if table.get("figure") not in FIGURES:
            raise ValueError(f"{spec}: figure must be one of {', '.join(FIGURES)}, got {table.get('figure')!r}")
        missing = [b for b in BUDGETS if not isinstance(table.get("budgets", {}).get(b), dict)]
        if missing:
            raise ValueError(f"{spec}: needs [budgets.{missing[0]}]")
    if table.get("kind", "curves") not in KINDS:
        raise ValueError(f"{spec}: kind must be one of {', '.join(KINDS)}, got {table.get('kind')!r}")
    if not isinstance(table.get("common", {}), dict):
        raise ValueError(f"{spec}: [common] must be a table")
    if not isinstance(table.get("methods"), dict) or not table["methods"]:
        raise ValueError(f"{spec}: needs at least one [methods.NAME] table")
    for name, settings in table["methods"].items():
        if not isinstance(settings, dict):
            raise ValueError(f"{spec}: methods.{name} must be a table")
    spec_table = {**table, "name": spec}
    for budget in budgets_of(table):
        if table.get("kind") == "grid":
            _check_grid(spec, grid_of(spec_table, budget))
        elif any("select" in t for t in method_tables(spec_table, budget).values()):
            raise ValueError(f"{spec}: select applies to grids (kind = \"grid\")")
        configs(spec_table, budget)


def _check_grid(spec: str, grid: dict) -> None:
    if grid.get("metric", "auc") not in METRICS or "x" not in grid or "x_values" not in grid:
        raise ValueError(f"{spec}: [grid] needs x, x_values and a metric in {', '.join(METRICS)}")
    if ("y" in grid) != ("y_values" in grid):
        raise ValueError(f"{spec}: [grid] needs y and y_values together")
    for key in [grid["x"], *([grid["y"]] if "y" in grid else []), *grid.get("select", {})]:
        try:
            set_value({}, key, None)
        except ValueError as err:
            raise ValueError(f"{spec}: [grid]: {err}") from None


def budgets_of(table: dict) -> tuple:
    """The budgets to run a file at: a panel's :data:`BUDGETS`, ``(None,)`` for a comparison file."""
    return BUDGETS if is_panel(table) else (None,)


# ---------------------------------------------------------------------------- settings


def set_value(values: dict, key: str, value) -> dict:
    """``values`` with the setting ``key`` set: a TrainConfig field (``"none"`` unsets an optional
    one), or ``task.K`` / ``layer.K``."""
    prefix, dot, rest = key.partition(".")
    values = {**values}
    if dot and prefix in OPTION_PREFIXES:
        field = OPTION_PREFIXES[prefix]
        values[field] = {**values.get(field, {}), rest: value}
    elif key in FIELDS:
        values[key] = config.unset_none(key, value)
    else:
        raise ValueError(f"unknown setting {key!r} (a TrainConfig field, task.KEY or layer.KEY)")
    return values


def _budget_table(table: dict, budget: str | None) -> dict:
    return table["budgets"][budget] if budget is not None else {}


def method_tables(table: dict, budget: str | None) -> dict[str, dict]:
    """The ``[methods.NAME]`` tables with the budget's ``[budgets.B.methods.NAME]`` laid over them."""
    extra = _budget_table(table, budget).get("methods", {})
    return {name: {**settings, **extra.get(name, {})} for name, settings in table["methods"].items()}


def method_settings(table: dict, budget: str | None = None, overrides: dict | None = None) -> dict[str, dict]:
    """Per method: ``[common]``, the budget, the method's table (less its ``select``), then
    ``overrides`` (keys as :func:`set_value` takes them); ``label`` defaults to the method's name."""
    base = {k: v for k, v in _budget_table(table, budget).items() if k not in ("grid", "methods")}
    out = {}
    for name, settings in method_tables(table, budget).items():
        values = config.merge(table.get("common", {}), base, {k: v for k, v in settings.items() if k != "select"})
        for key, value in (overrides or {}).items():
            values = set_value(values, key, value)
        values.setdefault("label", name)
        out[name] = values
    return out


def configs(table: dict, budget: str | None = None, overrides: dict | None = None) -> dict[str, TrainConfig]:
    """Validated configs of the file's methods; a ValueError names the file and the method."""
    out = {}
    for name, values in method_settings(table, budget, overrides).items():
        try:
            out[name] = TrainConfig.from_dict(values)
        except ValueError as err:
            raise ValueError(f"{table['name']}: methods.{name}: {err}") from None
    return out


def check_methods(table: dict, methods) -> list[str]:
    """The methods to run: ``methods`` in the order given (all of them when empty); a ValueError
    names an unknown one and lists the file's."""
    if not methods:
        return list(table["methods"])
    unknown = [m for m in methods if m not in table["methods"]]
    if unknown:
        raise ValueError(f"{table['name']!r} has no method {unknown[0]!r} (its methods: {', '.join(table['methods'])})")
    return list(dict.fromkeys(methods))


# ---------------------------------------------------------------------------- grids


def grid_of(table: dict, budget: str | None) -> dict:
    """The ``[grid]`` with the budget's ``grid`` table laid over it."""
    return {**table.get("grid", {}), **_budget_table(table, budget).get("grid", {})}


def grid_cells(grid: dict) -> list[tuple]:
    """``(x, y)`` pairs of the grid (``y`` is None for a one-axis grid)."""
    return list(itertools.product(grid["x_values"], grid.get("y_values") or [None]))


def select_settings(grid: dict) -> list[dict]:
    """The settings tried in each cell (``[grid.select]``'s product; one empty dict if none)."""
    select = grid.get("select", {})
    return [dict(zip(select, combo)) for combo in itertools.product(*select.values())]


def cell_name(grid: dict, x, y, extra: dict | None = None) -> str:
    """``x=…,y=…,k=v`` naming a grid cell (and the run of one of its select settings)."""
    parts = [f"{grid['x']}={x}"] + ([f"{grid['y']}={y}"] if y is not None else [])
    return ",".join(parts + [f"{k}={v}" for k, v in (extra or {}).items()])
