"""Argument checks shared by the layers and the run settings: each failure is a ValueError (a
TypeError too, for a wrong type where torch.nn raises one) naming the argument."""
from __future__ import annotations

import math
import numbers

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


class ArgumentTypeError(TypeError, ValueError):
    """A constructor argument of the wrong type: a TypeError, as ``torch.nn`` raises, and a
    ValueError, as this package's other argument checks raise (code catching either works)."""


def bool_arg(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def size_arg(name: str, value) -> int:
    """A positive int with ``torch.nn``'s wording (a TypeError for a non-int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return value


def probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1], the probability of an element being zeroed, "
                         f"got {value!r}")
    return float(value)
