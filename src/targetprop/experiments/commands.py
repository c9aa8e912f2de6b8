"""The experiment commands of ``targetprop``: ``compare``, ``plot``, ``table``, ``reproduce`` and ``tune``.

This module owns their argument parsing, turning a user's bad input into a one-line error (exit
code 2, through the parser's ``error``), and what they print: it shows the experiments' log
(run reused, continued, finished; panel skipped) on stdout while a command runs. The files they
read are :mod:`~targetprop.experiments.specs`' (comparison files and panels share one format);
running is :mod:`~targetprop.experiments.pipeline`'s and :mod:`~targetprop.experiments.runner`'s,
tables :mod:`~targetprop.experiments.reports`', pictures :mod:`~targetprop.experiments.plotting`'s.

Exit codes: 0 done (runs that diverged or failed are listed), 1 nothing could be done
(``reproduce``: no panel's data; ``tune``: every run diverged or failed), 2 bad input,
128 + the signal when a run was interrupted (130 SIGINT, 143 SIGTERM; the same command continues).
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

from ..argtypes import key_value, positive_int, seeds, wants_progress
from ..training import distributed, rundir, threads
from . import pipeline, reports, specs, tuning
from .runner import RunRefused, Stopped, task_for

EXIT_INCOMPLETE = 1
#: tune's heat map of the metric it selects by: its caption and how it is coloured
HEATMAPS = {"auc": ("area under the training loss", "auc"),
            "late_accuracy": ("test accuracy, mean of the last quarter of the evaluations", "accuracy")}
REUSE_HELP = ("The same command reuses finished runs in OUT that have the same settings (nothing is trained "
              "again) and continues unfinished ones from their newest checkpoint; a run with other settings "
              "is refused unless --overwrite.")
EXIT_HELP = ("exit codes: 0 done (runs that diverged or failed are listed), 1 nothing could be done (reproduce: "
             "no panel's data; tune: every run diverged or failed), 2 bad input, 130/143 interrupted by "
             "SIGINT/SIGTERM (the same command continues). " + REUSE_HELP)


def add_commands(sub) -> None:
    """Add ``compare``, ``plot``, ``table``, ``reproduce`` and ``tune`` to the ``targetprop``
    parser's sub-parsers ``sub``."""
    _add_compare(sub)
    _add_plot(sub)
    _add_table(sub)
    _add_reproduce(sub)
    _add_tune(sub)


class _Echo(logging.Handler):
    """Prints the experiments' log records to the current ``sys.stdout`` (the commands' output)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


@contextlib.contextmanager
def _echo_log():
    """Show ``targetprop.experiments``'s INFO records on stdout for the duration of a command."""
    logger, handler = logging.getLogger("targetprop.experiments"), _Echo()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _common_options(p, out_help: str, overwrite_help: str) -> None:
    p.add_argument("--out", type=Path, help=out_help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=positive_int, help=threads.HELP)
    p.epilog = EXIT_HELP


def _interrupted(parser, err: Stopped) -> int:
    print(f"{parser.prog}: {err}", file=sys.stderr)
    return err.code


