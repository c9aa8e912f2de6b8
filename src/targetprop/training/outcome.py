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
import signal
from pathlib import Path

import torch

from .. import __version__
from . import checkpoint
from .guard import NonFinite


class Diverged(Exception):
    """The loss became NaN/inf or grew beyond ``divergence_factor`` times its initial value."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run at an iteration boundary (after saving a checkpoint)."""


def failure(trainer, err: Exception, checkpoints: Path | None) -> tuple[str, str]:
    """Status and message of a run stopped by ``err`` (``checkpoints``: its checkpoint folder, or
    None); with deferred checks, a NaN/inf recorded before ``err`` is reported instead, as its cause."""
    try:
        trainer.guard.flush()
    except NonFinite as earlier:
        err = earlier
    if isinstance(err, NonFinite):
        status = "diverged" if err.what == "loss" else "failed"
        return status, str(err) + bad_parameters(trainer, err) + kept(checkpoints)
    if isinstance(err, Diverged):
        return "diverged", str(err) + kept(checkpoints)
    return "failed", f"{type(err).__name__}: {err}{kept(checkpoints)}"


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


def lost_message(world, lost_ranks: list[int], iteration: int, err: RuntimeError, folder: Path | None) -> str:
    """The message of a data-parallel run whose peers ``lost_ranks`` were lost at ``iteration``
    (``err``: the failed collective; ``folder``: the run's checkpoint folder, on every process)."""
    lost = ", ".join(map(str, lost_ranks)) or "none found (a collective failed)"
    again = "; the same command continues the run" if folder is not None else ""
    return (f"lost process(es) {lost} of {world.size} at iteration {iteration} "
            f"({first_sentence(err)}){kept(folder, 'last checkpoint')}{again}")


def first_sentence(err: BaseException) -> str:
    """The gist of an error from a communication library: its first sentence, without the
    ``[file.cc:123]`` location in front."""
    text = str(err).strip() or type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return text.split(". ")[0][:160]


def summary(config, state, status: str, message: str, environment: dict, *, lost_ranks: list[int] | None = None,
            stopped_by: int = 0) -> dict:
    """The outcome (``summary.json``) of a run of ``config`` that stands at ``state`` (a
    :class:`~targetprop.training.state.RunState`); ``lost_ranks`` when a data-parallel peer was
    lost, ``signal`` the name of the signal that stopped it (``stopped_by``, 0: none). Non-finite
    numbers are written as null."""
    last, best = state.last or {}, state.best
    values = {
        "status": status,
        "message": message,
        "label": config.describe(),
        "iterations": state.iteration,
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "best_test_accuracy": best[0] if best else None,
        "best_at": best[1] if best else None,
        "iteration_to_100": state.reached_at,
        "train_time": state.train_time,
        "wall_time": state.elapsed(),
        "version": __version__,
        "environment": environment,
        **({"lost_ranks": lost_ranks} if lost_ranks is not None else {}),
        **({"signal": signal.Signals(stopped_by).name} if stopped_by else {}),
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
