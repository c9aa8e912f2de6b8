"""The ``targetprop`` command: ``train`` one run, ``compare`` methods from a TOML file, ``plot`` runs.

This module owns the command line: parsing, turning bad input into one-line errors (exit code
2, through ``argparse``'s ``parser.error``), progress and printed summaries. Training itself is
:mod:`targetprop.training`'s; curves are :mod:`targetprop.experiments.plotting`'s.

Exit codes (:data:`EXIT_HELP`): ``train`` 0 completed, 3 diverged, 4 failed (a lost process
under torchrun included); ``compare``, ``reproduce`` and ``tune`` 0 when they did their job (the
runs that diverged or failed are listed), 1 when they could not; every command 2 for bad input,
130 when interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (``train`` saves a checkpoint first; the
same command, or ``train --resume RUN``, continues), 141 when the reader of its output went away
(``targetprop diagnose … | head``: no traceback).

``train`` under ``torchrun --nproc-per-node N -m targetprop train …`` trains data-parallel
(:mod:`targetprop.training.distributed`): process 0 prints and writes the run's files.

``compare``, ``plot``, ``table``, ``reproduce`` and ``tune`` are :mod:`targetprop.experiments.commands`'s,
``data`` :mod:`targetprop.tasks.fetch`'s, ``kernels`` :mod:`targetprop.kernels.commands`'.

Settings are the fields of :class:`targetprop.training.config.TrainConfig`: ``train`` and ``diagnose``
generate one option per field from it (dashes for underscores; ``--config FILE.toml`` reads the
same fields from a file, which the options override).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

from . import __version__, diagnose
from .argtypes import for_setting, key_value, non_negative_int, positive_int, wants_progress
from .experiments import commands, diagnose_report, reports
from .kernels import commands as kernel_commands
from .tasks import fetch
from .training import checkpoint, config, distributed, rundir, threads
from .training.build import LOSSES, build_device, build_model, build_task, to_run
from .training.files import RunFolderError
from .training.state import CHECKPOINT_EVERY
from .training.rundir import EXIT_CODES, read_config
from .training.config import TrainConfig
from .training.trainer import Trainer

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, as the shell's own tools end
EXIT_HELP = ("exit codes: 0 completed (or already finished), 3 diverged, 4 failed (a NaN/inf direction, a "
             "failed inverse, a lost process under torchrun), 2 bad input, 130 interrupted by Ctrl-C, 143 by "
             "SIGTERM (a checkpoint is saved first). Re-running the same command continues an unfinished run "
             "in --out and reuses a finished one; --overwrite starts it over.")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); return the exit code."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
            if getattr(args, "threads", None):
                torch.set_num_threads(args.threads)
            threads.set_automatic(getattr(args, "threads", 0) is None)
            return args.handler(args, args.subparser)
        finally:  # --help and every command: a closed pipe shows here, not in the interpreter's last flush
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C before a run's own handling starts (building the task, the model)
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout's reader is gone (``targetprop diagnose … | head``)
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final flush of the lines the
    closed pipe did not take raises nothing either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no file descriptor (e.g. captured): nothing to flush later
        pass


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
    commands.add_commands(sub)  # compare, plot, table, reproduce, tune
    _add_bench(sub)
    _add_diagnose(sub)
    fetch.add_commands(sub)  # data fetch, data list
    kernel_commands.add_commands(sub)  # kernels build
    return parser


# ---------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model on one task",
                       description=f"Train one model on one task; write OUT/{rundir.CONFIG_FILE}, "
                                   f"OUT/{rundir.METRICS_FILE} (as it goes), OUT/{rundir.CHECKPOINT_FOLDER}/ and "
                                   f"OUT/{rundir.SUMMARY_FILE}. SIGINT or SIGTERM "
                                   "saves a checkpoint and stops; --resume OUT continues. Under torchrun "
                                   "(torchrun --nproc-per-node N -m targetprop train ...) the processes train "
                                   "data-parallel, each on its shard of every batch.")
    _add_settings(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="run directory (default: runs/TASK-RULE-sSEED)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over: replace the run in --out (its checkpoints included), whatever it holds")
    g.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the run in RUN from its newest valid checkpoint, with its settings, checkpoint "
                        "cadence and thread count; of the options only --iterations (not below the iterations "
                        "done), --checkpoint-every, --diagnose-every and --threads may be given anew")
    g.add_argument("--checkpoint-every", type=non_negative_int, metavar="N",
                   help=f"save a checkpoint every N iterations (0: only at the end and on SIGINT/SIGTERM) "
                        f"(default: the run's own when it continues, else {CHECKPOINT_EVERY})")
    g.add_argument("--diagnose-every", type=non_negative_int, metavar="N",
                   help="every N iterations (at evaluations), append TP's diagnostics of one fixed batch "
                        f"(targetprop diagnose: cosines with BP, horizons, shares) to OUT/{rundir.DIAGNOSTICS_FILE}; "
                        "targetprop plot draws them (default: the run's own when it continues, else never)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=positive_int,
                   help=threads.HELP.replace("(default: ", "(default: the run's own when it continues, else "))
    p.epilog = EXIT_HELP
    p.set_defaults(handler=_train, subparser=p)


def _add_settings(p) -> None:
    """The options of a run's settings, one per field of :class:`TrainConfig` (its
    :class:`~targetprop.training.config.Setting`: help, group, kind, choices), and ``--config``."""
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="read settings from a TOML file (keys: the settings' names, e.g. target_step = 0.01; "
                        "tables [task_options], [layer_options]; \"none\" unsets); options given here override it")
    groups: dict = {}
    for name, (spec, default) in config.settings().items():
        if spec.group not in groups:
            groups[spec.group] = p.add_argument_group(spec.group)
        g, option = groups[spec.group], "--" + name.replace("_", "-")
        if spec.kind == "table":
            g.add_argument(option.removesuffix("s"), dest=name, action="append", metavar="KEY=VALUE", type=key_value,
                           help=f"{spec.help} (repeatable)")
            for entry in spec.entries:
                g.add_argument("--" + entry.key.replace("_", "-"), dest=f"{name}.{entry.key}", help=entry.help,
                               metavar=entry.key.upper(), type=for_setting(entry.key, entry.kind))
        elif spec.kind == "switch":
            g.add_argument(option, *spec.aliases, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=spec.help)
        else:
            shown = spec.default_help or ("" if default is None else default)
            metavar = "{" + ",".join(spec.choices()) + "}" if spec.kind == "choice" else spec.metavar
            g.add_argument(option, *spec.aliases, dest=name, metavar=metavar, help=f"{spec.help} (default: {shown})",
                           type=for_setting(name, spec.kind, choices=spec.choices, optional=spec.optional))


def _given_settings(args, parser) -> dict:
    """The settings of ``--config`` and the options (options over the file; options left out
    are absent, not defaults); a one-line error for a bad settings file."""
    values = {}
    for name, (spec, _) in config.settings().items():
        if spec.kind == "table":
            table = dict(getattr(args, name) or [])
            table.update({e.key: v for e in spec.entries if (v := getattr(args, f"{name}.{e.key}")) is not None})
            if table:
                values[name] = table
        elif getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.config is None:
        return values
    try:
        return config.merge(config.read_settings_file(args.config), values)
    except ValueError as err:
        parser.error(str(err))


def _train(args, parser) -> int:
    values = _given_settings(args, parser)
    if args.resume is not None:
        values = config.merge(_saved_settings(args, parser), values)
    settings = _config(parser, values)
    name = f"{settings.task}-{settings.rule}{'-tt' * settings.through_time}-s{settings.seed}"
    out = args.resume or args.out or Path("runs") / name
    try:  # everything every process can check alone, before they wait for one another
        task = build_task(settings)
        distributed.check_environment(settings.device, getattr(task, "batch_size", None))
    except ValueError as err:
        parser.error(str(err))
    with distributed.launch(settings.device) as world:
        return _train_in(args, parser, settings, task, out, world)


def _train_in(args, parser, settings: TrainConfig, task, out: Path, world: distributed.World) -> int:
    """Decide what the run does with its folder (once), train (on every process of ``world``),
    print the summary (process 0)."""
    try:
        trainer = Trainer(settings, task, world=world)
        decision = rundir.decide(out, settings.to_dict(), overwrite=args.overwrite, resume=args.resume is not None)
    except ValueError as err:  # bad settings found when building, or a folder that refuses the run
        parser.error(str(err))
    if decision.state != "empty" and args.resume is None and world.main:
        print(decision.describe(), flush=True)
    if args.threads is None and decision.state == "unfinished":
        torch.set_num_threads(decision.options.get("threads", torch.get_num_threads()))
    else:
        threads.apply(task, settings)
    try:
        summary = trainer.run(decision=decision, progress=wants_progress(args) and world.main,
                              checkpoint_every=args.checkpoint_every, diagnose_every=args.diagnose_every)
    except RunFolderError as err:  # e.g. every checkpoint of the run is corrupt; a bug keeps its own type
        parser.error(str(err))
    if summary.get("lost_ranks") is not None:  # every surviving process says so, in one line
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun stopping the survivors: the run is over anyway
        print(f"{parser.prog}: error: {summary['message']}", file=sys.stderr, flush=True)
    elif world.main:
        print(reports.summary_line(out, summary))
    if summary["status"] != "interrupted":
        return EXIT_CODES[summary["status"]]
    return 128 + signal.Signals[summary["signal"]] if "signal" in summary else EXIT_INTERRUPTED


def _saved_settings(args, parser) -> dict:
    """The settings of the run that ``--resume`` continues (a one-line error if there is none)."""
    if args.out is not None or args.overwrite:
        parser.error("--resume continues the run in its directory: give neither --out nor --overwrite")
    try:
        return read_config(args.resume)
    except ValueError as err:
        parser.error(str(err))


# ---------------------------------------------------------------------------- diagnose


def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="TP's directions against BP's gradient on one batch, and how far "
                       "back its targets reach", description=diagnose.__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="columns of the table:\n" + diagnose_report.legend())
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
    values = _given_settings(args, parser)
    try:
        if args.run is not None:
            values = config.merge(read_config(args.run), values)
        cfg = TrainConfig.from_dict(values)
        task = build_task(cfg)
        model = build_model(cfg, task)
        if args.run is not None:
            found = checkpoint.latest(rundir.checkpoint_dir(args.run))
            if found.payload is None:
                raise ValueError(f"{args.run} has no usable checkpoint")
            model.load_state_dict(found.payload["model"])
        device = build_device(cfg, distributed.World())
        x, y = to_run(task.train_batch(0), config.DTYPES[cfg.dtype], device)
        result = diagnose.diagnose(model.to(device), x, y, LOSSES[task.loss],
                                   args.rules or diagnose.default_rules(cfg.rule))
    except ValueError as err:
        parser.error(str(err))
    print(diagnose_report.table(result))
    if args.output:
        diagnose_report.write_json(result, args.output)
    if args.plot:
        diagnose_report.plot(result, args.plot, f"{cfg.task} T={getattr(task, 'length', '?')}, r={cfg.reg:g}, "
                      f"γ_h={cfg.target_step:g}")
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
    except ValueError as err:
        parser.error(str(err))


