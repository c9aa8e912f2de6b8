"""Subnormal floats, handled inside the library and scoped to its own work.

Far back in time, TP's displacements shrink by about ``1/(1+r)`` per step (eq. 2 with an
orthogonal ``W_hh``) and spend tens of steps in the subnormal range (below 1.2e-38 in float32)
before they underflow to zero. On many x86 CPUs arithmetic on subnormals is up to ~100× slower,
which made the backward pass several times slower than it needs to be. While a TP layer runs its
forward or backward pass, the calling thread flushes subnormals to zero (FTZ and DAZ), and the
compiled loops do the same on every thread they use; the caller's mode is restored afterwards,
so the user's other code never sees a changed floating-point mode. What is lost is below the
smallest normal number: see docs/maths.md ("Subnormal numbers") for why no float32 result that
matters can change. :func:`set_flush_denormals` turns this off (e.g. to compare against an
unflushed run).
"""
from __future__ import annotations

import contextlib

import torch

_enabled = True
#: a float32 subnormal; half of it is 0 exactly when the thread flushes (FTZ or DAZ)
_PROBE = torch.tensor([2.0 ** -130], dtype=torch.float32)


def flushing() -> bool:
    """Whether the calling thread currently flushes float32 subnormals to zero."""
    return bool((_PROBE * 0.5).item() == 0.0)


def set_flush_denormals(enabled: bool) -> None:
    """Whether the library's layers flush subnormals during their own work (default True)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_flush_denormals expects a bool, got {enabled!r}")
    _enabled = enabled  # the compiled loops read it each time they are selected (targetprop.kernels.load)


def flush_denormals_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def flushed():
    """Flush subnormals on the calling thread for the duration of the block, then restore the
    caller's mode; a no-op when already flushing, when disabled, or on a CPU without the mode."""
    if not _enabled or flushing() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
