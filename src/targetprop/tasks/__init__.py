"""The tasks, each a :class:`~targetprop.tasks.base.Task`: the protocol (``base``), the paper's
synthetic sequences (``synthetic``) and images read pixel by pixel (``images``), real series
classified whole (``sequences``: the UEA/UCR archive's in ``ucr``, read by ``tsfile``; a user's
own file in ``userfile``), the table of tasks by name (``registry``), the one way a task seeds
its random streams (``seeding``), and the data: reading the image files (``datasets``),
fetching and checking every data set (``fetch``, with ``sources`` and ``staging``)."""
from .base import Batch, Task

__all__ = ["Batch", "Task"]
