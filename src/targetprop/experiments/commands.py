"""The ``compare``, ``plot`` and ``table`` commands: a comparison file's methods run one after
another, and tables and curves of finished runs.

A comparison file (``targetprop compare FILE.toml``, or the name of a built-in one in
``targetprop/configs``)::

    description = "what this compares"      # optional, printed first
    out = "runs/demo"                        # optional: one run per method in OUT/METHOD
    plot = "curves.png"                      # optional: draw all runs into OUT/curves.png
    [common]                                 # settings shared by every method
    task = "temporal-order"
    length = 60
    [methods.tp]                             # one table per method, run in this order
    rule = "linearized"
    lr = 0.1

Settings are the fields of :class:`targetprop.training.config.TrainConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from ..argtypes import positive_int
from ..training import distributed, threads
from ..training.rundir import read_run_options
from ..training.trainer import Trainer, TrainConfig, check_run_dir, read_metrics, read_run_config

COMPARE_KEYS = ("description", "out", "plot", "common", "methods")
EXIT_INTERRUPTED = 130


def add_commands(sub) -> None:
    _add_compare(sub)
    _add_plot(sub)
    _add_table(sub)


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


# ---------------------------------------------------------------------------- compare


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="run several methods on one task and print a table",
                       description="Run the methods of a comparison file one after another, print a table "
                                   "(final accuracy, iterations to 100%, wall time) and optionally plot.",
                       epilog=f"Built-in comparisons: {', '.join(builtin_configs())}.")
    p.add_argument("config", metavar="CONFIG", help="a .toml file, or the name of a built-in comparison")
    p.add_argument("--out", type=Path, help="directory of the runs (default: the file's `out`, else runs/NAME)")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw the curves there (default: the file's `plot`, inside the output directory)")
    p.add_argument("--iterations", type=positive_int, help="override every method's iterations")
    p.add_argument("--overwrite", action="store_true", help="replace runs with different settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=positive_int, help=threads.HELP)
    p.set_defaults(handler=_compare, subparser=p)


def builtin_configs() -> list[str]:
    """Names of the comparison files shipped in ``targetprop/configs`` (figure panels, which
    ``targetprop reproduce`` runs, have a ``figure`` key and are not comparisons)."""
    folder = resources.files("targetprop") / "configs"
    return sorted(f.name[:-5] for f in folder.iterdir()
                  if f.name.endswith(".toml") and "figure" not in tomllib.loads(f.read_text(encoding="utf-8")))


def load_comparison(spec: str) -> tuple[str, dict]:
    """``(name, table)`` of a comparison file given by path or built-in name; ValueError if bad."""
    path = Path(spec)
    if path.is_file():
        name, text = path.stem, path.read_text(encoding="utf-8")
    elif spec in builtin_configs():
        name, text = spec, (resources.files("targetprop") / "configs" / f"{spec}.toml").read_text(encoding="utf-8")
    else:
        raise ValueError(f"no comparison file {spec!r} (not a file, nor a built-in: {', '.join(builtin_configs())})")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{spec}: not valid TOML: {err}") from None
    unknown = sorted(set(table) - set(COMPARE_KEYS))
    if unknown:
        raise ValueError(f"{spec}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(COMPARE_KEYS)})")
    if not isinstance(table.get("methods"), dict) or not table["methods"]:
        raise ValueError(f"{spec}: needs at least one [methods.NAME] table")
    return name, table


def method_configs(spec: str, table: dict, iterations: int | None = None) -> dict[str, TrainConfig]:
    """One validated config per method: ``[common]`` updated by ``[methods.NAME]``."""
    common = table.get("common", {})
    if not isinstance(common, dict):
        raise ValueError(f"{spec}: [common] must be a table")
    configs = {}
    for name, settings in table["methods"].items():
        if not isinstance(settings, dict):
            raise ValueError(f"{spec}: methods.{name} must be a table")
        values = {**common, **settings, **({"iterations": iterations} if iterations else {})}
        values.setdefault("label", name)
        try:
            configs[name] = TrainConfig.from_dict(values)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{spec}: methods.{name}: {err}") from None
    return configs


def _compare(args, parser) -> int:
    if distributed.environment() is not None:
        parser.error("compare runs in one process; under torchrun, train one run at a time with train")
    try:
        name, table = load_comparison(args.config)
        configs = method_configs(args.config, table, args.iterations)
    except ValueError as err:
        parser.error(str(err))
    out = args.out or Path(table.get("out", Path("runs") / name))
    trainers = {m: build_trainer(parser, dataclasses.asdict(c), where=f"methods.{m}: ") for m, c in configs.items()}
    existing = {}
    for method, trainer in trainers.items():
        try:
            existing[method] = check_run_dir(out / method, trainer.config, overwrite=args.overwrite)
        except ValueError as err:
            parser.error(str(err))
    if table.get("description"):
        print(table["description"])
    summaries = {}
    for method, trainer in trainers.items():
        if existing[method] is not None and existing[method].state != "empty":
            print(existing[method].describe(out / method), flush=True)
        threads.apply(trainer.task, trainer.config)
        summaries[method] = summary = trainer.run(out / method, overwrite=args.overwrite, progress=_progress(args))
        print(summary_line(out / method, summary))
        if summary["status"] == "interrupted":
            break
    text = comparison_table(summaries, trainers)
    print(text)
    bad = [f"{m} ({s['status']})" for m, s in summaries.items() if s["status"] in ("diverged", "failed")]
    if bad:
        print(f"not completed: {', '.join(bad)}")
    (out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    plot = args.plot or (out / table["plot"] if table.get("plot") else None)
    if plot:
        from .plotting import plot_runs

        print(f"curves: {plot_runs([out / m for m in summaries], plot, title=_title(trainers))}")
    stopped = [t.stop_signal for m, t in trainers.items() if summaries.get(m, {}).get("status") == "interrupted"]
    return (128 + stopped[0] if stopped[0] else EXIT_INTERRUPTED) if stopped else 0


def comparison_table(summaries: dict[str, dict], trainers: dict[str, Trainer]) -> str:
    """A Markdown table: one row per method."""
    lines = ["| method | settings | status | iterations | final test accuracy | best (at iteration) "
             "| iterations to 100% | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for method, s in summaries.items():
        lines.append(f"| {method} | {trainers[method].config.method()} | {_outcome(s)} | {s['wall_time']:.1f} s |")
    return "\n".join(lines)


def _outcome(s: dict) -> str:
    """The summary's status, iterations, final and best test accuracy and iterations to 100%, as table cells."""
    if "best_test_accuracy" not in s:  # written by targetprop 0.1.0 before the best was recorded
        best = "—"
    else:
        best = "n/a" if s["best_test_accuracy"] is None else f"{s['best_test_accuracy']:.1%} ({s['best_at']})"
    reached = "not reached" if s["iteration_to_100"] is None else str(s["iteration_to_100"])
    return f"{s['status']} | {s['iterations']} | {_percent(s['final_test_accuracy'])} | {best} | {reached}"


