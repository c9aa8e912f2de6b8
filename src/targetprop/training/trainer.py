"""Training one model on one task: the loop, its checks, checkpoints and resuming.

This module owns :class:`Trainer` (model, optimizer and the iteration counter; :meth:`Trainer.step`
trains on one mini-batch, :meth:`Trainer.evaluate` measures the fixed evaluation sets,
:meth:`Trainer.run` loops, saves checkpoints and resumes; :meth:`Trainer.state_dict` is what a
checkpoint holds). The settings are :class:`~targetprop.training.config.TrainConfig`'s (re-exported
here); the run directory's files are :mod:`targetprop.training.rundir`'s (``config.json``,
``metrics.csv``, ``summary.json``) and :mod:`targetprop.training.checkpoint`'s
(``checkpoints/iteration-NNNNNNNN.pt``: every ``checkpoint_every`` iterations, 1000 by default,
at the end, and when SIGINT or SIGTERM stops the run; the last two are kept).

Iterations, not epochs: iteration ``i`` trains on ``task.train_batch(i)``, a pure function of
the task's seed and ``i``, so the data order needs no saved state. A run is stopped and marked
``diverged`` when a mini-batch loss is NaN or inf, or when the loss on the fixed training sample
exceeds ``divergence_factor`` (2 by default) times its value at iteration 0; ``failed`` when a
mini-batch or the training direction (``.grad`` after backward) holds NaN or inf
(:mod:`targetprop.training.guard`), or when the backward raises
:class:`~targetprop.RegularizedInverseError` (e.g. diverged weights) or ``FloatingPointError``.
A diverged or failed run writes no checkpoint after the last good one.

Progress is never discarded unless asked (``overwrite``): :meth:`Trainer.run` into a directory
holding the same run continues it if it is unfinished and returns its summary if it is finished
(:func:`targetprop.training.rundir.inspect`). Resuming (continuing, ``run(out, resume=True)``,
``targetprop train --resume OUT``) loads the newest valid checkpoint: model, optimizer, the global
torch generators (the ``learned`` rule draws its noise there; a run seeds them from ``(seed,
"global")`` and restores the caller's state when it returns), the iteration, the running statistics and the number of metrics rows, cutting
``metrics.csv`` back to that many. On the CPU a resumed run ends bit-identical to an
uninterrupted one. Only the iteration budget may differ from the saved settings, and not fall
below the iterations done; the checkpoint cadence is the run's own unless given.

SIGINT and SIGTERM (while :meth:`Trainer.run` runs in the main thread) stop the loop at the next
iteration boundary, save a checkpoint there and end the run as ``interrupted``; a second signal
interrupts at once (``KeyboardInterrupt``), without a checkpoint.

Host syncs in :meth:`Trainer.step`: on the CPU the loss and the direction's norm are read at
every step (free there). On CUDA the trainer adds none: the checks wait on the device until the
next evaluation point or checkpoint (:mod:`targetprop.training.guard`), the mini-batch is checked on the
CPU where the task makes it, and mini-batch losses are summed on the device. The TP layer's own
checks remain (its ``check_finite`` input check and the inverse's factorization status, one
each per step; see :mod:`targetprop.inverse`).

Data-parallel runs (``torchrun``): pass a :class:`~targetprop.training.distributed.World`; see
:mod:`targetprop.training.distributed`. A lost process (its peers' collectives fail) ends the run on every
surviving process as ``failed``, the summary naming the lost ranks (``lost_ranks``); such a run
counts as unfinished and is continued by the same command.
"""
from __future__ import annotations

import math
import re
import signal
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import __version__
from . import checkpoint, environment, rundir
from .. import diagnose
from .distributed import World, lost_peer, resolve_device
from .guard import FiniteGuard, NonFinite, direction_norm
from ..inverse import RegularizedInverseError
from .models import SequenceModel
from .rundir import METRICS, RESUMABLE, RUN_FILES, STATUSES, read_metrics, read_run_config  # noqa: F401
from .config import DTYPES, OPTIMIZERS, TrainConfig  # noqa: F401
from ..tasks.base import Task
from ..tasks.registry import make_task
from ..tasks.synthetic import derived_generator

