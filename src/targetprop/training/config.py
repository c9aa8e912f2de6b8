"""Every setting of a training run, validated: :class:`TrainConfig` (saved as ``config.json``).

This module owns what a run's settings may be: each field of :class:`TrainConfig` carries its
:class:`Setting` (help text, group, kind, choices, bounds), from which the checks here, the
command line's options (:mod:`targetprop.cli`) and the reading of settings files
(:func:`read_settings_file`) all follow. Running the settings is :mod:`targetprop.training.trainer`'s.

Settings files are TOML, with the fields' names as keys (``target_step = 0.01``), the two option
tables as tables (``[task_options]``), and ``"none"`` for a setting that may be unset (TOML has
no null), as ``config.json`` writes ``null``.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

import torch

from .. import _validation as check
from .. import hyperparams, rules
from ..activations import ACTIVATIONS
from .models import MODELS
from ..tasks.images import IMAGE_TASKS
from ..tasks.registry import TASKS, _factory

OPTIMIZERS = ("sgd", "adam", "rmsprop")
#: the optimizers a momentum applies to (Nesterov's: SGD only)
WITH_MOMENTUM = ("sgd", "rmsprop")
#: the parameter groups that may take their own step size: setting → the model's part it steps
LR_GROUPS = {"lr_recurrent": "recurrent layer", "lr_head": "head"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the kinds of setting: how a value is written on the command line and checked
KINDS = ("choice", "count", "integer", "real", "switch", "text", "table")
OFF = "none"  # the one spelling of "unset" in files and on the command line (TOML has no null)


@dataclass(frozen=True)
class Entry:
    """A command-line shortcut to one entry of an option table (``--data-dir`` for
    ``task_options["data_dir"]``)."""

    key: str
    kind: str
    help: str


@dataclass(frozen=True)
class Setting:
    """What one field of :class:`TrainConfig` may be, and how the command line shows it.

    ``kind``: ``choice`` (one of ``choices()``), ``count`` (a positive integer), ``integer`` (a
    non-negative one), ``real`` (a number in ``bounds``: low, high, low open, high open),
    ``switch`` (true or false), ``text`` or ``table`` (named options, ``KEY=VALUE`` on the
    command line). ``optional``: the setting may be unset (None; ``"none"`` in files and on the
    command line). ``default_help``: how the help states a default that is not a plain value.
    """

    help: str
    group: str
    kind: str
    choices: Callable[[], Sequence[str]] | None = None
    bounds: tuple[float, float, bool, bool] = (-math.inf, math.inf, True, True)
    optional: bool = False
    default_help: str = ""
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    entries: tuple[Entry, ...] = ()

    def validate(self, name: str, value):
        """``value`` checked (and normalized: ints to floats for reals, ``"none"`` to None), or a
        ValueError naming ``name``."""
        if self.optional and (value is None or isinstance(value, str) and value.lower() == OFF):
            return None
        if self.kind == "choice":
            return check.choice(name, value, list(self.choices()))
        if self.kind == "count":
            return check.positive_int(name, value)
        if self.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            return value
        if self.kind == "real":
            low, high, low_open, high_open = self.bounds
            return check.real(name, value, low=low, high=high, low_open=low_open, high_open=high_open)
        if self.kind == "switch":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            return value
        if self.kind == "table":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"{name} must be a table of named options, got {value!r}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value


def setting(default, help: str, group: str, kind: str, **spec):
    """A :class:`TrainConfig` field with its :class:`Setting` in ``metadata["setting"]``."""
    assert kind in KINDS, kind
    meta = {"setting": Setting(help, group, kind, **spec)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _hyperparameter(p: hyperparams.Real):
    """The field of one of the layer's real hyper-parameters: its default, bounds and help are the
    layer's own (:mod:`targetprop.hyperparams`)."""
    return setting(p.default, p.help, "model", "real", bounds=p.bounds)


def _sorted(names) -> Callable[[], list[str]]:
    return lambda: sorted(names)