def runs_table(paths) -> str:
    """A Markdown table of finished (or stopped) runs: one row per run directory under ``paths``."""
    from .plotting import find_runs

    lines = ["| run | settings | status | iterations | final test accuracy | best (at iteration) "
             "| iterations to 100% | train time | wall time | threads |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in find_runs(paths):
        try:
            settings = TrainConfig.from_dict(read_run_config(run)).method()
            summary = run / "summary.json"
            s = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else _partial_summary(run)
            threads = (s.get("environment") or {}).get("threads") or read_run_options(run).get("threads", "?")
            lines.append(f"| {run} | {settings} | {_outcome(s)} | {s['train_time']:.0f} s | {s['wall_time']:.0f} s "
                         f"| {threads} |")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{run}: unreadable run files ({err})") from None
    return "\n".join(lines)


def _partial_summary(run: Path) -> dict:
    """A summary-like dict from the metrics of a run that has no summary yet (running or killed)."""
    m = read_metrics(run)
    its, acc = [int(i) for i in m["iteration"]], m["test_accuracy"]
    s = {"status": "no summary (running?)", "iterations": 0, "final_test_accuracy": None, "best_test_accuracy": None,
         "best_at": None, "iteration_to_100": None, "train_time": 0.0, "wall_time": 0.0}
    if its:
        best = max(range(len(acc)), key=acc.__getitem__)
        s.update(iterations=its[-1], final_test_accuracy=acc[-1], best_test_accuracy=acc[best], best_at=its[best],
                 iteration_to_100=next((i for i, a in zip(its, acc) if a >= 1.0), None),
                 train_time=m["time"][-1], wall_time=m["wall_time"][-1])
    return s


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


# ---------------------------------------------------------------------------- plot


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw loss and accuracy curves of runs into a PNG",
                       description="Loss and test accuracy against iterations and against training time, "
                                   "one line per run.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or directories of runs)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PNG", help="the image to write")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(handler=_plot, subparser=p)


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="print a Markdown table of runs (settings, status, accuracy, times)",
                       description="One row per run: its settings, status, iterations, final and best test "
                                   "accuracy, iterations to 100%%, training and wall time.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or directories of runs)")
    p.set_defaults(handler=_table, subparser=p)


def _table(args, parser) -> int:
    try:
        print(runs_table(args.runs))
    except ValueError as err:
        parser.error(str(err))
    return 0


def _plot(args, parser) -> int:
    from .plotting import plot_runs

    if args.output.suffix.lower() != ".png":
        parser.error(f"the output must be a .png file, got {args.output}")
    try:
        print(plot_runs(args.runs, args.output, title=args.title))
    except ValueError as err:
        parser.error(str(err))
    return 0


def build_trainer(parser, values: dict, where: str = "") -> Trainer:
    """A validated trainer, or a one-line error (exit code 2) naming what is wrong."""
    try:
        return Trainer(TrainConfig.from_dict(values))
    except (ValueError, TypeError, OSError) as err:
        parser.error(f"{where}{err}")


def summary_line(out: Path, s: dict) -> str:
    acc = _percent(s["final_test_accuracy"])
    reached = ("100% not reached" if s["iteration_to_100"] is None
               else f"100% first at iteration {s['iteration_to_100']}")
    why = f" ({s['message']})" if s["message"] else ""
    return (f"{s['label']}: {s['status']}{why} after {s['iterations']} iterations, test accuracy {acc}, "
            f"{reached}, {s['wall_time']:.1f} s -> {out}")


def _title(trainers: dict[str, Trainer]) -> str:
    cfg = next(iter(trainers.values())).config
    task = next(iter(trainers.values())).task
    return f"{cfg.task}, T={task.length}, seed {cfg.seed}"
