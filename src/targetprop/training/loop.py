"""One run of a :class:`~targetprop.training.trainer.Trainer` from start to end: :func:`run`.

This module owns the order of a run: deciding once what the run does with its folder
(:func:`targetprop.training.rundir.decide`), starting or continuing it (the newest valid
checkpoint; a corrupt one is reported as a :class:`~targetprop.training.checkpoint.CheckpointWarning`
and set aside), the loop (steps, evaluation points, checkpoints, diagnostics, the stop on a
signal), what a checkpoint holds (:meth:`Session.payload`: the settings, the trainer's state and
the :class:`~targetprop.training.state.RunState`) and writing the summary however the run ends
(:mod:`targetprop.training.outcome`). Under DDP every process runs it; process 0 alone writes
the run's files.
"""
from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from pathlib import Path

import torch

from .. import __version__, kernels
from ..inverse import RegularizedInverseError
from ..tasks.seeding import derived_seed
from . import checkpoint, environment, rundir
from .diagnostics import DiagnosticsLog, diagnose_run
from .distributed import cuda_devices, lost_peer
from .files import RunFolderError
from .metrics import MetricsLog
from .outcome import Diverged, Interrupted, failure, kept, lost_message, summary
from .signals import SignalStop
from .state import CHECKPOINT_EVERY, RunState

CHECKPOINT_FORMAT = 2
log = logging.getLogger(__name__)


