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

``compare``, ``plot`` and ``table`` are :mod:`targetprop.experiments.commands`'s.

Settings are the fields of :class:`targetprop.training.trainer.TrainConfig` (``targetprop train --help``
lists them with the command-line spelling, dashes for underscores).
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

import torch

from . import __version__, diagnose
from .argtypes import factor, key_value, non_negative_int, positive_int

from .training import checkpoint, distributed, threads

from .experiments import commands, pipeline

from .tasks import fetch
from .training.rundir import EXIT_CODES, read_run_options
from .tasks.registry import TASKS
from .training.trainer import (CHECKPOINT_EVERY, LOSSES, Trainer, TrainConfig, build_model, build_task, check_resume,
                      check_run_dir, read_run_config)

DEFAULTS = TrainConfig()

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
    commands.add_commands(sub)  # compare, plot, table
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
    g.add_argument("--checkpoint-every", type=non_negative_int, metavar="N",
                   help=f"save a checkpoint every N iterations (0: only at the end and on SIGINT/SIGTERM) "
                        f"(default: the run's own when it continues, else {CHECKPOINT_EVERY})")
    g.add_argument("--diagnose-every", type=non_negative_int, metavar="N",
                   help="every N iterations (at evaluations), append TP's diagnostics of one fixed batch "
                        "(targetprop diagnose: cosines with BP, horizons, shares) to OUT/diagnostics.csv; "
                        "targetprop plot draws them (default: the run's own when it continues, else never)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=positive_int,
                   help="CPU threads for torch (default: the run's own when it continues, else 1 when "
                        "batch x hidden^2 < 2^19, where a second thread was measured not to pay, else torch's)")
    p.epilog = EXIT_HELP
    p.set_defaults(handler=_train, subparser=p)


def _add_settings(p) -> None:
    """The options of a run's settings (task, model, optimizer, schedule), as ``train`` takes them."""
    _default = lambda name: f"(default: {getattr(DEFAULTS, name)})"  # noqa: E731
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=sorted(TASKS), help=f"the task {_default('task')}")
    g.add_argument("--length", type=positive_int, help="steps per sequence T (default: the task's)")
    g.add_argument("--batch-size", type=positive_int, help="training mini-batch size (default: the task's)")
    g.add_argument("--test-size", type=positive_int, help="size of the fixed test set (default: the task's)")
    g.add_argument("--data-dir", help="image tasks: folder of the data files (default: $TARGETPROP_DATA; "
                                      "Fashion-MNIST: the Debian package's folder)")
    g.add_argument("--task-option", action="append", metavar="KEY=VALUE", type=key_value,
                   help="a further option of the task, e.g. criterion=absolute for adding (repeatable)")
    g = p.add_argument_group("model")
    g.add_argument("--cell", "--model", dest="cell", help=f"recurrent layer: rnn or gru {_default('cell')}")
    g.add_argument("--hidden-size", type=positive_int, help=f"hidden units p {_default('hidden_size')}")
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
    g.add_argument("--layer-option", action="append", metavar="KEY=VALUE", type=key_value,
                   help="a further option of the recurrent layer, e.g. inverse_lr=1e-3 for the learned rule "
                        "(repeatable)")
    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", help=f"sgd or adam {_default('optimizer')}")
    g.add_argument("--lr", type=float, help=f"step size (γ_θ for TP) {_default('lr')}")
    g.add_argument("--momentum", type=float, help=f"SGD momentum {_default('momentum')}")
    g.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    g.add_argument("--clip", type=float, help="clip the direction's norm to this value (default: no clipping)")
    g = p.add_argument_group("schedule")
    g.add_argument("--iterations", type=positive_int, help=f"training iterations {_default('iterations')}")
    g.add_argument("--eval-every", type=positive_int, help=f"evaluate every N iterations {_default('eval_every')}")
    g.add_argument("--stop-at-accuracy", type=float, metavar="FRACTION",
                   help="stop once the test accuracy reaches this fraction, e.g. 1.0 (default: never)")
    g.add_argument("--divergence-factor", type=factor, metavar="FACTOR|none",
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
        print(commands.summary_line(out, summary))
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
    g.add_argument("--threads", type=positive_int, help=threads.HELP)
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


# ---------------------------------------------------------------------------- helpers


def _config(parser, values: dict) -> TrainConfig:
    """Validated settings, or a one-line error (exit code 2)."""
    try:
        return TrainConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        parser.error(str(err))


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()
