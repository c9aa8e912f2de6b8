"""Building a run from its settings: the task, the device, the model, the optimizer and the loss.

This module owns turning a :class:`~targetprop.training.config.TrainConfig` into the objects a
:class:`~targetprop.training.trainer.Trainer` trains, and the seeding of what they draw at
construction (the model's initialization comes from ``(seed, "init")``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..tasks.base import Task
from ..tasks.registry import make_task
from ..tasks.seeding import derived_generator, derived_seed
from .config import DTYPES, TrainConfig
from .distributed import World, resolve_device
from .models import SequenceModel

LOSSES = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


def build_task(config: TrainConfig) -> Task:
    """The config's task (seeded by ``config.seed``)."""
    return make_task(config.task, length=config.length, batch_size=config.batch_size,
                     test_size=config.test_size, seed=config.seed, **config.task_options)


def build_device(config: TrainConfig, world: World) -> torch.device:
    """The device of ``config`` for this process, checked to hold a tensor; a ValueError if it
    is not usable here (e.g. CUDA asked of a torch built without it, or an index past the last GPU)."""
    device = resolve_device(config.device, world)
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:  # e.g. "Torch not compiled with CUDA enabled"
        raise ValueError(f"device {config.device!r} is not usable here: {err}") from None
    return device


def build_model(config: TrainConfig, task: Task, processes: int = 1) -> SequenceModel:
    """The config's model for ``task``, initialized from ``(seed, "init")``; what a layer draws
    from the global generator (the ``learned`` rule's reverse layer) comes from ``(seed,
    "init-global")``, and the caller's global generator is left as it was. ``processes``: how
    many data-parallel processes will train it."""
    options = dict(rule=config.rule, reg=config.reg, target_step=config.target_step, tol=config.tol,
                   through_time=config.through_time, dtype=DTYPES[config.dtype], **config.layer_options)
    if processes > 1 and "check_finite" not in config.layer_options:
        # a layer that raised on one process alone would leave the others waiting in the all-reduce:
        # the trainer's guard checks the all-reduced direction on every process instead
        options["check_finite"] = False
    if config.nonlinearity is not None:
        options["nonlinearity"] = config.nonlinearity
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(config.seed, "init-global"))
        return SequenceModel(config.cell, task.input_size, config.hidden_size, task.output_size,
                             init=config.init, generator=derived_generator(config.seed, "init"), **options)


def to_run(batch, dtype: torch.dtype, device: torch.device):
    """``(x, y)`` on ``device`` in the run's ``dtype`` (integer labels keep theirs); from the CPU to
    CUDA through pinned memory, so that the copy does not wait for the device."""
    x, y = batch
    x = x.to(dtype=dtype)
    y = y.to(dtype=dtype) if y.is_floating_point() else y
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (with optional (Nesterov) momentum) or ``torch.optim.Adam``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov)
    return torch.optim.Adam(model.parameters(), lr=config.lr)
