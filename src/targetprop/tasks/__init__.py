"""The paper's tasks (Section 4), each a :class:`~targetprop.tasks.base.Task`: the protocol
(``base``), the synthetic sequences (``synthetic``), images read pixel by pixel (``images``), the
table of tasks by name (``registry``), the one way a task seeds its random streams (``seeding``),
and the image data: reading the files (``datasets``), fetching and checking them (``fetch``,
with ``sources`` and ``staging``)."""
from .base import Batch, Task

__all__ = ["Batch", "Task"]
