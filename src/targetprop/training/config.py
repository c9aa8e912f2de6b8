"""Every setting of a training run, validated: :class:`TrainConfig` (saved as ``config.json``).

This module owns what a run's settings may be and how they are checked; running them is
:mod:`targetprop.training.trainer`'s.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field

import torch

from .. import _validation as check
from .models import MODELS
from ..tasks.images import IMAGE_TASKS
from ..tasks.registry import TASKS, _factory

OPTIMIZERS = ("sgd", "adam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    Model (a recurrent layer and a linear head on its last state, :mod:`targetprop.training.models`):
        cell: a key of :data:`targetprop.training.models.MODELS` (``rnn``).
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
            this many times its value at iteration 0 (``None`` or ``"none"``: only on NaN/inf).
        seed: seeds the training batches and the initialization.
        device: a torch device string (``cpu``, ``cuda``, ``cuda:1``) or ``auto`` (``cuda`` if
            available, else ``cpu``); under ``torchrun``, ``cuda`` is each process's ``cuda:LOCAL_RANK``.
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
        _strict_booleans("layer_options", self.layer_options, MODELS[self.cell])
        _strict_booleans("task_options", self.task_options, _factory(self.task))
        if (self.task_options.get("normalize") == "none" and self.task in IMAGE_TASKS and self.rule != "bp"
                and self.nonlinearity in (None, "tanh", "sigmoid")):
            raise ValueError("task_options: normalize='none' feeds raw pixel values (0-255), which saturate the "
                             "activation exactly in the first step, where TP's inverse is undefined (a NaN "
                             "direction at iteration 0); use normalize=scale (the default) or standardize, or rule bp")
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
        if isinstance(self.divergence_factor, str) and self.divergence_factor.lower() == "none":
            self.divergence_factor = None  # as written in TOML files, which have no null
        if self.divergence_factor is not None:
            self.divergence_factor = check.real("divergence_factor", self.divergence_factor, low=1.0,
                                                low_open=False)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}")
        try:
            if self.device != "auto":
                torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', or 'auto', got "
                             f"{self.device!r}") from None
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
        """A short description of the method: the cell (when not the simple RNN), the rule, its
        hyper-parameters and the optimizer."""
        cell = "" if self.cell == "rnn" else f"{self.cell} "
        opt = f"{self.optimizer} lr={self.lr:g}"
        if self.momentum:
            opt += f" {'nesterov' if self.nesterov else 'momentum'}={self.momentum:g}"
        if self.clip is not None:
            opt += f" clip={self.clip:g}"
        if self.rule == "bp":
            return f"{cell}bp, {opt}"
        tt = " through time" if self.through_time else ""
        return f"{cell}{self.rule}{tt} γh={self.target_step:g} r={self.reg:g}, {opt}"


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _strict_booleans(name: str, options: dict, target) -> None:
    """A ValueError for an option of ``target`` (a layer class or task factory) whose default is
    a boolean, given anything but true or false (``check_finite=maybe`` is not read as true)."""
    params = inspect.signature(target).parameters
    for key, value in options.items():
        if key in params and isinstance(params[key].default, bool) and not isinstance(value, bool):
            raise ValueError(f"{name}: {key} must be true or false, got {value!r}")
