"""One run of a :class:`~targetprop.training.trainer.Trainer` from start to end: :func:`run`.

This module owns the order of a run: deciding once what the run does with its folder
(:func:`targetprop.training.rundir.plan`), starting or continuing it (the newest valid
checkpoint; a corrupt one is reported as a :class:`~targetprop.training.checkpoint.CheckpointWarning`
and set aside), the loop (steps, evaluation points, checkpoints, diagnostics, the stop on a
signal) and writing the summary however the run ends (:mod:`targetprop.training.outcome`).
Under DDP every process runs it; process 0 alone writes the run's files.
"""
from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from pathlib import Path

import torch

from .. import diagnose
from ..inverse import RegularizedInverseError
from ..tasks.seeding import derived_seed
from . import checkpoint, environment, rundir
from .distributed import lost_peer
from .files import RunFolderError
from .outcome import Diverged, Interrupted, failure, kept, lost_message, summary
from .signals import SignalStop

CHECKPOINT_EVERY = 1000
log = logging.getLogger(__name__)


def run(trainer, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = False,
        resume: bool = False, checkpoint_every: int | None = None, diagnose_every: int | None = None,
        plan: rundir.Plan | None = None) -> dict:
    """:meth:`targetprop.training.trainer.Trainer.run`: train ``trainer`` into ``out`` (or into
    ``plan``'s folder, already decided by :func:`targetprop.training.rundir.plan`); the summary."""
    if plan is None and out is not None:  # every process, before anything is written
        plan = rundir.plan(out, trainer.config.to_dict(), overwrite=overwrite, resume=resume)
    elif resume and plan is None:
        raise ValueError("resume needs the run directory (out)")
    if plan is not None and plan.state == "finished":
        trainer.reused = True
        return plan.summary
    continues = plan is not None and plan.state == "unfinished"
    saved = plan.options if continues else {}
    checkpoint_every = saved.get("checkpoint_every", CHECKPOINT_EVERY) if checkpoint_every is None else checkpoint_every
    diagnose_every = saved.get("diagnose_every", 0) if diagnose_every is None else diagnose_every
    for name, every in (("checkpoint_every", checkpoint_every), ("diagnose_every", diagnose_every)):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {every!r}")
    out = plan.path if plan is not None else None
    device = trainer.device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), SignalStop() as stop:
        trainer._out, trainer._checkpoint_every, trainer._diagnose_every = out, checkpoint_every, diagnose_every
        trainer.environment = environment.describe(device)
        if continues:
            _resume(trainer, plan)
        else:
            _start(trainer, plan)
        trainer.checkpoints = rundir.checkpoint_dir(out) if out is not None and trainer.world.main else None
        trainer._clock = time.perf_counter() - trainer.wall_time
        status, message, writer = "completed", "", trainer.world.main
        bar = _progress_bar(trainer, progress and trainer.world.main)
        try:
            _loop(trainer, bar, stop)
        except (Diverged, RegularizedInverseError, FloatingPointError) as err:
            status, message = failure(trainer, err)
        except Interrupted as err:
            status, message = "interrupted", str(err)
        except KeyboardInterrupt:
            status, message = "interrupted", (f"interrupted by the user at iteration {trainer.iteration}"
                                              f"{kept(trainer.checkpoints)}")
        except Exception as err:
            trainer.lost_ranks = lost_peer(err, trainer.world)
            if trainer.lost_ranks is None:  # a bug: the run ends failed, then the error goes on as it is
                _finish(trainer, out, writer, "failed", f"{type(err).__name__}: {err}{kept(trainer.checkpoints)}")
                raise
            status, message = "failed", lost_message(trainer, err, rundir.checkpoint_dir(out) if out else None)
            writer = trainer.world.rank == min(set(range(trainer.world.size)) - set(trainer.lost_ranks))
        finally:
            bar.close()
            for opened in (trainer.log, trainer.diagnostics):
                if opened is not None:
                    opened.close()
        return _finish(trainer, out, writer, status, message)  # inside the signal handlers: torchrun may stop us


def _finish(trainer, out: Path | None, writer: bool, status: str, message: str) -> dict:
    result = summary(trainer, status, message, time.perf_counter() - trainer._clock)
    if out is not None and writer:
        rundir.write_summary(out, result)
    log.info("%s: %s after %d iterations%s", out or "run", status, trainer.iteration, f" ({message})" if message else "")
    return result


def _start(trainer, plan: rundir.Plan | None) -> None:
    """A fresh run: seed the global generators, make the folder ready (process 0 writes)."""
    torch.manual_seed(derived_seed(trainer.config.seed, "global"))
    if plan is None:
        return
    trainer.world.barrier()  # every process has checked the folder before process 0 writes
    if trainer.world.main:
        log.info("starting %s in %s", trainer.config.describe(), plan.path)
        rundir.start(plan)
        _open_files(trainer, plan.path)


