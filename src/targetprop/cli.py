"""The ``targetprop`` command: ``train`` one run, ``compare`` methods from a TOML file, ``plot`` runs.

This module owns the command line: parsing, turning bad input into one-line errors (exit code
2, through ``argparse``'s ``parser.error``), progress and printed summaries. Training itself is
:mod:`targetprop.training.trainer`'s; curves are :mod:`targetprop.experiments.plotting`'s.

Exit codes (:data:`EXIT_HELP`): ``train`` 0 completed, 3 diverged, 4 failed (a lost process
under torchrun included); ``compare``, ``reproduce`` and ``tune`` 0 when they did their job (the
runs that diverged or failed are listed), 1 when they could not; every command 2 for bad input,
130 when interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (``train`` saves a checkpoint first; the
same command, or ``train --resume RUN``, continues).

``train`` under ``torchrun --nproc-per-node N -m targetprop train …`` trains data-parallel
(:mod:`targetprop.training.distributed`): process 0 prints and writes the run's files.

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

Settings are the fields of :class:`targetprop.training.trainer.TrainConfig` (``targetprop train --help``
lists them with the command-line spelling, dashes for underscores).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

import torch

from . import __version__, diagnose

from .training import checkpoint, distributed, threads

from .experiments import pipeline

from .tasks import fetch
from .training.rundir import EXIT_CODES, read_run_options
from .tasks.registry import TASKS
from .training.trainer import (CHECKPOINT_EVERY, LOSSES, Trainer, TrainConfig, build_model, build_task, check_resume,
                      check_run_dir, read_metrics, read_run_config)

DEFAULTS = TrainConfig()
COMPARE_KEYS = ("description", "out", "plot", "common", "methods")
EXIT_INTERRUPTED = 130
EXIT_HELP = ("exit codes: 0 completed (or already finished), 3 diverged, 4 failed (a NaN/inf direction, a "
             "failed inverse, a lost process under torchrun), 2 bad input, 130 interrupted by Ctrl-C, 143 by "
             "SIGTERM (a checkpoint is saved first). Re-running the same command continues an unfinished run "
             "in --out and reuses a finished one; --overwrite starts it over.")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    threads.set_automatic(getattr(args, "threads", 0) is None)
    return args.handler(args, args.subparser)


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``targetprop train: error: … (see --help)``, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="targetprop",
        description="Train recurrent networks with target propagation (Roulet & Harchaoui) or BP, "
                    "compare methods, plot curves.")
    parser.add_argument("--version", action="version", version=f"targetprop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_compare(sub)
    _add_plot(sub)
    _add_table(sub)
    _add_bench(sub)
    _add_diagnose(sub)
    pipeline.add_commands(sub)  # reproduce, tune
    fetch.add_commands(sub)  # data fetch, data list
    return parser


# ---------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model on one task",
                       description="Train one model on one task; write OUT/config.json, OUT/metrics.csv "
                                   "(as it goes), OUT/checkpoints/ and OUT/summary.json. SIGINT or SIGTERM "
                                   "saves a checkpoint and stops; --resume OUT continues. Under torchrun "
                                   "(torchrun --nproc-per-node N -m targetprop train ...) the processes train "
                                   "data-parallel, each on its shard of every batch.")
    _add_settings(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="run directory (default: runs/TASK-RULE-sSEED)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over: replace the run in --out (its checkpoints included), whatever it holds")
    g.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the run in RUN from its newest valid checkpoint, with its settings; of the "
                        "options, only --iterations may change them (not below the iterations done)")
    g.add_argument("--checkpoint-every", type=_non_negative_int, metavar="N",
                   help=f"save a checkpoint every N iterations (0: only at the end and on SIGINT/SIGTERM) "
                        f"(default: the run's own when it continues, else {CHECKPOINT_EVERY})")
    g.add_argument("--diagnose-every", type=_non_negative_int, metavar="N",
                   help="every N iterations (at evaluations), append TP's diagnostics of one fixed batch "
                        "(targetprop diagnose: cosines with BP, horizons, shares) to OUT/diagnostics.csv; "
                        "targetprop plot draws them (default: the run's own when it continues, else never)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=_positive_int,
                   help="CPU threads for torch (default: the run's own when it continues, else 1 when "
                        "batch x hidden^2 < 2^19, where a second thread was measured not to pay, else torch's)")
    p.epilog = EXIT_HELP
    p.set_defaults(handler=_train, subparser=p)


def _add_settings(p) -> None:
    """The options of a run's settings (task, model, optimizer, schedule), as ``train`` takes them."""
    _default = lambda name: f"(default: {getattr(DEFAULTS, name)})"  # noqa: E731
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=sorted(TASKS), help=f"the task {_default('task')}")
    g.add_argument("--length", type=_positive_int, help="steps per sequence T (default: the task's)")
    g.add_argument("--batch-size", type=_positive_int, help="training mini-batch size (default: the task's)")
    g.add_argument("--test-size", type=_positive_int, help="size of the fixed test set (default: the task's)")
    g.add_argument("--data-dir", help="image tasks: folder of the data files (default: $TARGETPROP_DATA; "
                                      "Fashion-MNIST: the Debian package's folder)")
    g.add_argument("--task-option", action="append", metavar="KEY=VALUE", type=_key_value,
                   help="a further option of the task, e.g. criterion=absolute for adding (repeatable)")
    g = p.add_argument_group("model")
    g.add_argument("--cell", "--model", dest="cell", help=f"recurrent layer: rnn or gru {_default('cell')}")
    g.add_argument("--hidden-size", type=_positive_int, help=f"hidden units p {_default('hidden_size')}")
    g.add_argument("--nonlinearity", help="tanh, sigmoid, identity or relu (default: the cell's own, tanh)")
    g.add_argument("--rule", help=f"bp, linearized (eq. 2), difference, direct or learned {_default('rule')}")
    g.add_argument("--reg", type=float, help=f"r, regularization of the inverse {_default('reg')}")
    g.add_argument("--target-step", type=float, help=f"γ_h, eq. 1 {_default('target_step')}")
    g.add_argument("--tol", type=float, help=f"τ, margin of the projection {_default('tol')}")
    g.add_argument("--through-time", action="store_true", default=None,
                   help="the authors' public-code variant: back-propagate the target losses through time")
    g.add_argument("--init", help=f"orthogonal or default {_default('init')}")
    g.add_argument("--inverse-lr", type=float, help="learned rule: step size of the reverse layer (layer default 1e-3)")
    g.add_argument("--inverse-noise", type=float, help="learned rule: noise σ of its reconstruction loss (default 0.1)")
    g.add_argument("--layer-option", action="append", metavar="KEY=VALUE", type=_key_value,
                   help="a further option of the recurrent layer, e.g. inverse_lr=1e-3 for the learned rule "
                        "(repeatable)")
    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", help=f"sgd or adam {_default('optimizer')}")
    g.add_argument("--lr", type=float, help=f"step size (γ_θ for TP) {_default('lr')}")
    g.add_argument("--momentum", type=float, help=f"SGD momentum {_default('momentum')}")
    g.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    g.add_argument("--clip", type=float, help="clip the direction's norm to this value (default: no clipping)")
    g = p.add_argument_group("schedule")
    g.add_argument("--iterations", type=_positive_int, help=f"training iterations {_default('iterations')}")
    g.add_argument("--eval-every", type=_positive_int, help=f"evaluate every N iterations {_default('eval_every')}")
    g.add_argument("--stop-at-accuracy", type=float, metavar="FRACTION",
                   help="stop once the test accuracy reaches this fraction, e.g. 1.0 (default: never)")
    g.add_argument("--divergence-factor", type=_factor, metavar="FACTOR|none",
                   help="stop as diverged when the training loss exceeds FACTOR times its initial value; "
                        f"none: only on NaN/inf {_default('divergence_factor')}")
    g.add_argument("--seed", type=int, help=f"seeds batches and init {_default('seed')}")
    g.add_argument("--device", help=f"cpu, cuda, cuda:1, … or auto (cuda if available) {_default('device')}")
    g.add_argument("--dtype", help=f"float32 or float64 {_default('dtype')}")
    g.add_argument("--label", help="name of the run in tables and legends (default: from the settings)")