# ---------------------------------------------------------------------------- compare


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="run several methods on one task and print a table",
                       description="Run the methods of a comparison file one after another, print a table "
                                   "(final accuracy, iterations to 100%, area under the loss, times) and "
                                   "optionally plot. Finished runs with the same settings are reused.")
    p.add_argument("config", metavar="CONFIG", nargs="+",
                   help="a .toml file, or the name of a built-in comparison "
                        f"({', '.join(specs.comparison_names())}); several run one after another, each "
                        "into its own folder (every file checked before any run)")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw the curves there (default: the file's `plot`, inside the output directory)")
    p.add_argument("--iterations", type=positive_int, help="override every method's iterations")
    p.add_argument("--seed", action="append", type=seeds, metavar="N[,N…]",
                   help="run every method once per seed, into OUT/METHOD-seedN (labelled METHOD seed N); the "
                        "table shows each seed and the mean per method (repeatable, or a list: --seed 1,2,3; "
                        "curves files only; default: the file's seed, one run per method in OUT/METHOD)")
    _common_options(p, "directory of the runs (default: the file's `out`, else runs/NAME)",
                    "replace runs with different settings, and run finished ones again")
    p.set_defaults(handler=_compare, subparser=p)


def _compare(args, parser) -> int:
    if distributed.environment() is not None:
        parser.error("compare runs in one process; under torchrun, train one run at a time with train")
    if len(args.config) > 1 and (args.out or args.plot):
        parser.error("--out and --plot name one file's folder and image: give one CONFIG with them")
    overrides = {"iterations": args.iterations} if args.iterations else {}
    seed_list = list(dict.fromkeys(seed for given in args.seed or [] for seed in given))
    plans = []
    try:  # every file's folders checked before any run
        for name in args.config:
            table = specs.load_comparison(name)
            out = args.out or Path(table.get("out", Path("runs") / table["name"]))
            planned = pipeline.plan(table, None, out, overrides=overrides, seeds=seed_list, overwrite=args.overwrite)
            missing = pipeline.missing_data(table, None, overrides)
            if missing:
                raise ValueError(f"{table['name']}: data not available ({missing})")
            plans.append((planned, specs.configs(table, None, overrides)))
    except ValueError as err:
        parser.error(str(err))
    for planned, configs in plans:
        code = _compare_one(planned, configs, args, parser, seed_list)
        if code:
            return code
    return 0


def _compare_one(planned, configs, args, parser, seed_list) -> int:
    """Run one planned comparison file: its table printed and written to OUT/comparison.md, its plot."""
    table, out = planned.table, planned.out
    if table.get("description"):
        print(table["description"])
    with _echo_log():
        try:
            outcome = pipeline.execute(planned, progress=wants_progress(args))
        except Stopped as err:
            return _interrupted(parser, err)
        except RunRefused as err:
            parser.error(str(err))
    text = reports.results_table(["method"], [([name], run) for name, run in outcome.table_rows()])
    print(text)
    bad = reports.not_completed(outcome.summaries.items())
    if bad:
        print(bad)
    (out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    plot = args.plot or (out / table["plot"] if table.get("plot") else None)
    if plot:
        first = next(iter(configs.values()))
        seeding = f"seeds {', '.join(map(str, seed_list))}" if seed_list else f"seed {first.seed}"
        title = table.get("title") or f"{first.task}, T={task_for(first).length}, {seeding}"
        print(f"curves: {pipeline.draw(table, None, out, outcome, plot, title=title, detailed=True)}")
    return 0


# ---------------------------------------------------------------------------- plot, table


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw loss and accuracy curves of runs into a PNG",
                       description="Loss and test accuracy against iterations and against training time, "
                                   "one line per run.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or directories of runs)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PNG", help="the image to write")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(handler=_plot, subparser=p)


def _plot(args, parser) -> int:
    from .plotting import plot_runs

    if args.output.suffix.lower() != ".png":
        parser.error(f"the output must be a .png file, got {args.output}")
    try:
        runs = rundir.find_runs(args.runs)
    except ValueError as err:
        parser.error(str(err))
    print(plot_runs(runs, args.output, title=args.title))
    return 0


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="print a Markdown table of runs (settings, status, accuracy, times)",
                       description="One row per run: its settings, status, iterations, final and best test "
                                   "accuracy, iterations to 100%, area under the training loss, training "
                                   "and wall time, threads.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or directories of runs)")
    p.set_defaults(handler=_table, subparser=p)


def _table(args, parser) -> int:
    try:
        print(reports.results_table(["run"], [([run], run) for run in rundir.find_runs(args.runs)]))
    except ValueError as err:  # not a run, or a run's files unreadable
        parser.error(str(err))
    return 0


# ---------------------------------------------------------------------------- reproduce


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a figure of the paper (its panels' methods), plot it, tabulate it",
                       description="Run every panel of a figure (files in targetprop/configs), draw a PNG per "
                                   "panel, append to OUT/results.md. Panels whose data is missing are skipped.")
    p.add_argument("figure", choices=specs.FIGURES)
    p.add_argument("--panel", help="run only this panel (a built-in name or a panel file)")
    p.add_argument("--method", action="append", default=[], metavar="NAME",
                   help="run only this method of the panel (needs --panel where the figure has several; "
                        "repeatable; runs in the order given; the plot shows every method already run in OUT)")
    p.add_argument("--budget", choices=specs.BUDGETS, default="short",
                   help="full: the paper's; short: minutes (default)")
    p.add_argument("--data-dir", help="image tasks: folder of the data files (default: $TARGETPROP_DATA)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], type=key_value,
                   help="override a setting of every method (e.g. iterations=100, task.k=4; none for off; "
                        "repeatable)")
    _common_options(p, "output folder (default runs/reproduce)",
                    "replace runs in OUT that have other settings, and run finished ones again")
    p.set_defaults(handler=_reproduce, subparser=p, out=None)


