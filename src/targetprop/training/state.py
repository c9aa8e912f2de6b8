"""Where a run stands: :class:`RunState`, the loop's own state, saved in every checkpoint.

This module owns what a run has done so far and the rules that follow from it alone: the
iteration counter, the running sum of mini-batch losses between evaluation points, the best and
the first 100% test accuracy, the loss at iteration 0 that divergence is measured against, the
clocks (training time, wall time across sessions), whether the loop has finished, and the
cadences of evaluations, checkpoints and diagnostics. :meth:`RunState.state_dict` is the part of
a checkpoint that is not the model's, the optimizer's or the generators'
(:func:`targetprop.training.checkpoint.payload`); the loop (:mod:`targetprop.training.loop`)
is the one module that moves it forward.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .outcome import Diverged

#: iterations between checkpoints unless a run says otherwise
CHECKPOINT_EVERY = 1000


@dataclass
class RunState:
    """What a run has done so far.

    ``iteration``: iterations done; ``initial_loss``: the loss on the fixed training sample at
    iteration 0; ``reached_at``: the first logged iteration with 100% test accuracy; ``best``:
    the best logged test accuracy and its iteration; ``train_time``: seconds spent in training
    steps; ``wall_time``: seconds of the run's earlier sessions (:meth:`elapsed` adds this one's);
    ``rows``: metrics rows logged; ``last``: the last row; ``finished`` / ``stopped_early``: the
    loop ended, by its budget or by ``stop_at_accuracy``. The cadences (``checkpoint_every``,
    ``diagnose_every``; 0: never) are the session's: ``config.json`` records them, a checkpoint
    does not.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    iteration: int = 0
    initial_loss: float | None = None
    reached_at: int | None = None
    best: tuple[float, int] | None = None
    train_time: float = 0.0
    wall_time: float = 0.0
    rows: int = 0
    last: dict | None = None
    finished: bool = False
    stopped_early: bool = False
    checkpoint_every: int = CHECKPOINT_EVERY
    diagnose_every: int = 0
    loss_count: int = 0
    loss_sum: Tensor = field(init=False)
    _started: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("checkpoint_every", "diagnose_every"):
            every = getattr(self, name)
            if isinstance(every, bool) or not isinstance(every, int) or every < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {every!r}")
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    # ------------------------------------------------------------------ clocks

    def start_clock(self) -> None:
        """Start this session's wall clock (after any one-off set-up, e.g. building the kernels)."""
        self._started = time.perf_counter() - self.wall_time

    def elapsed(self) -> float:
        """Wall seconds of the run so far, earlier sessions included."""
        return time.perf_counter() - self._started if self._started is not None else self.wall_time

    # ------------------------------------------------------------------ steps and evaluation points

    def add_step(self, loss: Tensor, seconds: float) -> None:
        """One training step done: its mini-batch loss (a device tensor, not read) and its time."""
        self.loss_sum += loss
        self.loss_count += 1
        self.train_time += seconds
        self.iteration += 1

    def at_evaluation(self, eval_every: int, iterations: int) -> bool:
        return self.iteration % eval_every == 0 or self.iteration == iterations

    def at_checkpoint(self) -> bool:
        return bool(self.checkpoint_every) and self.iteration % self.checkpoint_every == 0

    def at_diagnosis(self) -> bool:
        return bool(self.diagnose_every) and self.iteration % self.diagnose_every == 0

    def take_batch_losses(self, world) -> tuple[float, int]:
        """The mean mini-batch loss since the last evaluation point over ``world``'s processes (NaN
        if no step was taken) and the number of steps; the sum starts again from zero."""
        count = self.loss_count
        mean = world.sum_(self.loss_sum.clone()).item() / (count * world.size) if count else math.nan
        self.loss_sum.zero_()
        self.loss_count = 0
        return mean, count

    def record(self, point: dict) -> None:
        """A metrics row logged: it becomes the last one; the best and the first 100% follow."""
        self.last = point
        self.rows += 1
        accuracy = point["test_accuracy"]
        if self.best is None or accuracy > self.best[0]:
            self.best = (accuracy, self.iteration)
        if self.reached_at is None and accuracy >= 1.0:
            self.reached_at = self.iteration

    def check_divergence(self, loss: float, factor: float | None) -> None:
        """:class:`~targetprop.training.outcome.Diverged` if the loss on the fixed training sample is
        NaN/inf or exceeds ``factor`` times its first value (which the first call sets)."""
        if self.initial_loss is None:
            self.initial_loss = loss
        if not math.isfinite(loss):
            raise Diverged(f"the training loss is {loss} at iteration {self.iteration}")
        if factor is not None and loss > factor * self.initial_loss:
            raise Diverged(f"the training loss {loss:.4g} at iteration {self.iteration} exceeds {factor:g} "
                           f"times its initial value {self.initial_loss:.4g}")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Plain values and one CPU tensor: everything above but the device and the cadences."""
        return {"iteration": self.iteration, "initial_loss": self.initial_loss, "reached_at": self.reached_at,
                "best": list(self.best) if self.best else None, "train_time": self.train_time,
                "wall_time": self.elapsed(), "rows": self.rows, "last": self.last,
                "loss_sum": self.loss_sum.detach().cpu(), "loss_count": self.loss_count,
                "finished": self.finished, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the clock restarts from its wall time)."""
        self.iteration, self.initial_loss, self.reached_at = state["iteration"], state["initial_loss"], \
            state["reached_at"]
        self.best = tuple(state["best"]) if state["best"] is not None else None
        self.train_time, self.wall_time = state["train_time"], state["wall_time"]
        self.rows, self.last = state["rows"], state["last"]
        self.loss_sum = state["loss_sum"].to(self.device, torch.float64)
        self.loss_count = state["loss_count"]
        self.finished, self.stopped_early = state["finished"], state["stopped_early"]
        self._started = None
