"""The one Markdown table writer: every table the package prints (run reports, ``tune``'s grid,
the benchmark, ``diagnose``) is made by :func:`table`.

    >>> print(table(["a", "b"], [[1, "x"], [2.5, ""]]))
    | a | b |
    |---|---|
    | 1 | x |
    | 2.5 |  |

Cells are ``str``-ed as given (format numbers before); a ``|`` inside a cell is escaped so that
it cannot split the row.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def row(cells: Sequence) -> str:
    """One table line: ``| c1 | c2 | … |``."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """The header, its rule (``|---|…``) and one line per row, joined by newlines (no final one).
    A ValueError names a row whose cell count differs from the header's."""
    lines = [row(header), "|" + "---|" * len(header)]
    for i, cells in enumerate(rows):
        cells = list(cells)
        if len(cells) != len(header):
            raise ValueError(f"Markdown table row {i} has {len(cells)} cells, the header {len(header)}")
        lines.append(row(cells))
    return "\n".join(lines)