@dataclass
class TrainConfig:
    """Every setting of a run (saved as ``config.json``); validated on construction.

    Each field's meaning, kind and bounds are its :class:`Setting` (``targetprop train --help``
    lists them; :func:`settings` gives them by name). The model is a recurrent layer and a linear
    head on its last state (:mod:`targetprop.training.models`); the optimizer is ``torch.optim``'s,
    and for TP rules ``lr`` is ``γ_θ`` of eq. 3.
    """

    task: str = setting("temporal-order", "the task", "task", "choice", choices=_sorted(TASKS))
    length: int | None = setting(None, "steps per sequence T", "task", "count", optional=True,
                                 default_help="the task's")
    batch_size: int | None = setting(None, "training mini-batch size", "task", "count", optional=True,
                                     default_help="the task's")
    test_size: int | None = setting(None, "size of the fixed test set", "task", "count", optional=True,
                                    default_help="the task's")
    task_options: dict = setting({}, "a further option of the task's factory, e.g. criterion=absolute for "
                                     "adding", "task", "table", entries=(
        Entry("data_dir", "text", "image tasks: folder of the data files (default: $TARGETPROP_DATA; "
                                  "Fashion-MNIST: the Debian package's folder)"),))
    cell: str = setting("rnn", "the recurrent layer", "model", "choice", choices=_sorted(MODELS), aliases=("--model",))
    hidden_size: int = setting(100, "hidden units p", "model", "count")
    nonlinearity: str | None = setting(None, "the recurrent activation", "model", "choice", choices=lambda: ACTIVATIONS,
                                       optional=True, default_help="the cell's own, tanh as in the paper")
    rule: str = setting(hyperparams.RULE, "how the layer trains: bp, or a TP rule (linearized is eq. 2, the paper's)",
                        "model", "choice", choices=lambda: rules.RULE_NAMES)
    reg: float = _hyperparameter(hyperparams.REG)
    target_step: float = _hyperparameter(hyperparams.TARGET_STEP)
    tol: float = _hyperparameter(hyperparams.TOL)
    through_time: bool = setting(hyperparams.THROUGH_TIME, "the authors' public-code variant: back-propagate the "
                                                           "target losses through time", "model", "switch")
    init: str = setting("orthogonal", "orthogonal (the paper's) or default (the layers' own)", "model", "choice",
                        choices=lambda: ("orthogonal", "default"))
    forget_bias: float | None = setting(
        None, "the LSTM's forget-gate bias at init (f = sigmoid(value) before any input; targetprop.forget_bias_); "
              "0 is the paper's zero biases, with which the cell forgets half of itself per step", "model", "real",
        optional=True, default_help="1 for the LSTM; the other cells have no forget gate")
    layer_options: dict = setting({}, "a further option of the recurrent layer, e.g. check_finite=false",
                                  "model", "table", entries=tuple(
        Entry(p.name, "real", f"{p.help} (layer default {p.default:g})")
        for p in (hyperparams.INVERSE_LR, hyperparams.INVERSE_NOISE)))
    optimizer: str = setting("sgd", "the optimizer, torch.optim's with its defaults: sgd, adam (betas 0.9, 0.999, "
                                    "eps 1e-8), rmsprop (alpha 0.99, eps 1e-8, not centered)", "optimizer", "choice",
                             choices=lambda: OPTIMIZERS)
    lr: float = setting(0.1, "step size (γ_θ for TP)", "optimizer", "real", bounds=(0.0, math.inf, True, True))
    lr_recurrent: float | None = setting(
        None, "step size of the recurrent layer's parameters (every layer of a stack and both directions; the "
              "model has no modules below the recurrent layer: the input feeds it directly)", "optimizer", "real",
        bounds=(0.0, math.inf, True, True), optional=True, default_help="lr")
    lr_head: float | None = setting(None, "step size of the head's parameters (the linear read-out)", "optimizer",
                                    "real", bounds=(0.0, math.inf, True, True), optional=True, default_help="lr")
    momentum: float = setting(0.0, "momentum (sgd, rmsprop)", "optimizer", "real", bounds=(0.0, 1.0, False, True))
    nesterov: bool = setting(False, "Nesterov momentum (SGD, with a positive momentum)", "optimizer", "switch")
    clip: float | None = setting(None, "clip the norm of all parameters' directions to this value each iteration",
                                 "optimizer", "real", bounds=(0.0, math.inf, True, True), optional=True,
                                 default_help="no clipping")
    iterations: int = setting(40000, "training iterations", "schedule", "count")
    eval_every: int = setting(100, "evaluate (and log a metrics row) every N iterations", "schedule", "count",
                              metavar="N")
    stop_at_accuracy: float | None = setting(None, "stop once the test accuracy reaches this fraction, e.g. 1.0",
                                             "schedule", "real", bounds=(0.0, 1.0, True, False), optional=True,
                                             metavar="FRACTION", default_help="never")
    divergence_factor: float | None = setting(
        2.0, "stop as diverged when the loss on the fixed training sample exceeds FACTOR times its value at "
             "iteration 0; none: only on NaN/inf", "schedule", "real", bounds=(1.0, math.inf, False, True),
        optional=True, metavar="FACTOR|none")
    seed: int = setting(0, "seeds the training batches and the initialization", "schedule", "integer")
    device: str = setting("cpu", "cpu, cuda, cuda:1, … or auto (cuda if available; under torchrun, cuda is each "
                                 "process's cuda:LOCAL_RANK)", "schedule", "text")
    dtype: str = setting("float32", "float32 or float64", "schedule", "choice", choices=_sorted(DTYPES))
    label: str = setting("", "name of the run in tables and plot legends", "schedule", "text",
                         default_help="made from the settings")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.metadata["setting"].validate(f.name, getattr(self, f.name)))
        if rules.available(self.cell):
            rules.check_rule_name(self.cell, self.rule)  # the rules this cell registers
        if self.cell == "lstm" and self.forget_bias is None:
            self.forget_bias = 1.0
        elif self.cell != "lstm" and self.forget_bias is not None:
            raise ValueError(f"forget_bias applies to cell 'lstm', not {self.cell!r} (it has no forget gate)")
        clash = sorted(set(self.layer_options) & (FIELDS | {"input_size", "batch_first"}))
        if clash:
            raise ValueError(f"layer_options may not set {', '.join(clash)}: use the setting(s) of that name")
        clash = sorted(set(self.task_options) & FIELDS)
        if clash:
            raise ValueError(f"task_options may not set {', '.join(clash)}: use the setting(s) of that name")
        _strict_booleans("layer_options", self.layer_options, MODELS[self.cell])
        _strict_booleans("task_options", self.task_options, _factory(self.task))
        if (self.task_options.get("normalize") == "none" and self.task in IMAGE_TASKS and self.rule != "bp"
                and self.nonlinearity in (None, "tanh", "sigmoid")):
            raise ValueError("task_options: normalize='none' feeds raw pixel values (0-255), which saturate the "
                             "activation exactly in the first step, where TP's inverse is undefined (a NaN "
                             "direction at iteration 0); use normalize=scale (the default) or standardize, or rule bp")
        if self.optimizer not in WITH_MOMENTUM and self.momentum:
            raise ValueError(f"momentum applies to optimizer {' and '.join(map(repr, WITH_MOMENTUM))}, "
                             f"not {self.optimizer!r}")
        if self.optimizer != "sgd" and self.nesterov:
            raise ValueError(f"nesterov applies to optimizer 'sgd', not {self.optimizer!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a positive momentum")
        try:
            if self.device != "auto":
                torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', or 'auto', got "
                             f"{self.device!r}") from None

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a mapping of field names; a ValueError names any unknown key."""
        unknown = sorted(set(values) - FIELDS)
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
        hyper-parameters and the optimizer (with the step sizes of parameter groups that have their own)."""
        cell = "" if self.cell == "rnn" else f"{self.cell} "
        opt = f"{self.optimizer} lr={self.lr:g}"
        for name in LR_GROUPS:
            if getattr(self, name) is not None:
                opt += f" {name}={getattr(self, name):g}"
        if self.momentum:
            opt += f" {'nesterov' if self.nesterov else 'momentum'}={self.momentum:g}"
        if self.clip is not None:
            opt += f" clip={self.clip:g}"
        if self.rule == "bp":
            return f"{cell}bp, {opt}"
        tt = " through time" if self.through_time else ""
        return f"{cell}{self.rule}{tt} γh={self.target_step:g} r={self.reg:g}, {opt}"


