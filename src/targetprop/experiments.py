"""The paper's experiments as data: ``targetprop reproduce`` and ``targetprop tune`` (issue 5).

(Placeholder: the commands are added by :func:`add_commands`.)
"""
from __future__ import annotations


def add_commands(sub) -> None:
    """Add this module's sub-commands to the ``targetprop`` parser's sub-parsers ``sub``."""
