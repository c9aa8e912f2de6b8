"""Training curves of finished (or running) runs, as one PNG.

This module owns reading run directories for plotting and drawing them: loss on the fixed
training sample (log scale) and test accuracy, against iterations and against training time (seconds spent
in training steps, evaluations excluded), one line per run, labelled by the run's settings.
It draws on a ``matplotlib.figure.Figure`` with the Agg canvas, so it needs no display and
leaves pyplot's global state alone.
"""
from __future__ import annotations

import json
from pathlib import Path

from .trainer import TrainConfig, read_metrics

PANELS = (("iteration", "train_loss"), ("iteration", "test_accuracy"),
          ("time", "train_loss"), ("time", "test_accuracy"))
AXIS_LABELS = {"iteration": "iteration", "time": "training time (s)",
               "train_loss": "loss (fixed training sample)", "test_accuracy": "test accuracy"}


def find_runs(paths) -> list[Path]:
    """Run directories (holding ``metrics.csv``) among ``paths``; a directory of runs (e.g. the
    output of ``targetprop compare``) stands for its runs. ValueError names a path holding none."""
    runs = []
    for path in map(Path, paths):
        if (path / "metrics.csv").is_file():
            runs.append(path)
            continue
        inner = sorted(p.parent for p in path.glob("*/metrics.csv")) if path.is_dir() else []
        if not inner:
            raise ValueError(f"{path} is not a run directory (no metrics.csv in it or in its subdirectories)")
        runs.extend(inner)
    return runs


def run_label(run: Path) -> str:
    """``NAME: METHOD`` for the legend: the run's label (else its directory's name) and its
    method from ``config.json`` (the name alone if that is unreadable)."""
    try:
        saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(saved["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return run.name
    return f"{config.label or run.name}: {config.method()}"


def plot_runs(paths, output: str | Path, *, title: str | None = None) -> Path:
    """Draw the runs under ``paths`` (see :func:`find_runs`) into the PNG ``output``; return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = find_runs(paths)
    output = Path(output)
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for run in runs:
        metrics, label = read_metrics(run), run_label(run)
        for ax, (x, y) in zip(axes.T.flat, PANELS):
            ax.plot(metrics[x], metrics[y], label=label, linewidth=1.2)
    for ax, (x, y) in zip(axes.T.flat, PANELS):
        ax.set_xlabel(AXIS_LABELS[x])
        ax.set_ylabel(AXIS_LABELS[y])
        ax.grid(alpha=0.3)
        if y == "test_accuracy":
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.set_yscale("log")  # losses span decades near convergence
    axes[1, 0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output
