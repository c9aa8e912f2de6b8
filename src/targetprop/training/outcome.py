"""How a run ends: the exceptions that stop it, its status and message, and its summary.

This module owns the verdicts (:data:`targetprop.training.rundir.STATUSES`): ``diverged`` for a
NaN/inf or growing loss (:class:`Diverged`, or a non-finite loss found by the guard),
``failed`` for a NaN/inf mini-batch or direction, a failed inverse, a lost process, or an
unexpected error (a bug: reported, then raised again with its own type and traceback), and
``interrupted`` (:class:`Interrupted`) for SIGINT/SIGTERM. A stopped run's message names its
last good checkpoint, which is kept: none is written after it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .. import __version__
from . import checkpoint
from .guard import NonFinite


class Diverged(Exception):
    """The loss became NaN/inf or grew beyond ``divergence_factor`` times its initial value."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run at an iteration boundary (after saving a checkpoint)."""


def failure(trainer, err: Exception) -> tuple[str, str]:
    """Status and message of a run stopped by ``err``; with deferred checks, a NaN/inf
    recorded before ``err`` is reported instead, as its cause."""
    try:
        trainer.guard.flush()
    except NonFinite as earlier:
        err = earlier
    if isinstance(err, NonFinite):
        status = "diverged" if err.what == "loss" else "failed"
        return status, str(err) + bad_parameters(trainer, err) + kept(trainer.checkpoints)
    if isinstance(err, Diverged):
        return "diverged", str(err) + kept(trainer.checkpoints)
    return "failed", f"{type(err).__name__}: {err}{kept(trainer.checkpoints)}"


def kept(folder: Path | None, what: str = "last good checkpoint") -> str:
    """How a stopped run's message names its newest checkpoint in ``folder`` ("" if none)."""
    saved = checkpoint.listed(folder) if folder is not None else []
    return f"; the {what}, iteration {saved[-1][0]}, is kept" if saved else ""


def bad_parameters(trainer, err: NonFinite) -> str:
    """For a bad direction caught before the step: which parameters' ``.grad`` hold NaN/inf."""
    if err.what != "direction" or trainer.guard.deferred:
        return ""
    bad = [name for name, p in trainer.model.named_parameters()
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return f" in {', '.join(bad)}" if bad else ""


def lost_message(trainer, err: RuntimeError, folder: Path | None) -> str:
    """The message of a data-parallel run whose peer was lost (``err``: the failed collective;
    ``folder``: the run's checkpoint folder, on every process)."""
    lost = ", ".join(map(str, trainer.lost_ranks)) or "none found (a collective failed)"
    again = "; the same command continues the run" if folder is not None else ""
    return (f"lost process(es) {lost} of {trainer.world.size} at iteration {trainer.iteration} "
            f"({first_sentence(err)}){kept(folder, 'last checkpoint')}{again}")


def first_sentence(err: BaseException) -> str:
    """The gist of an error from a communication library: its first sentence, without the
    ``[file.cc:123]`` location in front."""
    text = str(err).strip() or type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return text.split(". ")[0][:160]


def summary(trainer, status: str, message: str, wall_time: float) -> dict:
    """The run's outcome (``summary.json``); non-finite numbers are written as null."""
    last = trainer.last or {}
    best = trainer.best
    values = {
        "status": status,
        "message": message,
        "label": trainer.config.describe(),
        "iterations": trainer.iteration,
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "best_test_accuracy": best[0] if best else None,
        "best_at": best[1] if best else None,
        "iteration_to_100": trainer.reached_at,
        "train_time": trainer.train_time,
        "wall_time": wall_time,
        "version": __version__,
        "environment": trainer.environment,
        **({"lost_ranks": trainer.lost_ranks} if trainer.lost_ranks is not None else {}),
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
