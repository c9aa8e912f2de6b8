"""Tasks by name: the one table the trainer and the CLI look tasks up in.

A factory takes keyword options (``length``, ``seed``, ``batch_size``, ``test_size``, …) and
returns a :class:`~targetprop.tasks.base.Task`. :func:`make_task` passes only the options a
factory accepts and that are set (not None), and names any it does not accept.
"""
from __future__ import annotations

import inspect
from typing import Callable

from .base import Task
from .images import IMAGE_TASKS
from .synthetic import SYNTHETIC_TASKS
from .ucr import UCR_TASKS
from .userfile import FILE_TASKS

TaskFactory = Callable[..., Task]

TASKS: dict[str, TaskFactory] = {**SYNTHETIC_TASKS, **IMAGE_TASKS, **UCR_TASKS, **FILE_TASKS}


def register_task(name: str, factory: TaskFactory) -> None:
    """Add (or replace) the task ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"the factory of task {name!r} must be callable, got {factory!r}")
    TASKS[name] = factory


def task_options(name: str) -> list[str]:
    """The keyword options the factory of task ``name`` accepts."""
    params = inspect.signature(_factory(name)).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def make_task(name: str, **options) -> Task:
    """The task ``name`` built with the ``options`` that are not None.

    Raises ValueError for an unknown task, or an option the task does not take.
    """
    factory = _factory(name)
    given = {k: v for k, v in options.items() if v is not None}
    accepted = set(task_options(name))
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    if not takes_any:
        unknown = sorted(set(given) - accepted)
        if unknown:
            raise ValueError(f"task {name!r} does not take option(s) {', '.join(unknown)} "
                             f"(it takes: {', '.join(sorted(accepted))})")
    try:
        task = factory(**given)
    except TypeError as err:  # a factory forwarding **options to one that refuses an option
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"task {name!r} does not take an option: {err}") from None
    if not isinstance(task, Task):
        raise TypeError(f"the factory of task {name!r} returned {type(task).__name__}, not a Task")
    return task


def _factory(name: str) -> TaskFactory:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