#: the names of every setting
FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
_SETTINGS = {f.name: f.metadata["setting"] for f in dataclasses.fields(TrainConfig)}


def settings() -> dict[str, tuple[Setting, object]]:
    """Every field of :class:`TrainConfig`, in order: its :class:`Setting` and its default."""
    defaults = TrainConfig()
    return {f.name: (f.metadata["setting"], getattr(defaults, f.name)) for f in dataclasses.fields(TrainConfig)}


def check_names(values: dict, where: str) -> None:
    """A ValueError naming the first key of ``values`` that is not a setting (with the nearest
    setting's name when one is close)."""
    for key in values:
        if key not in FIELDS:
            near = difflib.get_close_matches(str(key).replace("-", "_"), sorted(FIELDS), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"{where}: unknown setting {key!r}{hint}")


def merge(*layers: dict) -> dict:
    """The settings of ``layers``, each over the ones before it; the option tables are merged
    entry by entry (``--task-option`` adds to a file's ``[task_options]``), and ``"none"`` (any
    case) unsets an optional setting (:func:`unset_none`)."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            table = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = {**merged[key], **value} if table else unset_none(key, value)
    return merged


def unset_none(key: str, value):
    """None for ``"none"`` (any case) given to an optional setting ``key``, else ``value`` as it
    is (a required setting given ``"none"`` is then refused by its check, naming it)."""
    optional = key in FIELDS and _SETTINGS[key].optional
    return None if optional and isinstance(value, str) and value.lower() == OFF else value


def read_settings_file(path: str | Path) -> dict:
    """The settings in the TOML file ``path`` (only the keys it gives), each checked alone; a
    ValueError names the file and the key that is unknown or holds a bad value."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as err:
        raise ValueError(f"cannot read the settings file {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    check_names(values, str(path))
    fields = settings()
    for key, value in values.items():
        try:
            values[key] = fields[key][0].validate(key, value)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return values


def _strict_booleans(name: str, options: dict, target) -> None:
    """A ValueError for an option of ``target`` (a layer class or task factory) whose default is
    a boolean, given anything but true or false (``check_finite=maybe`` is not read as true)."""
    params = inspect.signature(target).parameters
    for key, value in options.items():
        if key in params and isinstance(params[key].default, bool) and not isinstance(value, bool):
            raise ValueError(f"{name}: {key} must be true or false, got {value!r}")
