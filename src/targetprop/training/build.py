"""Building a run from its settings: the task, the device, the model, the optimizer and the loss.

This module owns turning a :class:`~targetprop.training.config.TrainConfig` into the objects a
:class:`~targetprop.training.trainer.Trainer` trains (the optimizer's parameter groups included),
and the seeding of what they draw at construction (the model's initialization comes from
``(seed, "init")``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..tasks.base import Task
from ..tasks.registry import make_task
from ..tasks.seeding import derived_generator, derived_seed
from .config import DTYPES, LR_GROUPS, TrainConfig
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
                             init=config.init, generator=derived_generator(config.seed, "init"),
                             forget_bias=config.forget_bias, **options)


def to_run(batch, dtype: torch.dtype, device: torch.device):
    """``(x, y)`` on ``device`` in the run's ``dtype`` (integer labels keep theirs); from the CPU to
    CUDA through pinned memory, so that the copy does not wait for the device."""
    x, y = batch
    x = x.to(dtype=dtype)
    y = y.to(dtype=dtype) if y.is_floating_point() else y
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def param_groups(config: TrainConfig, model: SequenceModel) -> list[dict]:
    """The optimizer's parameter groups: one group of every parameter at ``lr`` when no part has
    its own step size (so such a run's checkpoints keep one group), else one group per part of
    :data:`~targetprop.training.config.LR_GROUPS` (``name``: the setting), each at its own step
    size or ``lr``, and any other parameter in a last group at ``lr``."""
    if all(getattr(config, name) is None for name in LR_GROUPS):
        return [{"params": list(model.parameters()), "lr": config.lr}]
    parts = {"lr_recurrent": model.rnn, "lr_head": model.head}
    groups, seen = [], set()
    for name, module in parts.items():
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(map(id, params))
        lr = getattr(config, name)
        groups.append({"params": params, "lr": config.lr if lr is None else lr, "name": name})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": config.lr, "name": "lr"})
    return groups


def build_optimizer(config: TrainConfig, model: SequenceModel) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (with optional (Nesterov) momentum), ``torch.optim.Adam`` or
    ``torch.optim.RMSprop`` (with optional momentum; alpha 0.99, torch's default), over
    :func:`param_groups`; their other hyper-parameters are torch's defaults."""
    groups = param_groups(config, model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr)