def _train(args, parser) -> int:
    values = _given_settings(args)
    if args.resume is not None:
        values = {**_saved_settings(args, parser), **values}
    config = _config(parser, values)
    name = f"{config.task}-{config.rule}{'-tt' * config.through_time}-s{config.seed}"
    out = args.resume or args.out or Path("runs") / name
    try:  # everything every process can check alone, before they wait for one another
        task = build_task(config)
        distributed.check_environment(config.device, getattr(task, "batch_size", None))
    except (ValueError, TypeError, OSError) as err:
        parser.error(str(err))
    with distributed.launch(config.device) as world:
        return _train_in(args, parser, config, task, out, world)


def _train_in(args, parser, config: TrainConfig, task, out: Path, world: distributed.World) -> int:
    """Check the run directory, train (on every process of ``world``), print the summary (process 0)."""
    try:
        trainer = Trainer(config, task, world=world)
    except (ValueError, TypeError, OSError) as err:
        parser.error(str(err))
    try:
        existing = None
        if args.resume is not None:
            check_resume(out, config)
        else:
            existing = check_run_dir(out, config, overwrite=args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    if existing is not None and existing.state != "empty" and world.main:
        print(existing.describe(out), flush=True)
    if args.threads is None and (args.resume is not None or getattr(existing, "state", "") == "unfinished"):
        torch.set_num_threads(read_run_options(out).get("threads", torch.get_num_threads()))
    else:
        threads.apply(task, config)
    try:
        summary = trainer.run(out, overwrite=args.overwrite, progress=_progress(args) and world.main,
                              resume=args.resume is not None, checkpoint_every=args.checkpoint_every,
                              diagnose_every=args.diagnose_every)
    except ValueError as err:  # e.g. every checkpoint of the run is corrupt
        parser.error(str(err))
    if trainer.lost_ranks is not None:  # every surviving process says so, in one line
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun stopping the survivors: the run is over anyway
        print(f"{parser.prog}: error: {summary['message']}", file=sys.stderr, flush=True)
    elif world.main:
        print(_summary_line(out, summary))
    if summary["status"] != "interrupted":
        return EXIT_CODES[summary["status"]]
    return 128 + trainer.stop_signal if trainer.stop_signal else EXIT_INTERRUPTED


def _saved_settings(args, parser) -> dict:
    """The settings of the run that ``--resume`` continues (a one-line error if there is none)."""
    if args.out is not None or args.overwrite:
        parser.error("--resume continues the run in its directory: give neither --out nor --overwrite")
    try:
        return read_run_config(args.resume)
    except ValueError as err:
        parser.error(str(err))


def _given_settings(args) -> dict:
    """The settings the command line gives (options left out are absent, not defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if not f.name.endswith("_options") and getattr(args, f.name, None) is not None}
    task_options, layer_options = dict(args.task_option or []), dict(args.layer_option or [])
    if args.data_dir is not None:
        task_options["data_dir"] = args.data_dir
    for name in ("inverse_lr", "inverse_noise"):
        if getattr(args, name) is not None:
            layer_options[name] = getattr(args, name)
    if task_options:
        values["task_options"] = task_options
    if layer_options:
        values["layer_options"] = layer_options
    if values.get("divergence_factor") == "none":
        values["divergence_factor"] = None
    return values


# ---------------------------------------------------------------------------- diagnose


def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="TP's directions against BP's gradient on one batch, and how far "
                       "back its targets reach", description=diagnose.__doc__.split("\n\n")[0])
    _add_settings(p)
    g = p.add_argument_group("diagnose")
    g.add_argument("--run", type=Path, help="a run's settings and its last checkpoint's weights (options "
                                            "given here override its settings)")
    g.add_argument("--rules", nargs="+", metavar="RULE", help="rules to diagnose, RULE-through-time for the "
                   "authors' variant (default: the settings' rule, its through-time variant, and bp)")
    g.add_argument("--output", type=Path, help="write the diagnostics as JSON")
    g.add_argument("--plot", type=Path, help="write a PNG of the displacement norms against steps back")
    g.add_argument("--threads", type=_positive_int, help=threads.HELP)
    p.set_defaults(handler=_diagnose, subparser=p)


def _diagnose(args, parser) -> int:
    values = _given_settings(args)
    try:
        if args.run is not None:
            values = {**read_run_config(args.run), **values}
        config = TrainConfig.from_dict(values)
        task = build_task(config)
        model = build_model(config, task)
        if args.run is not None:
            found = checkpoint.latest(checkpoint.checkpoint_dir(args.run))
            if found.payload is None:
                raise ValueError(f"{args.run} has no usable checkpoint")
            model.load_state_dict(found.payload["model"])
        x, y = task.train_batch(0)
        result = diagnose.diagnose(model, x, y, LOSSES[task.loss], args.rules or diagnose.default_rules(config.rule))
    except (ValueError, OSError) as err:
        parser.error(str(err))
    print(diagnose.table(result))
    if args.output:
        diagnose.write_json(result, args.output)
    if args.plot:
        diagnose.plot(result, args.plot, f"{config.task} T={getattr(task, 'length', '?')}, r={config.reg:g}, "
                      f"γ_h={config.target_step:g}")
    return 0


# ---------------------------------------------------------------------------- bench


def _add_bench(sub) -> None:
    from . import bench

    p = sub.add_parser("bench", help="time an iteration of every rule against native BPTT",
                       description=bench.__doc__.split("\n\n")[0])
    bench.build_parser(p)
    p.set_defaults(handler=lambda args, parser: bench.main(args=args), subparser=p)


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
    p.add_argument("--iterations", type=_positive_int, help="override every method's iterations")
    p.add_argument("--overwrite", action="store_true", help="replace runs with different settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=_positive_int, help=threads.HELP)
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
    trainers = {m: _build(parser, dataclasses.asdict(c), where=f"methods.{m}: ") for m, c in configs.items()}
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
        print(_summary_line(out / method, summary))
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
        from .experiments.plotting import plot_runs

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
    from .experiments.plotting import find_runs

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
    from .experiments.plotting import plot_runs

    if args.output.suffix.lower() != ".png":
        parser.error(f"the output must be a .png file, got {args.output}")
    try:
        print(plot_runs(args.runs, args.output, title=args.title))
    except ValueError as err:
        parser.error(str(err))
    return 0


# ---------------------------------------------------------------------------- helpers


def _build(parser, values: dict, where: str = "") -> Trainer:
    """A validated trainer, or a one-line error (exit code 2) naming what is wrong."""
    try:
        return Trainer(TrainConfig.from_dict(values))
    except (ValueError, TypeError, OSError) as err:
        parser.error(f"{where}{err}")


def _config(parser, values: dict) -> TrainConfig:
    """Validated settings, or a one-line error (exit code 2)."""
    try:
        return TrainConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        parser.error(str(err))


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _summary_line(out: Path, s: dict) -> str:
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _factor(text: str) -> float | str:
    """A number, or ``none`` (kept as the string "none": no such check)."""
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value