CHECKPOINT_EVERY = 1000
CHECKPOINT_FORMAT = 1


class Diverged(Exception):
    """The loss became NaN/inf or grew beyond ``divergence_factor`` times its initial value."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run at an iteration boundary (after saving a checkpoint)."""


class Trainer:
    """Trains a :class:`~targetprop.training.models.SequenceModel` on a task, as set by a :class:`TrainConfig`.

    State: ``model``, ``optimizer``, ``iteration`` (iterations done), ``initial_loss`` (loss on
    the fixed training sample at iteration 0), ``reached_at`` (first logged iteration with 100%
    test accuracy), ``best`` (best logged test accuracy and its iteration), ``train_time``
    (seconds in :meth:`step`), ``wall_time`` (seconds of the run's earlier sessions, when
    resumed), ``rows`` (metrics rows logged), ``finished`` / ``stopped_early`` (the loop ended,
    by its budget or by ``stop_at_accuracy``), ``stop_signal`` (the signal that interrupted it,
    else 0) and ``log`` (the metrics file). Building one validates every setting and touches no
    file; :meth:`run` with an output directory writes the run's files.

    Args:
        config: the settings.
        task: the task to use instead of building it from the config (for tests and callers
            with their own data).
        world: this process's place in a data-parallel run (default: a single process); the
            model is then wrapped in ``DistributedDataParallel`` (``net``) and each process
            trains on its shard of every batch.
    """

    def __init__(self, config: TrainConfig, task: Task | None = None, *, world: World | None = None):
        self.config = config
        self.world = world if world is not None else World()
        self.dtype = DTYPES[config.dtype]
        self.device = resolve_device(config.device, self.world)
        self.task = task if task is not None else build_task(config)
        self.world.check_batch_size(getattr(self.task, "batch_size", None))
        try:
            self.model = build_model(config, self.task).to(self.device)
        except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
            raise ValueError(f"device {config.device!r} is not usable here: {err}") from None
        self.net = self.world.wrap(self.model, self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.loss_fn = LOSSES[self.task.loss]
        self.guard = FiniteGuard(self.device, deferred=self.device.type != "cpu",
                                 check_loss=not self.world.distributed)
        self.iteration = 0
        self.initial_loss: float | None = None
        self.reached_at: int | None = None
        self.best: tuple[float, int] | None = None  # best test accuracy and its iteration
        self.log: rundir.MetricsLog | None = None
        self.diagnostics: diagnose.Log | None = None
        self.last: dict | None = None
        self.train_time = 0.0
        self.wall_time = 0.0
        self.rows = 0
        self.finished = self.stopped_early = False
        self.stop_signal = 0
        self.reused = False  # run() found the same run finished and returned its summary
        self.lost_ranks: list[int] | None = None  # set when a data-parallel peer was lost
        self.environment: dict = {}
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = 0
        self._out: Path | None = None
        self._checkpoints: Path | None = None
        self._checkpoint_every = self._diagnose_every = 0
        self._clock: float | None = None

    # ------------------------------------------------------------------ one iteration

    def step(self, iteration: int) -> Tensor:
        """Train on the mini-batch of ``iteration``: forward, backward, checks, clip, optimizer step.

        Returns this process's mini-batch loss (before the step) as a 0-d float64 tensor on the
        device, without waiting for it. Raises :class:`~targetprop.training.guard.NonFinite` for a
        NaN/inf batch, loss or direction (before the parameters move, on the CPU).
        """
        self.model.train()
        batch = self.task.train_batch(iteration)
        self.guard.check_batch(iteration, *batch)
        x, y = self._to_device(self.world.shard(batch))
        loss = self.loss_fn(self.net(x), y)
        self.guard.check_loss(iteration, loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.clip is not None:
            norm = nn.utils.clip_grad_norm_(params, self.config.clip)
        else:
            norm = direction_norm(params)
        self.guard.check_direction(iteration, norm)
        self.optimizer.step()
        return loss.detach().double()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss and accuracy on the fixed training sample and on the test set (summed over
        processes under DDP, each evaluating its shard; one host sync)."""
        self.model.eval()
        sums = []
        for split in ("train", "test"):
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.float64, device=self.device)
            n = 0
            for batch in self.task.eval_batches(split):
                x, y = self._to_device(self.world.eval_shard(batch))
                if x.shape[0] == 0:
                    continue
                out = self.model(x)
                total += self.loss_fn(out, y).double() * x.shape[0]
                correct += self.task.correct(out, y)
                n += x.shape[0]
            sums += [total, correct, torch.tensor(float(n), dtype=torch.float64, device=self.device)]
        total, correct, n, test_total, test_correct, test_n = self.world.sum_(torch.stack(sums)).tolist()
        return {"train_loss": total / n, "train_accuracy": correct / n,
                "test_loss": test_total / test_n, "test_accuracy": test_correct / test_n}

    # ------------------------------------------------------------------ the loop

    def run(self, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = False,
            resume: bool = False, checkpoint_every: int | None = None, diagnose_every: int | None = None) -> dict:
        """Train for ``config.iterations`` (or until stopped); return the summary.

        With ``out``, the run's files are written there (see the module docstring); a directory
        holding a run with different settings, or other files, is refused (ValueError) unless
        ``overwrite``, which starts the run over. The same run there is continued if unfinished,
        and returned as it is if finished (``reused`` is then True; nothing is trained or written).
        With ``resume``, the run in ``out`` must exist and continues from its newest valid
        checkpoint (a corrupt one is reported as a :class:`~targetprop.training.checkpoint.CheckpointWarning`,
        set aside as ``*.corrupt`` and the one before it used); a ValueError lists the settings that
        differ from the run's, other than the iteration budget. ``checkpoint_every``: iterations
        between checkpoints (0: only at the end and on SIGINT/SIGTERM; None: the run's own when it
        continues, else 1000). ``diagnose_every``: every that many iterations (at evaluations), append
        :mod:`targetprop.diagnose`'s diagnostics of one fixed batch to ``diagnostics.csv`` (0: never;
        None: the run's own when it continues, else 0). Ctrl-C ends the run with status ``interrupted``.
        """
        out = Path(out) if out is not None else None
        if resume and out is None:
            raise ValueError("resume needs the run directory (out)")
        if out is not None and not resume and not overwrite:
            existing = rundir.inspect(out, self.config.to_dict())  # every process, before anything is written
            if existing.state == "finished":
                self.reused = True
                return existing.summary
            resume = existing.state == "unfinished"
        if checkpoint_every is None:
            checkpoint_every = rundir.read_run_options(out).get("checkpoint_every", CHECKPOINT_EVERY) \
                if resume else CHECKPOINT_EVERY
        if diagnose_every is None:
            diagnose_every = rundir.read_run_options(out).get("diagnose_every", 0) if resume else 0
        for name, every in (("checkpoint_every", checkpoint_every), ("diagnose_every", diagnose_every)):
            if isinstance(every, bool) or not isinstance(every, int) or every < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {every!r}")
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), _SignalStop() as stop:
            self._out, self._checkpoint_every, self._diagnose_every = out, checkpoint_every, diagnose_every
            self.environment = environment.describe(self.device)
            if resume:
                self._resume(out)
            else:
                self._start(out, overwrite)
            self._checkpoints = checkpoint.checkpoint_dir(out) if out is not None and self.world.main else None
            self._clock = time.perf_counter() - self.wall_time
            status, message, writer = "completed", "", self.world.main
            bar = _progress_bar(self, progress and self.world.main)
            try:
                self._run_loop(bar, stop)
            except (Diverged, RegularizedInverseError, FloatingPointError) as err:
                status, message = self._failure(err)
            except Interrupted as err:
                status, message = "interrupted", str(err)
            except KeyboardInterrupt:
                status, message = "interrupted", f"interrupted by the user at iteration {self.iteration}{self._kept()}"
            except RuntimeError as err:
                self.lost_ranks = lost_peer(err, self.world)
                if self.lost_ranks is None:
                    raise
                status, message = "failed", self._lost_message(err)
                writer = self.world.rank == min(set(range(self.world.size)) - set(self.lost_ranks))
            finally:
                bar.close()
                if self.log is not None:
                    self.log.close()
                if self.diagnostics is not None:
                    self.diagnostics.close()
            summary = self.summary(status, message, time.perf_counter() - self._clock)
            if out is not None and writer:  # still inside the signal handlers: torchrun may be stopping us
                rundir.write_json(out / "summary.json", summary)
        return summary

    def _start(self, out: Path | None, overwrite: bool) -> None:
        """A fresh run: seed the global generators, prepare ``out`` (process 0 writes)."""
        torch.manual_seed(derived_generator(self.config.seed, "global").initial_seed())
        if out is None:
            return
        self.world.barrier()  # every process has checked ``out`` before process 0 writes
        if self.world.main:
            rundir.prepare(out, overwrite=overwrite)
            self._write_config(out)
            self.log = rundir.MetricsLog(out / "metrics.csv")
            self._open_diagnostics(out)

    def _resume(self, out: Path) -> None:
        """Continue the run in ``out`` from its newest valid checkpoint (or from iteration 0 if
        it has none yet)."""
        check_resume(out, self.config)
        folder = checkpoint.checkpoint_dir(out)
        found = checkpoint.latest(folder, "cpu")
        self.world.barrier()  # every process has read its checkpoint before process 0 tidies up
        if self.world.main:
            checkpoint.set_aside(folder, found)
            for problem in found.problems:
                warnings.warn(f"{problem}; set aside as *.corrupt", checkpoint.CheckpointWarning, stacklevel=3)
        if found.payload is None:
            corrupt = rundir.corrupt_files(out)
            if found.problems or corrupt:
                raise ValueError(f"no usable checkpoint in {folder}: {len(corrupt)} set aside as *.corrupt "
                                 f"(kept for inspection); start the run over with --overwrite")
            if self.world.main:
                warnings.warn(f"{out} has no checkpoint yet: starting from iteration 0",
                              checkpoint.CheckpointWarning, stacklevel=3)
            self._start(out, overwrite=False)
            return
        self.load_state_dict(found.payload, source=str(found.path))
        if self.iteration > self.config.iterations:
            raise ValueError(f"{out} has done {self.iteration} iterations, more than a budget of "
                             f"{self.config.iterations}: give --iterations {self.iteration} or more")
        if self.world.main:
            self._write_config(out)
            (out / "summary.json").unlink(missing_ok=True)
            self.log = rundir.MetricsLog(out / "metrics.csv", keep=self.rows)
            self._open_diagnostics(out)

    def _open_diagnostics(self, out: Path) -> None:
        if self._diagnose_every:
            self.diagnostics = diagnose.Log(out / "diagnostics.csv", self.iteration)

    def _diagnose(self) -> None:
        """Diagnostics of the fixed batch of iteration 0, without touching any random stream."""
        x, y = (t.to(self.device) for t in self.task.train_batch(0))
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            result = diagnose.diagnose(getattr(self.model, "module", self.model), x, y, self.loss_fn,
                                       diagnose.default_rules(self.config.rule))
        self.diagnostics.append(self.iteration, result)

    def _write_config(self, out: Path) -> None:
        rundir.write_config(out, self.config.to_dict(), checkpoint_every=self._checkpoint_every,
                            diagnose_every=self._diagnose_every,
                            environment=self.environment)

    def _run_loop(self, bar, stop: _SignalStop) -> None:
        cfg = self.config
        if self.finished:
            if self.stopped_early or self.iteration >= cfg.iterations:
                return  # a finished run resumed with no more to do
            self.finished = False
        if self.iteration == 0:
            self._log_point(bar)
        while self.iteration < cfg.iterations:
            self._stop_if_asked(stop)
            t0 = time.perf_counter()
            self._loss_sum += self.step(self.iteration)
            self.train_time += time.perf_counter() - t0
            self._loss_count += 1
            self.iteration += 1
            bar.update(1)
            at_eval = self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations
            at_checkpoint = self._checkpoint_every and self.iteration % self._checkpoint_every == 0
            if at_eval or at_checkpoint:
                self.guard.flush()
            if at_eval:
                point = self._log_point(bar)
                if cfg.stop_at_accuracy is not None and point["test_accuracy"] >= cfg.stop_at_accuracy:
                    self.stopped_early = True
                    break
            if at_checkpoint:
                self.save_checkpoint()
        self.guard.flush()
        self.finished = True
        self.save_checkpoint()

    def _stop_if_asked(self, stop: _SignalStop) -> None:
        """At an iteration boundary: if a signal asked (any process), save a checkpoint and stop."""
        signum = self.world.max(stop.signum)
        if not signum:
            return
        self.stop_signal = signum
        self.guard.flush()
        saved = self.save_checkpoint()
        where = f"; checkpoint saved, continue with: targetprop train --resume {self._out}" if saved else ""
        raise Interrupted(f"stopped by {signal.Signals(signum).name} at iteration {self.iteration}{where}")

    def _log_point(self, bar) -> dict:
        """Evaluate, append a metrics row, check for divergence; return the row."""
        batches = self._loss_count
        point = {"iteration": self.iteration, "time": self.train_time, "batch_loss": self._mean_batch_loss(),
                 **self.evaluate(), "wall_time": time.perf_counter() - self._clock}
        self._loss_sum.zero_()
        self._loss_count = 0
        self.last = point
        self.rows += 1
        if self.log is not None:
            self.log.append(point)
        if self.diagnostics is not None and self.iteration % self._diagnose_every == 0:
            self._diagnose()
        if self.best is None or point["test_accuracy"] > self.best[0]:
            self.best = (point["test_accuracy"], self.iteration)
        if self.reached_at is None and point["test_accuracy"] >= 1.0:
            self.reached_at = self.iteration
        bar.set_postfix(loss=f"{point['train_loss']:.4g}", test_acc=f"{point['test_accuracy']:.1%}", refresh=False)
        if batches and not math.isfinite(point["batch_loss"]):  # under DDP the steps do not check it
            raise Diverged(f"the mean mini-batch loss up to iteration {self.iteration} is {point['batch_loss']}")
        self._check_divergence(point["train_loss"])
        return point

    def _mean_batch_loss(self) -> float:
        """Mean mini-batch loss since the last evaluation point, over all processes (NaN if none)."""
        if not self._loss_count:
            return math.nan
        return self.world.sum_(self._loss_sum.clone()).item() / (self._loss_count * self.world.size)

    def _check_divergence(self, loss: float) -> None:
        if self.initial_loss is None:
            self.initial_loss = loss
        if not math.isfinite(loss):
            raise Diverged(f"the training loss is {loss} at iteration {self.iteration}")
        factor = self.config.divergence_factor
        if factor is not None and loss > factor * self.initial_loss:
            raise Diverged(f"the training loss {loss:.4g} at iteration {self.iteration} exceeds {factor:g} "
                           f"times its initial value {self.initial_loss:.4g}")

    def summary(self, status: str, message: str, wall_time: float) -> dict:
        """The run's outcome (``summary.json``); non-finite numbers are written as null."""
        last = self.last or {}
        return _finite_or_none({
            "status": status,
            "message": message,
            "label": self.config.describe(),
            "iterations": self.iteration,
            "final_test_accuracy": last.get("test_accuracy"),
            "final_test_loss": last.get("test_loss"),
            "final_train_loss": last.get("train_loss"),
            "final_train_accuracy": last.get("train_accuracy"),
            "best_test_accuracy": self.best[0] if self.best else None,
            "best_at": self.best[1] if self.best else None,
            "iteration_to_100": self.reached_at,
            "train_time": self.train_time,
            "wall_time": wall_time,
            "version": __version__,
            "environment": self.environment,
            **({"lost_ranks": self.lost_ranks} if self.lost_ranks is not None else {}),
        })

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Everything a resumed run needs (the payload of a checkpoint): settings, model,
        optimizer, global generators, the iteration and the loop's running statistics."""
        wall = time.perf_counter() - self._clock if self._clock is not None else self.wall_time
        return {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None,  # no setting makes one yet
            "rng": _rng_state(self.device),
            "trainer": {
                "iteration": self.iteration,
                "initial_loss": self.initial_loss,
                "reached_at": self.reached_at,
                "best": list(self.best) if self.best else None,
                "train_time": self.train_time,
                "wall_time": wall,
                "rows": self.rows,
                "last": self.last,
                "loss_sum": self._loss_sum.detach().cpu(),
                "loss_count": self._loss_count,
                "finished": self.finished,
                "stopped_early": self.stopped_early,
            },
        }

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Restore :meth:`state_dict`'s output; a ValueError if it is from a run with other settings."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        differs = rundir.describe_changes(state.get("config"), self.config.to_dict(), ignore=RESUMABLE)
        if differs:
            raise ValueError(f"{source} is from a run with different settings ({differs})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], self.device)
        t = state["trainer"]
        self.iteration, self.initial_loss, self.reached_at = t["iteration"], t["initial_loss"], t["reached_at"]
        self.best = tuple(t["best"]) if t["best"] is not None else None
        self.train_time, self.wall_time, self.rows, self.last = t["train_time"], t["wall_time"], t["rows"], t["last"]
        self._loss_sum = t["loss_sum"].to(self.device, torch.float64)
        self._loss_count = t["loss_count"]
        self.finished, self.stopped_early = t["finished"], t["stopped_early"]

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current iteration into the run directory (process 0, when
        the run has one); return its path."""
        if self._checkpoints is None:
            return None
        if self.log is not None:
            self.log.sync()
        return checkpoint.save_in(self._checkpoints, self.iteration, self.state_dict())

    def _failure(self, err: Exception) -> tuple[str, str]:
        """Status and message of a run stopped by ``err``; with deferred checks, a NaN/inf
        recorded before ``err`` is reported instead, as its cause."""
        try:
            self.guard.flush()
        except NonFinite as earlier:
            err = earlier
        if isinstance(err, NonFinite):
            status = "diverged" if err.what == "loss" else "failed"
            return status, str(err) + self._bad_parameters(err) + self._kept()
        if isinstance(err, Diverged):
            return "diverged", str(err) + self._kept()
        return "failed", f"{type(err).__name__}: {err}{self._kept()}"

    def _kept(self) -> str:
        """How a stopped run's message names its last good checkpoint (none written after it)."""
        if self._checkpoints is None:
            return ""
        saved = checkpoint.listed(self._checkpoints)
        return f"; the last good checkpoint, iteration {saved[-1][0]}, is kept" if saved else ""

    def _lost_message(self, err: RuntimeError) -> str:
        """The message of a data-parallel run whose peer was lost (``err``: the failed collective)."""
        lost = ", ".join(map(str, self.lost_ranks)) or "none found (a collective failed)"
        saved = checkpoint.listed(checkpoint.checkpoint_dir(self._out)) if self._out is not None else []
        kept = f"; the last checkpoint, iteration {saved[-1][0]}, is kept" if saved else ""
        again = "; the same command continues the run" if self._out is not None else ""
        return (f"lost process(es) {lost} of {self.world.size} at iteration {self.iteration} "
                f"({_first_sentence(err)}){kept}{again}")

    def _bad_parameters(self, err: NonFinite) -> str:
        """For a bad direction caught before the step: which parameters' ``.grad`` hold NaN/inf."""
        if err.what != "direction" or self.guard.deferred:
            return ""
        bad = [name for name, p in self.model.named_parameters()
               if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        return f" in {', '.join(bad)}" if bad else ""

    def _to_device(self, batch):
        """``(x, y)`` on the device in the run's dtype; from the CPU to CUDA through pinned
        memory, so that the copy does not wait for the device."""
        x, y = batch
        x = x.to(dtype=self.dtype)
        y = y.to(dtype=self.dtype) if y.is_floating_point() else y
        if self.device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


class _SignalStop:
    """While a run runs (in the main thread): the first SIGINT or SIGTERM is recorded in
    ``signum`` for the loop to stop at the next iteration boundary; a second raises
    ``KeyboardInterrupt`` at once. The previous handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> _SignalStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------- building blocks


def build_task(config: TrainConfig) -> Task:
    """The config's task (seeded by ``config.seed``)."""
    return make_task(config.task, length=config.length, batch_size=config.batch_size,
                     test_size=config.test_size, seed=config.seed, **config.task_options)


def build_model(config: TrainConfig, task: Task) -> SequenceModel:
    """The config's model for ``task``, initialized from ``(seed, "init")``; what a layer draws
    from the global generator (the ``learned`` rule's reverse layer) comes from ``(seed,
    "init-global")``, and the caller's global generator is left as it was."""
    options = dict(rule=config.rule, reg=config.reg, target_step=config.target_step, tol=config.tol,
                   through_time=config.through_time, dtype=DTYPES[config.dtype], **config.layer_options)
    if config.nonlinearity is not None:
        options["nonlinearity"] = config.nonlinearity
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_generator(config.seed, "init-global").initial_seed())
        return SequenceModel(config.cell, task.input_size, config.hidden_size, task.output_size,
                             init=config.init, generator=derived_generator(config.seed, "init"), **options)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (with optional (Nesterov) momentum) or ``torch.optim.Adam``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def check_run_dir(out: str | Path, config: TrainConfig, *, overwrite: bool) -> rundir.Existing | None:
    """What ``out`` holds for ``config`` (:func:`targetprop.training.rundir.inspect`; None with ``overwrite``);
    a ValueError if the run may not go there."""
    if overwrite:
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"output path {out} exists and is not a directory")
        return None
    return rundir.inspect(out, config.to_dict())


def check_resume(out: str | Path, config: TrainConfig) -> None:
    """A ValueError unless ``config`` may continue the run in ``out`` (only the budget may change)."""
    rundir.check_resume(out, config.to_dict())


def train(config: TrainConfig, out: str | Path | None = None, *, overwrite: bool = False,
          progress: bool = False, **options) -> dict:
    """Build a :class:`Trainer` for ``config`` and run it (``options``: :meth:`Trainer.run`'s
    ``resume`` and ``checkpoint_every``); return the summary."""
    return Trainer(config).run(out, overwrite=overwrite, progress=progress, **options)


# ---------------------------------------------------------------------------- helpers

LOSSES = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


def _first_sentence(err: BaseException) -> str:
    """The gist of an error from a communication library: its first sentence, without the
    ``[file.cc:123]`` location in front."""
    text = str(err).strip() or type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return text.split(". ")[0][:160]


def _finite_or_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _rng_state(device: torch.device) -> dict:
    """The global generators a run draws from: the CPU's, and the device's on CUDA."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _progress_bar(trainer: Trainer, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=trainer.config.iterations, initial=trainer.iteration, disable=not enabled,
                desc=trainer.config.describe(), unit="it", dynamic_ncols=True, leave=True)
