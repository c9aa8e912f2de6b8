"""Argument types of the command line (``argparse`` ``type=`` callables): each turns a string into
a value or raises ``argparse.ArgumentTypeError`` naming what is wrong; :func:`for_setting` picks
the one of a kind of run setting (:class:`targetprop.training.config.Setting`)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def seeds(text: str) -> list[int]:
    """``N`` or ``N,M,…``: non-negative integers (seeds)."""
    try:
        return [non_negative_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a seed or a comma-separated list of seeds (non-negative "
                                         f"integers), got {text!r}") from None


def factor(text: str) -> float | str:
    """A number, or ``none`` (kept as the string "none": the setting unset)."""
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def one_of(name: str, choices: Callable[[], Sequence[str]], optional: bool = False) -> Callable[[str], str]:
    """A name among ``choices()`` (or ``none`` when ``optional``)."""

    def choice(text: str) -> str:
        allowed = list(choices())
        if text in allowed or optional and text.lower() == "none":
            return text
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} ({name} must be one of {allowed})")

    return choice


def for_setting(name: str, kind: str, *, choices=None, optional: bool = False) -> Callable[[str], object]:
    """The argument type of a setting of ``kind`` (see :class:`targetprop.training.config.Setting`);
    an optional setting also takes ``none`` (kept as the string, which the settings read as unset)."""
    if kind == "choice":
        return one_of(name, choices, optional)
    if kind == "real":
        return factor if optional else float
    parse = {"count": positive_int, "integer": non_negative_int, "text": str}[kind]
    if not optional:
        return parse

    def or_none(text: str):
        return "none" if text.lower() == "none" else parse(text)

    return or_none


def wants_progress(args) -> bool:
    """Progress bars: unless ``--quiet``, and only on a terminal (a log file gets no bars)."""
    return not args.quiet and sys.stderr.isatty()