def _resume(trainer, plan: rundir.Plan) -> None:
    """Continue the run of ``plan`` from its newest valid checkpoint (or from iteration 0 if it
    has none yet)."""
    out, folder = plan.path, rundir.checkpoint_dir(plan.path)
    found = checkpoint.latest(folder, "cpu")
    trainer.world.barrier()  # every process has read its checkpoint before process 0 tidies up
    if trainer.world.main:
        checkpoint.set_aside(folder, found)
        for problem in found.problems:
            warnings.warn(f"{problem}; set aside as *.corrupt", checkpoint.CheckpointWarning, stacklevel=4)
    if found.payload is None:
        corrupt = rundir.corrupt_files(out)
        if found.problems or corrupt:
            raise RunFolderError(f"no usable checkpoint in {folder}: {len(corrupt)} set aside as *.corrupt "
                                 f"(kept for inspection); start the run over with --overwrite")
        if trainer.world.main:
            warnings.warn(f"{out} has no checkpoint yet: starting from iteration 0",
                          checkpoint.CheckpointWarning, stacklevel=4)
        _start(trainer, plan)
        return
    trainer.load_state_dict(found.payload, source=str(found.path))
    if trainer.iteration > trainer.config.iterations:
        raise RunFolderError(f"{out} has done {trainer.iteration} iterations, more than a budget of "
                             f"{trainer.config.iterations}: give --iterations {trainer.iteration} or more")
    if trainer.world.main:
        log.info("continuing %s in %s from iteration %d", trainer.config.describe(), out, trainer.iteration)
        rundir.remove_summary(out)
        _open_files(trainer, out, keep=trainer.rows)


def _open_files(trainer, out: Path, keep: int | None = None) -> None:
    """Write ``config.json`` and open the logs (cut back to ``keep`` rows when continuing)."""
    rundir.write_config(out, trainer.config.to_dict(), checkpoint_every=trainer._checkpoint_every,
                        diagnose_every=trainer._diagnose_every, environment=trainer.environment)
    trainer.log = rundir.open_metrics(out, keep=keep)
    if trainer._diagnose_every:
        trainer.diagnostics = diagnose.Log(rundir.diagnostics_path(out), trainer.iteration)


def _loop(trainer, bar, stop: SignalStop) -> None:
    cfg = trainer.config
    if trainer.finished:
        if trainer.stopped_early or trainer.iteration >= cfg.iterations:
            return  # a finished run resumed with no more to do
        trainer.finished = False
    if trainer.iteration == 0:
        _log_point(trainer, bar)
    while trainer.iteration < cfg.iterations:
        _stop_if_asked(trainer, stop)
        t0 = time.perf_counter()
        trainer._loss_sum += trainer.step(trainer.iteration)
        trainer.train_time += time.perf_counter() - t0
        trainer._loss_count += 1
        trainer.iteration += 1
        bar.update(1)
        at_eval = trainer.iteration % cfg.eval_every == 0 or trainer.iteration == cfg.iterations
        at_checkpoint = trainer._checkpoint_every and trainer.iteration % trainer._checkpoint_every == 0
        if at_eval or at_checkpoint:
            trainer.guard.flush()
        if at_eval:
            point = _log_point(trainer, bar)
            if cfg.stop_at_accuracy is not None and point["test_accuracy"] >= cfg.stop_at_accuracy:
                trainer.stopped_early = True
                break
        if at_checkpoint:
            trainer.save_checkpoint()
    trainer.guard.flush()
    trainer.finished = True
    trainer.save_checkpoint()


def _stop_if_asked(trainer, stop: SignalStop) -> None:
    """At an iteration boundary: if a signal asked (any process), save a checkpoint and stop."""
    signum = trainer.world.max(stop.signum)
    if not signum:
        return
    trainer.stop_signal = signum
    trainer.guard.flush()
    saved = trainer.save_checkpoint()
    where = f"; checkpoint saved, continue with: targetprop train --resume {trainer._out}" if saved else ""
    raise Interrupted(f"stopped by {signal.Signals(signum).name} at iteration {trainer.iteration}{where}")


def _log_point(trainer, bar) -> dict:
    """Evaluate, append a metrics row, check for divergence; return the row."""
    batches = trainer._loss_count
    point = {"iteration": trainer.iteration, "time": trainer.train_time, "batch_loss": trainer._mean_batch_loss(),
             **trainer.evaluate(), "wall_time": time.perf_counter() - trainer._clock}
    trainer._loss_sum.zero_()
    trainer._loss_count = 0
    trainer.last = point
    trainer.rows += 1
    if trainer.log is not None:
        trainer.log.append(point)
    if trainer.diagnostics is not None and trainer.iteration % trainer._diagnose_every == 0:
        _diagnose(trainer)
    if trainer.best is None or point["test_accuracy"] > trainer.best[0]:
        trainer.best = (point["test_accuracy"], trainer.iteration)
    if trainer.reached_at is None and point["test_accuracy"] >= 1.0:
        trainer.reached_at = trainer.iteration
    bar.set_postfix(loss=f"{point['train_loss']:.4g}", test_acc=f"{point['test_accuracy']:.1%}", refresh=False)
    if batches and not math.isfinite(point["batch_loss"]):  # under DDP the steps do not check it
        raise Diverged(f"the mean mini-batch loss up to iteration {trainer.iteration} is {point['batch_loss']}")
    trainer._check_divergence(point["train_loss"])
    return point


def _diagnose(trainer) -> None:
    """Diagnostics of the fixed batch of iteration 0, without touching any random stream."""
    device = trainer.device
    x, y = trainer._to_device(trainer.task.train_batch(0))
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        result = diagnose.diagnose(trainer.model, x, y, trainer.loss_fn,
                                   diagnose.default_rules(trainer.config.rule))
    trainer.diagnostics.append(trainer.iteration, result)


def _progress_bar(trainer, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=trainer.config.iterations, initial=trainer.iteration, disable=not enabled,
                desc=trainer.config.describe(), unit="it", dynamic_ncols=True, leave=True)
