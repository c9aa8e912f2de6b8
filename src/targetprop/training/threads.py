"""How many CPU threads a command-line run uses when ``--threads`` is not given.

Measured on our 2-core machine (docs/BENCHMARKS.md, "Threads"): a second intra-op thread pays
only once a step has enough work. Below ``batch × hidden² = 2¹⁹`` multiply-adds per step (the
paper's synthetic tasks: B = 20, p = 100) a second thread was never faster and, beside another
busy process, up to 17× slower (threads that wait for each other at every parallel region);
above it, two threads took 0.72–0.79 of one thread's time. So the command line uses one thread
for small steps and torch's default (one per core) for the others; ``--threads`` overrides it.
Library code never changes the thread count: only the command line calls :func:`apply`.
"""
from __future__ import annotations

import torch

#: multiply-adds per step (batch × hidden²) below which runs get one thread
ONE_THREAD_BELOW = 2 ** 19
HELP = ("CPU threads for torch (default: 1 when batch x hidden^2 < 2^19, where a second thread was measured "
        "to save at most 13 percent on an idle machine and to cost 3-22x beside other jobs, else torch's)")
_TORCH_DEFAULT = torch.get_num_threads()
_automatic = False


def choose(batch_size: int, hidden_size: int) -> int:
    """The thread count for a run whose steps are ``batch_size`` rows of ``hidden_size`` units."""
    return 1 if batch_size * hidden_size ** 2 < ONE_THREAD_BELOW else _TORCH_DEFAULT


def set_automatic(automatic: bool) -> None:
    """Whether :func:`apply` chooses (the command line without ``--threads``) or leaves it be."""
    global _automatic
    _automatic = automatic


def apply(task, config) -> None:
    """Set torch's thread count for a run of ``config`` on ``task``, if choosing is on."""
    if _automatic:
        batch = getattr(task, "batch_size", None) or config.batch_size or 1
        torch.set_num_threads(choose(batch, config.hidden_size))
