"""The paper's tasks (Section 4): each a :class:`~targetprop.tasks.base.Task`."""
from .base import Batch, Task

__all__ = ["Batch", "Task"]