class Session:
    """One session of a run: the trainer, the run's :class:`RunState`, its folder (None: no files)
    and, on process 0, its open logs and checkpoint folder; ``lost_ranks`` and ``signal`` say how
    the session ended when a peer was lost or a signal stopped it."""

    def __init__(self, trainer, out: Path | None, checkpoint_every: int, diagnose_every: int):
        self.trainer, self.out = trainer, out
        self.state = RunState(trainer.device, checkpoint_every=checkpoint_every, diagnose_every=diagnose_every)
        self.checkpoints = rundir.checkpoint_dir(out) if out is not None and trainer.world.main else None
        self.metrics: MetricsLog | None = None
        self.diagnostics: DiagnosticsLog | None = None
        self.environment: dict = {}
        self.lost_ranks: list[int] | None = None
        self.signal = 0

    def payload(self) -> dict:
        """What a checkpoint holds: format, version, settings, model, optimizer, generators, run state."""
        return {"format": CHECKPOINT_FORMAT, "version": __version__, "config": self.trainer.config.to_dict(),
                **self.trainer.state_dict(), "run": self.state.state_dict()}

    def load(self, payload: dict, source: str) -> None:
        """Restore :meth:`payload`'s output; a RunFolderError if it is from another format or settings."""
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise RunFolderError(f"{source}: checkpoint format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        differs = rundir.describe_changes(payload.get("config"), self.trainer.config.to_dict(),
                                          ignore=rundir.RESUMABLE)
        if differs:
            raise RunFolderError(f"{source} is from a run with different settings ({differs})")
        self.trainer.load_state_dict(payload)
        self.state.load_state_dict(payload["run"])

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current iteration (process 0, when the run has a folder)."""
        if self.checkpoints is None:
            return None
        if self.metrics is not None:
            self.metrics.sync()
        return checkpoint.save_in(self.checkpoints, self.state.iteration, self.payload())

    def close(self) -> None:
        for opened in (self.metrics, self.diagnostics):
            if opened is not None:
                opened.close()


def run(trainer, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = False,
        resume: bool = False, checkpoint_every: int | None = None, diagnose_every: int | None = None,
        decision: rundir.Decision | None = None) -> dict:
    """:meth:`targetprop.training.trainer.Trainer.run`: train ``trainer`` into ``out`` (or into
    ``decision``'s folder, already decided by :func:`targetprop.training.rundir.decide`); the summary."""
    if decision is None and out is not None:  # every process, before anything is written
        decision = rundir.decide(out, trainer.config.to_dict(), overwrite=overwrite, resume=resume)
    elif resume and decision is None:
        raise ValueError("resume needs the run directory (out)")
    if decision is not None and decision.state == "finished":
        return decision.summary
    continues = decision is not None and decision.state == "unfinished"
    saved = decision.options if continues else {}
    session = Session(trainer, decision.path if decision is not None else None,
                      saved.get("checkpoint_every", CHECKPOINT_EVERY) if checkpoint_every is None else checkpoint_every,
                      saved.get("diagnose_every", 0) if diagnose_every is None else diagnose_every)
    state, world = session.state, trainer.world
    with torch.random.fork_rng(devices=cuda_devices(trainer.device)), SignalStop() as stop:
        session.environment = environment.describe(trainer.device, world.size)
        if continues:
            _resume(session, decision)
        else:
            _start(session, decision)
        _build_kernels(trainer)
        state.start_clock()
        status, message, writer = "completed", "", world.main
        bar = _progress_bar(session, progress and world.main)
        try:
            _loop(session, bar, stop)
        except (Diverged, RegularizedInverseError, FloatingPointError) as err:
            status, message = failure(trainer, err, session.checkpoints)
        except Interrupted as err:
            status, message = "interrupted", str(err)
        except KeyboardInterrupt:
            status, message = "interrupted", (f"interrupted by the user at iteration {state.iteration}"
                                              f"{kept(session.checkpoints)}")
        except Exception as err:
            session.lost_ranks = lost_peer(err, world)
            if session.lost_ranks is None:  # a bug: the run ends failed, then the error goes on as it is
                _finish(session, writer, "failed", f"{type(err).__name__}: {err}{kept(session.checkpoints)}")
                raise
            folder = rundir.checkpoint_dir(session.out) if session.out else None
            status, message = "failed", lost_message(world, session.lost_ranks, state.iteration, err, folder)
            writer = world.rank == min(set(range(world.size)) - set(session.lost_ranks))
        finally:
            bar.close()
            session.close()
        return _finish(session, writer, status, message)  # inside the signal handlers: torchrun may stop us


def _finish(session: Session, writer: bool, status: str, message: str) -> dict:
    result = summary(session.trainer.config, session.state, status, message, session.environment,
                     lost_ranks=session.lost_ranks, stopped_by=session.signal)
    if session.out is not None and writer:
        rundir.write_summary(session.out, result)
    log.info("%s: %s after %d iterations%s", session.out or "run", status, session.state.iteration,
             f" ({message})" if message else "")
    return result


def _build_kernels(trainer) -> None:
    """Build (or load) the compiled CPU loops before the clocks start: a first build is set-up,
    not training time."""
    if trainer.device.type == "cpu" and trainer.config.layer_options.get("backend", "auto") != "torch":
        kernels.load()


def _start(session: Session, decision: rundir.Decision | None) -> None:
    """A fresh run: seed the global generators, make the folder ready (process 0 writes)."""
    trainer = session.trainer
    torch.manual_seed(derived_seed(trainer.config.seed, "global"))
    if decision is None:
        return
    trainer.world.barrier()  # every process has checked the folder before process 0 writes
    if trainer.world.main:
        log.info("starting %s in %s", trainer.config.describe(), decision.path)
        rundir.start(decision)
        _open_files(session)


def _resume(session: Session, decision: rundir.Decision) -> None:
    """Continue the run of ``decision`` from its newest valid checkpoint (or from iteration 0 if
    it has none yet)."""
    trainer, out = session.trainer, decision.path
    folder = rundir.checkpoint_dir(out)
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
        _start(session, decision)
        return
    session.load(found.payload, source=str(found.path))
    done = session.state.iteration
    if done > trainer.config.iterations:
        raise RunFolderError(f"{out} has done {done} iterations, more than a budget of "
                             f"{trainer.config.iterations}: give --iterations {done} or more")
    if trainer.world.main:
        log.info("continuing %s in %s from iteration %d", trainer.config.describe(), out, done)
        rundir.remove_summary(out)
        _open_files(session, continued=True)


def _open_files(session: Session, continued: bool = False) -> None:
    """Write ``config.json`` and open the logs (cut back to the checkpoint's rows when continuing)."""
    out, state = session.out, session.state
    rundir.write_config(out, session.trainer.config.to_dict(), checkpoint_every=state.checkpoint_every,
                        diagnose_every=state.diagnose_every, environment=session.environment)
    session.metrics = rundir.open_metrics(out, keep=state.rows if continued else None)
    if state.diagnose_every:
        session.diagnostics = DiagnosticsLog(rundir.diagnostics_path(out), state.iteration if continued else None)


def _loop(session: Session, bar, stop: SignalStop) -> None:
    trainer, state, cfg = session.trainer, session.state, session.trainer.config
    if state.finished:
        if state.stopped_early or state.iteration >= cfg.iterations:
            return  # a finished run resumed with no more to do
        state.finished = False
    if state.iteration == 0:
        _log_point(session, bar)
    while state.iteration < cfg.iterations:
        _stop_if_asked(session, stop)
        t0 = time.perf_counter()
        loss = trainer.step(state.iteration)
        state.add_step(loss, time.perf_counter() - t0)
        bar.update(1)
        at_eval, at_checkpoint = state.at_evaluation(cfg.eval_every, cfg.iterations), state.at_checkpoint()
        if at_eval or at_checkpoint:
            trainer.guard.flush()
        if at_eval:
            point = _log_point(session, bar)
            if cfg.stop_at_accuracy is not None and point["test_accuracy"] >= cfg.stop_at_accuracy:
                state.stopped_early = True
                break
        if at_checkpoint:
            session.save_checkpoint()
    trainer.guard.flush()
    state.finished = True
    session.save_checkpoint()


def _stop_if_asked(session: Session, stop: SignalStop) -> None:
    """At an iteration boundary: if a signal asked (any process), save a checkpoint and stop."""
    signum = session.trainer.world.max(stop.signum)
    if not signum:
        return
    session.signal = signum
    session.trainer.guard.flush()
    saved = session.save_checkpoint()
    where = f"; checkpoint saved, continue with: targetprop train --resume {session.out}" if saved else ""
    raise Interrupted(f"stopped by {signal.Signals(signum).name} at iteration {session.state.iteration}{where}")


def _log_point(session: Session, bar) -> dict:
    """Evaluate, append a metrics row, check for divergence; return the row."""
    trainer, state = session.trainer, session.state
    batch_loss, steps = state.take_batch_losses(trainer.world)
    point = {"iteration": state.iteration, "time": state.train_time, "batch_loss": batch_loss,
             **trainer.evaluate(), "wall_time": state.elapsed()}
    state.record(point)
    if session.metrics is not None:
        session.metrics.append(point)
    if session.diagnostics is not None and state.at_diagnosis():
        session.diagnostics.append(state.iteration, diagnose_run(trainer))
    bar.set_postfix(loss=f"{point['train_loss']:.4g}", test_acc=f"{point['test_accuracy']:.1%}", refresh=False)
    if steps and not math.isfinite(batch_loss):  # under DDP the steps do not check it
        raise Diverged(f"the mean mini-batch loss up to iteration {state.iteration} is {batch_loss}")
    state.check_divergence(point["train_loss"], trainer.config.divergence_factor)
    return point


def _progress_bar(session: Session, enabled: bool):
    from tqdm import tqdm

    config = session.trainer.config
    return tqdm(total=config.iterations, initial=session.state.iteration, disable=not enabled,
                desc=config.describe(), unit="it", dynamic_ncols=True, leave=True)
