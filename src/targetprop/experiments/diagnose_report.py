"""What ``targetprop diagnose`` prints and writes: a :func:`targetprop.diagnose.diagnose` result
as a Markdown table with its columns explained (:func:`table`, :data:`COLUMNS`), as JSON
(:func:`write_json`) and as a plot of the displacement norms (:func:`plot`).

The measurement itself is :mod:`targetprop.diagnose`'s; a run's ``diagnostics.csv`` is
:mod:`targetprop.training.diagnostics`'.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .. import markdown
from ..diagnose import THROUGH_TIME
from ..training.files import atomic_write

#: the table's columns and what each one says
COLUMNS = {
    "rule": "the rule diagnosed (RULE-through-time: the authors' variant; bp: the gradient itself)",
    "parameter": "one parameter of the TP layer",
    "cosine with BP": "cosine of the rule's direction for the parameter with BP's gradient (1: same direction)",
    "norm ratio": "the direction's norm over s x the gradient's, s = the target step for the rules that scale "
                  "by it (1 for bp): 1 means eq. 3 takes BP's step size",
    "horizon 1e-6": "steps back until the displacement of the state falls below 1e-6 of the last one's "
                    "(how far back the targets reach)",
    "horizon zero": "steps back until it is exactly 0 (none: never)",
    "last step": "share of the W_hh direction that comes from the last step's displacement alone",
    "last 10": "the same for the last 10 steps",
}


def legend() -> str:
    """One line per column: ``- NAME: what it says``."""
    return "\n".join(f"- {name}: {text}" for name, text in COLUMNS.items())


def table(result: dict) -> str:
    """The Markdown table: per rule and parameter, the cosine and norm ratio; per rule (on its
    first line), the horizons and the shares of the last step(s)."""
    rows = []
    for name, cosines in result["cosine_with_bp"].items():
        h = result["horizon"][name]
        per_rule = [_k(h["1e-6"]), _k(h["zero"]), f"{result['last_step_share'][name]:.3f}",
                    f"{result['last10_share'][name]:.3f}"]
        for i, (param, c) in enumerate(cosines.items()):
            rows.append([name if i == 0 else "", param, f"{c:.4f}", f"{result['norm_ratio'][name][param]:.4g}",
                         *(per_rule if i == 0 else [""] * len(per_rule))])
    return markdown.table(list(COLUMNS), rows)


def _k(k) -> str:
    return "none" if k is None else str(k)


def write_json(result: dict, path: str | Path) -> None:
    """``result`` as JSON (NaN written as null), atomically."""
    def clean(v):  # NaN is not JSON
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(w) for k, w in v.items()}
        if isinstance(v, list):
            return [clean(w) for w in v]
        return v

    atomic_write(path, json.dumps(clean(result), indent=1) + "\n")


def plot(result: dict, path: str | Path, title: str = "") -> Path:
    """Log-scale displacement norms against steps back, one line per rule, BP's adjoint beside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, norms in result["displacement_norm"].items():
        if name != "bp":
            ax.plot(range(len(norms)), [d if d > 0 else float("nan") for d in norms], label=f"{name}: ‖λ_(T−k)‖",
                    linestyle=":" if name.endswith(THROUGH_TIME) else "-")
    bp = result["bp_adjoint_norm"]
    ax.plot(range(len(bp)), [d if d > 0 else float("nan") for d in bp], "k--", label="bp: adjoint norm")
    ax.set_yscale("log")
    ax.set_xlabel("steps back k")
    ax.set_ylabel("batch mean norm")
    ax.set_title(title or "How far back the targets reach")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return Path(path)