def _reproduce(args, parser) -> int:
    out = args.out or Path("runs/reproduce")
    overrides = dict(args.set)
    try:
        names = [args.panel] if args.panel else specs.panels_of(args.figure)
        for name in names:
            if specs.load_panel(name)["figure"] != args.figure:
                raise ValueError(f"panel {name!r} is not part of {args.figure}")
        if args.method:
            if len(names) != 1:
                raise ValueError(f"--method needs --panel ({args.figure} has {len(names)} panels)")
            specs.check_methods(specs.load_panel(names[0]), args.method)
    except ValueError as err:
        parser.error(str(err))
    with _echo_log():
        try:  # every panel's folders checked before any run
            plans = [pipeline.plan_panel(name, args.budget, out, data_dir=args.data_dir, overrides=overrides,
                                         methods=args.method, overwrite=args.overwrite) for name in names]
        except ValueError as err:
            parser.error(str(err))
        try:
            for planned in filter(None, plans):
                pipeline.reproduce(planned, out / "results.md", progress=wants_progress(args))
        except Stopped as err:
            return _interrupted(parser, err)
        except RunRefused as err:
            parser.error(str(err))
    print(f"results: {out / 'results.md'}")
    return 0 if any(plans) else EXIT_INCOMPLETE


# ---------------------------------------------------------------------------- tune


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="grid search over one or two settings, selected by area under the loss "
                                    "or by late test accuracy",
                       description="Run a one- or two-axis grid over settings, print the rule and the tables of "
                                   "what it selects by (and of the areas under the training-loss curve), write "
                                   "OUT/best.json (the selected settings), OUT/tune.md and, for two axes, a "
                                   "heat map OUT/heatmap.png (Fig. 6a). Runs never stop early on accuracy.")
    p.add_argument("--panel", help="start from this panel's settings (default: the task defaults)")
    p.add_argument("--method", help="the panel's method to start from (default: its first)")
    p.add_argument("--budget", choices=specs.BUDGETS, default="short",
                   help="with --panel, which of its budgets the base settings take (default: short); without "
                        "a panel the task's defaults apply (set --set iterations=N to shorten runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], type=key_value,
                   help="a base setting (repeatable)")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=LO:HI[:N]|KEY=V1,V2,…",
                   type=tuning.parse_axis,
                   help="an axis: a log grid from LO to HI (one point per decade, or N points) or a list")
    p.add_argument("--select", choices=list(reports.SELECTIONS), default="loss-auc",
                   help="how the setting is selected: " + "; ".join(
                       f"{name}: {s.rule}" for name, s in reports.SELECTIONS.items())
                        + f"; {reports.SELECTION_NOTE} (default: loss-auc)")
    p.add_argument("--title", help="the heat map's title (default: from the task and iterations)")
    _common_options(p, "output folder (default runs/tune)", "replace runs in OUT that have other settings")
    p.set_defaults(handler=_tune, subparser=p)


def _tune(args, parser) -> int:
    from . import plotting

    out = args.out or Path("runs/tune")
    selection = reports.SELECTIONS[args.select]
    try:
        base = {}
        if args.panel:
            panel = specs.load_panel(args.panel)
            method = specs.check_methods(panel, [args.method] if args.method else [])[0]
            base = specs.method_settings(panel, args.budget)[method]
        for key, value in args.set:
            base = specs.set_value(base, key, value)
        for key, _ in args.grid:
            specs.set_value({}, key, None)
        grid, jobs = tuning.plan(base, args.grid, out, overwrite=args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    with _echo_log():
        try:
            cells, best = tuning.tune(grid, jobs, selection=selection, progress=wants_progress(args))
        except Stopped as err:
            return _interrupted(parser, err)
        except RunRefused as err:
            parser.error(str(err))
    text = tuning.tune_report(grid, cells, best, selection)
    print(text)
    print("best:", json.dumps(best) if best else "none (every run diverged or failed)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.md").write_text(text + "\n", encoding="utf-8")
    (out / "best.json").write_text(json.dumps(best, indent=2) + "\n", encoding="utf-8")
    if "y" in grid:
        shown = HEATMAPS[selection.metric]
        png = plotting.plot_heatmaps({shown[0]: reports.grid_matrix(cells, grid, selection.metric)},
                                     grid["x_values"], grid["y_values"], out / "heatmap.png",
                                     xlabel=grid["x"], ylabel=grid["y"], metric=shown[1],
                                     title=args.title or tuning.tune_title(base, [key for key, _ in args.grid]))
        print(f"heat map: {png}")
    return 0 if best else EXIT_INCOMPLETE
