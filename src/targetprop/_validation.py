"""Argument checks shared by the layers: each failure is a ValueError naming the argument."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def real(name: str, value, *, low: float, high: float = math.inf, low_open: bool, high_open: bool = True) -> float:
    """``value`` as a float inside the stated interval, else a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) or (
        isinstance(value, (int, float)) and value == math.inf and high == math.inf and not high_open
    )
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        hi = "inf" if high == math.inf else f"{high:g}"
        raise ValueError(f"{name} must be a real number in {lb}{low:g}, {hi}{hb}, got {value!r}")
    return value


def choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def finite(name: str, tensor: Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf values")
