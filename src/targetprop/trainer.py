"""Training one model on one task: the configuration, the loop, and the run directory.

This module owns :class:`TrainConfig` (every setting of a run, validated), :class:`Trainer`
(model, optimizer and the iteration counter; :meth:`Trainer.step` trains on one mini-batch,
:meth:`Trainer.evaluate` measures the fixed evaluation sets, :meth:`Trainer.run` loops) and the
files of a run directory:

* ``config.json``: ``{"version": targetprop.__version__, "config": {...every setting...}}``;
* ``metrics.csv``: one row per evaluation point (iteration 0, then every ``eval_every``
  iterations and the last one), flushed after every row, so an interrupted run leaves a valid
  file with everything logged so far;
* ``summary.json``: written when the run ends, however it ends (see :data:`STATUSES`).

Iterations, not epochs: iteration ``i`` trains on ``task.train_batch(i)``. A run is stopped and
marked ``diverged`` when a mini-batch loss is NaN or inf, or when the loss on the fixed training
sample exceeds ``divergence_factor`` (2 by default) times its value at iteration 0; ``failed``
when the backward raises :class:`~targetprop.RegularizedInverseError` (e.g. diverged weights) or
``FloatingPointError``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import __version__
from . import _validation as check
from .inverse import RegularizedInverseError
from .models import MODELS, SequenceModel
from .tasks.base import Task
from .tasks.registry import TASKS, make_task
from .tasks.synthetic import derived_generator

OPTIMIZERS = ("sgd", "adam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
STATUSES = ("completed", "diverged", "failed", "interrupted")
METRICS = ("iteration", "time", "wall_time", "batch_loss", "train_loss", "train_accuracy",
           "test_loss", "test_accuracy")
RUN_FILES = ("config.json", "metrics.csv", "summary.json")


@dataclass
class TrainConfig:
    """Every setting of a run (saved as ``config.json``); validated on construction.

    Task:
        task: a name in :data:`targetprop.tasks.registry.TASKS` (``temporal-order``,
            ``temporal-order-3bit``, ``adding``, …).
        length: ``T``, steps per sequence (``None``: the task's default).
        batch_size: training mini-batch size (``None``: the task's default, 20 for synthetic tasks).
        test_size: size of the fixed test set (``None``: the task's default).
        task_options: further options of the task's factory (e.g. ``{"criterion": "absolute"}``
            for adding).
    Model (a recurrent layer and a linear head on its last state, :mod:`targetprop.models`):
        cell: a key of :data:`targetprop.models.MODELS` (``rnn``).
        hidden_size: ``p``.
        nonlinearity: the recurrent activation (``None``: the cell's own, ``tanh`` as in the paper).
        rule: ``bp``, ``linearized`` (eq. 2, the paper's TP), ``difference``, ``direct``, ``learned``.
        reg: ``r ≥ 0``, the regularization of the inverse.
        target_step: ``γ_h > 0`` (eq. 1).
        tol: ``τ``, margin of the projection onto the activation's range.
        through_time: the authors' public-code variant of the parameter direction.
        init: ``orthogonal`` (the paper's) or ``default``.
        layer_options: further options of the recurrent layer (e.g. ``{"inverse_lr": 1e-3}`` for
            the ``learned`` rule).
    Optimizer (from ``torch.optim``; for TP rules ``lr`` is ``γ_θ`` of eq. 3):
        optimizer: ``sgd`` or ``adam``.
        lr: step size, > 0.
        momentum: SGD momentum in [0, 1).
        nesterov: Nesterov momentum (SGD, needs ``momentum > 0``).
        clip: if set, clip the norm of all parameters' directions to this value each iteration.
    Schedule:
        iterations: training iterations.
        eval_every: evaluate (and log a metrics row) every this many iterations.
        stop_at_accuracy: stop early once the test accuracy reaches this fraction (e.g. 1.0).
        divergence_factor: stop as ``diverged`` once the loss on the fixed training sample exceeds
            this many times its value at iteration 0 (``None``: only on NaN/inf).
        seed: seeds the training batches and the initialization.
        device: a torch device string (``cpu``, ``cuda``, ``cuda:1``).
        dtype: ``float32`` or ``float64``.
        label: a name for the run in tables and plot legends (``""``: made from the settings).
    """

    task: str = "temporal-order"
    length: int | None = None
    batch_size: int | None = None
    test_size: int | None = None
    task_options: dict = field(default_factory=dict)
    cell: str = "rnn"
    hidden_size: int = 100
    nonlinearity: str | None = None
    rule: str = "linearized"
    reg: float = 1.0
    target_step: float = 1e-2
    tol: float = 1e-3
    through_time: bool = False
    init: str = "orthogonal"
    layer_options: dict = field(default_factory=dict)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    clip: float | None = None
    iterations: int = 40000
    eval_every: int = 100
    stop_at_accuracy: float | None = None
    divergence_factor: float | None = 2.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    label: str = ""

    def __post_init__(self):
        check.choice("task", self.task, sorted(TASKS))
        for name in ("length", "batch_size", "test_size"):
            if getattr(self, name) is not None:
                check.positive_int(name, getattr(self, name))
        for name in ("task_options", "layer_options"):
            options = getattr(self, name)
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise ValueError(f"{name} must be a table of named options, got {options!r}")
        clash = sorted(set(self.layer_options) & (_FIELDS | {"input_size", "batch_first"}))
        if clash:
            raise ValueError(f"layer_options may not set {', '.join(clash)}: use the setting(s) of that name")
        check.choice("cell", self.cell, sorted(MODELS))
        check.positive_int("hidden_size", self.hidden_size)
        self.reg = check.real("reg", self.reg, low=0.0, low_open=False)
        self.target_step = check.real("target_step", self.target_step, low=0.0, low_open=True)
        self.tol = check.real("tol", self.tol, low=0.0, high=0.5, low_open=True)
        _boolean("through_time", self.through_time)
        check.choice("init", self.init, ("orthogonal", "default"))
        check.choice("optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check.real("lr", self.lr, low=0.0, low_open=True)
        self.momentum = check.real("momentum", self.momentum, low=0.0, high=1.0, low_open=False)
        _boolean("nesterov", self.nesterov)
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"momentum and nesterov apply to optimizer 'sgd', not {self.optimizer!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a positive momentum")
        if self.clip is not None:
            self.clip = check.real("clip", self.clip, low=0.0, low_open=True)
        check.positive_int("iterations", self.iterations)
        check.positive_int("eval_every", self.eval_every)
        if self.stop_at_accuracy is not None:
            self.stop_at_accuracy = check.real("stop_at_accuracy", self.stop_at_accuracy, low=0.0, high=1.0,
                                               low_open=True, high_open=False)
        if self.divergence_factor is not None:
            self.divergence_factor = check.real("divergence_factor", self.divergence_factor, low=1.0,
                                                low_open=False)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {self.device!r}") from None
        check.choice("dtype", self.dtype, sorted(DTYPES))
        if not isinstance(self.label, str):
            raise ValueError(f"label must be a string, got {self.label!r}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a mapping of field names; a ValueError names any unknown key."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        """The settings as plain JSON values."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def describe(self) -> str:
        """``label``, or else :meth:`method`."""
        return self.label or self.method()

    def method(self) -> str:
        """A short description of the method: rule, its hyper-parameters and the optimizer."""
        opt = f"{self.optimizer} lr={self.lr:g}"
        if self.momentum:
            opt += f" {'nesterov' if self.nesterov else 'momentum'}={self.momentum:g}"
        if self.clip is not None:
            opt += f" clip={self.clip:g}"
        if self.rule == "bp":
            return f"bp, {opt}"
        tt = " through time" if self.through_time else ""
        return f"{self.rule}{tt} γh={self.target_step:g} r={self.reg:g}, {opt}"


class Diverged(Exception):
    """The loss became NaN/inf or grew beyond ``divergence_factor`` times its initial value."""


class MetricsLog:
    """``metrics.csv``: a header, then one row per evaluation point, flushed row by row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=METRICS)
        self._writer.writeheader()
        self._file.flush()
        self.rows = 0

    def append(self, row: dict) -> None:
        self._writer.writerow({k: _csv_value(row[k]) for k in METRICS})
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def read_metrics(run_dir: str | Path) -> dict[str, list[float]]:
    """The columns of a run's ``metrics.csv`` as lists of floats (empty cells become NaN)."""
    with open(Path(run_dir) / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows] for k in METRICS}


class Trainer:
    """Trains a :class:`~targetprop.models.SequenceModel` on a task, as set by a :class:`TrainConfig`.

    State: ``model``, ``optimizer``, ``iteration`` (iterations done), ``initial_loss`` (loss on
    the fixed training sample at iteration 0), ``reached_at`` (first logged iteration with 100%
    test accuracy), ``best`` (best logged test accuracy and its iteration), ``train_time``
    (seconds in :meth:`step`) and ``log`` (the metrics file and its row count). Building one
    validates every setting and touches no file; :meth:`run` with an output directory writes
    the run's files.

    Args:
        config: the settings.
        task: the task to use instead of building it from the config (for tests and callers
            with their own data).
    """

    def __init__(self, config: TrainConfig, task: Task | None = None):
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.task = task if task is not None else build_task(config)
        try:
            self.model = build_model(config, self.task).to(self.device)
        except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
            raise ValueError(f"device {config.device!r} is not usable here: {err}") from None
        self.optimizer = build_optimizer(config, self.model)
        self.loss_fn = _LOSSES[self.task.loss]
        self.iteration = 0
        self.initial_loss: float | None = None
        self.reached_at: int | None = None
        self.best: tuple[float, int] | None = None  # best test accuracy and its iteration
        self.log: MetricsLog | None = None
        self.last: dict | None = None
        self.train_time = 0.0
        self._batch_losses: list[float] = []

    # ------------------------------------------------------------------ one iteration

    def step(self, iteration: int) -> float:
        """Train on the mini-batch of ``iteration``: forward, backward, clip, optimizer step.

        Returns the mini-batch loss (before the step).
        """
        self.model.train()
        x, y = self._to_device(self.task.train_batch(iteration))
        loss = self.loss_fn(self.model(x), y)
        value = loss.item()
        if not math.isfinite(value):
            raise Diverged(f"the mini-batch loss of iteration {iteration} is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        return value

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss and accuracy on the fixed training sample and on the test set."""
        self.model.eval()
        result = {}
        for split in ("train", "test"):
            total, correct, n = 0.0, 0, 0
            for batch in self.task.eval_batches(split):
                x, y = self._to_device(batch)
                out = self.model(x)
                total += self.loss_fn(out, y).item() * x.shape[0]
                correct += int(self.task.correct(out, y))
                n += x.shape[0]
            result[f"{split}_loss"], result[f"{split}_accuracy"] = total / n, correct / n
        return result

    # ------------------------------------------------------------------ the loop

    def run(self, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = False) -> dict:
        """Train for ``config.iterations`` (or until stopped); return the summary.

        With ``out``, the run's files are written there (see the module docstring); a directory
        holding a run with different settings, or other files, is refused unless ``overwrite``.
        Ctrl-C ends the run with status ``interrupted`` (the summary says so; nothing is lost).
        """
        out = Path(out) if out is not None else None
        if out is not None:
            prepare_run_dir(out, self.config, overwrite=overwrite)
            self.log = MetricsLog(out / "metrics.csv")
        start = time.perf_counter()
        status, message = "completed", ""
        bar = _progress_bar(self, progress)
        try:
            self._run_loop(start, bar)
        except Diverged as err:
            status, message = "diverged", str(err)
        except (RegularizedInverseError, FloatingPointError) as err:
            status, message = "failed", f"{type(err).__name__}: {err}"
        except KeyboardInterrupt:
            status, message = "interrupted", f"interrupted by the user at iteration {self.iteration}"
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
        summary = self.summary(status, message, time.perf_counter() - start)
        if out is not None:
            _write_json(out / "summary.json", summary)
        return summary

    def _run_loop(self, start: float, bar) -> None:
        cfg = self.config
        if self.iteration == 0:
            self._log_point(start, bar)
        while self.iteration < cfg.iterations:
            t0 = time.perf_counter()
            loss = self.step(self.iteration)
            self.train_time += time.perf_counter() - t0
            self._batch_losses.append(loss)
            self.iteration += 1
            bar.update(1)
            if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:
                point = self._log_point(start, bar)
                if cfg.stop_at_accuracy is not None and point["test_accuracy"] >= cfg.stop_at_accuracy:
                    return

    def _log_point(self, start: float, bar) -> dict:
        """Evaluate, append a metrics row, check for divergence; return the row."""
        point = {"iteration": self.iteration, "time": self.train_time,
                 "batch_loss": _mean(self._batch_losses), **self.evaluate(),
                 "wall_time": time.perf_counter() - start}
        self._batch_losses = []
        self.last = point
        if self.log is not None:
            self.log.append(point)
        if self.best is None or point["test_accuracy"] > self.best[0]:
            self.best = (point["test_accuracy"], self.iteration)
        if self.reached_at is None and point["test_accuracy"] >= 1.0:
            self.reached_at = self.iteration
        bar.set_postfix(loss=f"{point['train_loss']:.4g}", test_acc=f"{point['test_accuracy']:.1%}", refresh=False)
        self._check_divergence(point["train_loss"])
        return point

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
        })

    def _to_device(self, batch):
        x, y = batch
        x = x.to(self.device, self.dtype)
        y = y.to(self.device, self.dtype if y.is_floating_point() else None)
        return x, y


# ---------------------------------------------------------------------------- building blocks


def build_task(config: TrainConfig) -> Task:
    """The config's task (seeded by ``config.seed``)."""
    return make_task(config.task, length=config.length, batch_size=config.batch_size,
                     test_size=config.test_size, seed=config.seed, **config.task_options)


def build_model(config: TrainConfig, task: Task) -> SequenceModel:
    """The config's model for ``task``, initialized from ``(seed, "init")``."""
    options = dict(rule=config.rule, reg=config.reg, target_step=config.target_step, tol=config.tol,
                   through_time=config.through_time, dtype=DTYPES[config.dtype], **config.layer_options)
    if config.nonlinearity is not None:
        options["nonlinearity"] = config.nonlinearity
    return SequenceModel(config.cell, task.input_size, config.hidden_size, task.output_size,
                         init=config.init, generator=derived_generator(config.seed, "init"), **options)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (with optional (Nesterov) momentum) or ``torch.optim.Adam``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def check_run_dir(out: Path, config: TrainConfig, *, overwrite: bool) -> None:
    """Raise ValueError if a run of ``config`` may not be written to ``out`` (writes nothing).

    Refused unless ``overwrite``: a directory holding a run with different settings, or holding
    files that are not a run's. A run with the same settings starts over (runs are
    deterministic given their settings).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if not out.is_dir() or overwrite:
        return
    saved = out / "config.json"
    if saved.exists():
        try:
            previous = json.loads(saved.read_text(encoding="utf-8")).get("config")
        except (json.JSONDecodeError, AttributeError):
            previous = None
        if previous != config.to_dict():
            raise ValueError(f"output directory {out} holds a run with different settings "
                             f"({_changed(previous, config.to_dict())}); use --overwrite to replace it, "
                             f"or another output directory")
    elif any(out.iterdir()):
        raise ValueError(f"output directory {out} is not empty and holds no run; "
                         f"use --overwrite to write there anyway, or another output directory")


def prepare_run_dir(out: Path, config: TrainConfig, *, overwrite: bool) -> None:
    """Check ``out`` (:func:`check_run_dir`), create it, and write the run's ``config.json``."""
    check_run_dir(out, config, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    _write_json(out / "config.json", {"version": __version__, "config": config.to_dict()})


def train(config: TrainConfig, out: str | Path | None = None, *, overwrite: bool = False,
          progress: bool = False) -> dict:
    """Build a :class:`Trainer` for ``config`` and run it; return the summary."""
    return Trainer(config).run(out, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------- helpers

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_LOSSES = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def _finite_or_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _changed(previous, current: dict) -> str:
    if not isinstance(previous, dict):
        return "its config.json is unreadable"
    keys = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    return "differs in " + ", ".join(f"{k}: {previous.get(k)!r} → {current.get(k)!r}" for k in keys)


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _progress_bar(trainer: Trainer, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=trainer.config.iterations, initial=trainer.iteration, disable=not enabled,
                desc=trainer.config.describe(), unit="it", dynamic_ncols=True, leave=True)
