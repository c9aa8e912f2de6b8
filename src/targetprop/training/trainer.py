"""Training one model on one task: :class:`Trainer`, its model and optimizer, and one step.

This module owns the model, the optimizer and what one iteration does with them:
:meth:`Trainer.step` trains on one mini-batch, :meth:`Trainer.evaluate` measures the fixed
evaluation sets, :meth:`Trainer.state_dict` is the trainer's part of a checkpoint. A run from
start to end, and where it stands (:class:`~targetprop.training.state.RunState`), is
:mod:`targetprop.training.loop`'s (:meth:`Trainer.run`); building the task, model and
optimizer :mod:`targetprop.training.build`'s; how a run ends :mod:`targetprop.training.outcome`'s;
the run folder's files :mod:`targetprop.training.rundir`'s; the settings
:class:`~targetprop.training.config.TrainConfig`'s (importable from here too).

Iterations, not epochs: iteration ``i`` trains on ``task.train_batch(i)``, a pure function of
the task's seed and ``i``, so the data order needs no saved state. A run is stopped and marked
``diverged`` when a mini-batch loss is NaN or inf, or when the loss on the fixed training sample
exceeds ``divergence_factor`` (2 by default) times its value at iteration 0; ``failed`` when a
mini-batch or the training direction (``.grad`` after backward) holds NaN or inf
(:mod:`targetprop.training.guard`), or when the backward raises
:class:`~targetprop.RegularizedInverseError` (e.g. diverged weights) or ``FloatingPointError``.
Any other error is a bug: the run ends ``failed`` and the error is raised again as it is. A
diverged or failed run writes no checkpoint after the last good one.

Checkpoints (``checkpoints/iteration-NNNNNNNN.pt``) are written every ``checkpoint_every``
iterations (1000 by default), at the end, and when SIGINT or SIGTERM stops the run
(:mod:`targetprop.training.signals`); the last two are kept. Progress is never discarded unless
asked (``overwrite``): :meth:`Trainer.run` into a folder holding the same run continues it if it
is unfinished and returns its summary if it is finished. Resuming loads the newest valid
checkpoint: model, optimizer, the global torch generators (the ``learned`` rule draws its noise
there; a run seeds them from ``(seed, "global")`` and restores the caller's state when it
returns) and the run state (the iteration, the running statistics, the number of metrics rows),
cutting
``metrics.csv`` back to that many. On the CPU a resumed run ends bit-identical to an
uninterrupted one. Only the iteration budget may differ from the saved settings, and not fall
below the iterations done; the checkpoint and diagnostics cadences are the run's own unless given.

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

from pathlib import Path

import torch
from torch import Tensor, nn

from ..tasks.base import Task
from . import loop, rundir
from .build import LOSSES, build_device, build_model, build_optimizer, build_task, to_run
from .config import DTYPES, TrainConfig
from .distributed import World
from .guard import FiniteGuard, direction_norm


class Trainer:
    """Trains a :class:`~targetprop.training.models.SequenceModel` on a task, as set by a :class:`TrainConfig`.

    It holds what a step needs: ``model`` (and ``net``, the model as this process trains it),
    ``optimizer``, ``task``, ``loss_fn``, ``device``, ``dtype``, ``world`` and ``guard`` (the
    finiteness checks). Where a run stands (iterations done, best accuracy, clocks) is the loop's
    (:class:`~targetprop.training.state.RunState`). Building one validates every setting and
    touches no file; :meth:`run` with an output directory writes the run's files.

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
        self.device = build_device(config, self.world)
        self.task = task if task is not None else build_task(config)
        self.world.check_batch_size(getattr(self.task, "batch_size", None))
        self.model = build_model(config, self.task, self.world.size).to(self.device)
        self.net = self.world.wrap(self.model, self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.loss_fn = LOSSES[self.task.loss]
        self.guard = FiniteGuard(self.device, deferred=self.device.type != "cpu",
                                 check_loss=not self.world.distributed)

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
        x, y = self.to_device(self.world.shard(batch))
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
                x, y = self.to_device(self.world.eval_shard(batch))
                if y.shape[0] == 0:
                    continue
                out = self.model(x)
                total += self.loss_fn(out, y).double() * y.shape[0]
                correct += self.task.correct(out, y)
                n += y.shape[0]
            sums += [total, correct, torch.tensor(float(n), dtype=torch.float64, device=self.device)]
        total, correct, n, test_total, test_correct, test_n = self.world.sum_(torch.stack(sums)).tolist()
        return {"train_loss": total / n, "train_accuracy": correct / n,
                "test_loss": test_total / test_n, "test_accuracy": test_correct / test_n}

    def run(self, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = False,
            resume: bool = False, checkpoint_every: int | None = None, diagnose_every: int | None = None,
            decision: rundir.Decision | None = None) -> dict:
        """Train for ``config.iterations`` (or until stopped); return the summary
        (:func:`targetprop.training.loop.run`).

        With ``out``, the run's files are written there (see the module docstring); a directory
        holding a run with different settings, or other files, is refused
        (:class:`~targetprop.training.files.RunFolderError`, a ValueError) unless ``overwrite``,
        which starts the run over. The same run there is continued if unfinished, and returned as
        it is if finished (nothing is trained or written). With ``resume``, the run in ``out``
        must exist and continues from its newest valid checkpoint (a corrupt one is reported as a
        :class:`~targetprop.training.checkpoint.CheckpointWarning`, set aside as ``*.corrupt`` and
        the one before it used); the error lists the settings that differ from the run's, other
        than the iteration budget. ``decision``: what to do with the folder, already decided by
        :func:`targetprop.training.rundir.decide` (instead of ``out``, ``overwrite`` and
        ``resume``). ``checkpoint_every``: iterations between checkpoints (0: only at the end and
        on SIGINT/SIGTERM; None: the run's own when it continues, else 1000). ``diagnose_every``:
        every that many iterations (at evaluations), append :mod:`targetprop.diagnose`'s
        diagnostics of one fixed batch to ``diagnostics.csv`` (0: never; None: the run's own when
        it continues, else 0). Ctrl-C ends the run with status ``interrupted``; a signal that
        stopped it is named in the summary (``signal``).
        """
        return loop.run(self, out, overwrite=overwrite, progress=progress, resume=resume,
                        checkpoint_every=checkpoint_every, diagnose_every=diagnose_every, decision=decision)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """The trainer's part of a checkpoint: model, optimizer and the global generators."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": _rng_state(self.device)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], self.device)

    def to_device(self, batch):
        """``(x, y)`` on the run's device in its dtype (:func:`~targetprop.training.build.to_run`)."""
        return to_run(batch, self.dtype, self.device)


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
