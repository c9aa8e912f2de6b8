"""Training curves of finished (or running) runs, as one PNG.

This module owns drawing runs (read through :mod:`targetprop.training.rundir`): loss on the fixed
training sample (log scale) and test accuracy, against iterations and against training time (seconds spent
in training steps, evaluations excluded), one line per run, labelled by the run's settings.
It draws on a ``matplotlib.figure.Figure`` with the Agg canvas, so it needs no display and
leaves pyplot's global state alone.
"""
from __future__ import annotations

from pathlib import Path

from ..training import diagnostics, rundir
from ..training.config import TrainConfig
from ..training.rundir import find_runs, read_metrics

PANELS = (("iteration", "train_loss"), ("iteration", "test_accuracy"),
          ("time", "train_loss"), ("time", "test_accuracy"))
AXIS_LABELS = {"iteration": "iteration", "time": "training time (s)",
               "train_loss": "loss (fixed training sample)", "test_accuracy": "test accuracy"}


def run_label(run: Path) -> str:
    """``NAME: METHOD`` for the legend: the run's label (else its directory's name) and its
    method from its saved settings (the name alone if they are unreadable)."""
    try:
        config = TrainConfig.from_dict(rundir.read_config(run))
    except ValueError:
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
    plot_diagnostics(runs, output.with_name(output.stem + "-diagnostics" + output.suffix), title=title)
    return output


def plot_diagnostics(runs, output: Path, *, title: str | None = None) -> Path | None:
    """For the runs with a ``diagnostics.csv`` (``train --diagnose-every``): the W_hh direction's
    cosine with BP's gradient and the horizon (steps back to 10⁻⁶) against iterations, one line per
    run and rule, into ``output``; None when no run has diagnostics."""
    found = {run: diagnostics.read(rundir.diagnostics_path(run)) for run in runs}
    found = {run: rows for run, rows in found.items() if rows}
    if not found:
        return None
    fig = _figure((11, 5))
    cos_ax, horizon_ax = fig.subplots(1, 2)
    for run, rows in found.items():
        for rule in dict.fromkeys(r["rule"] for r in rows):
            mine = [r for r in rows if r["rule"] == rule]
            its = [int(r["iteration"]) for r in mine]
            label = f"{run_label(run)} [{rule}]"
            cos_ax.plot(its, [float(r["cosine_whh"] or "nan") for r in mine], label=label, linewidth=1.2)
            horizon_ax.plot(its, [float(r["horizon_1e-6"] or "nan") for r in mine], label=label, linewidth=1.2)
    cos_ax.set(xlabel="iteration", ylabel="cosine of the W_hh direction with BP's gradient", ylim=(-1.02, 1.02))
    horizon_ax.set(xlabel="iteration", ylabel="steps back until the displacement < 1e-6 of the last")
    for ax in (cos_ax, horizon_ax):
        ax.grid(alpha=0.3)
    fig.legend(*cos_ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, output)


# ---------------------------------------------------------------------------- the paper's figures


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, output) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


def plot_panel(paths, output: str | Path, *, title: str | None = None) -> Path:
    """A Fig. 3/4 panel: training loss (log scale) and test accuracy against iterations, one line
    per run (the runs under ``paths``, see :func:`find_runs`); return the PNG's path."""
    fig = _figure((11, 4.2))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for run in find_runs(paths):
        metrics, label = read_metrics(run), run_label(run)
        loss_ax.plot(metrics["iteration"], metrics["train_loss"], label=label, linewidth=1.2)
        acc_ax.plot(metrics["iteration"], metrics["test_accuracy"], label=label, linewidth=1.2)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel(AXIS_LABELS["train_loss"])
    acc_ax.set_ylabel(AXIS_LABELS["test_accuracy"])
    acc_ax.set_ylim(-0.02, 1.02)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, output)


def plot_heatmaps(matrices: dict, xs, ys, output: str | Path, *, xlabel: str, ylabel: str,
                  title: str | None = None, metric: str = "auc") -> Path:
    """One heat map per entry of ``matrices`` (rows over ``ys``, columns over ``xs``; NaN cells,
    the diverged ones, are left blank), side by side; areas on a log colour scale, accuracies
    on [0, 1]. Each cell is annotated with its value. Returns the PNG's path."""
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    fig = _figure((max(8.0, 4.8 * len(matrices) + 0.6), 4.4))
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    for ax, (name, matrix) in zip(axes, matrices.items()):
        data = np.ma.masked_invalid(np.asarray(matrix, dtype=float))
        norm = _norm(data, metric, LogNorm, Normalize)
        image = ax.imshow(data, origin="lower", cmap="viridis", norm=norm, aspect="auto")
        for (i, j), value in np.ndenumerate(np.asarray(matrix, dtype=float)):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.0%}" if metric == "accuracy" else f"{value:.3g}",
                        ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs], rotation=45)
        ax.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, float) else str(y) for y in ys])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        fig.colorbar(image, ax=ax, label="area under the training loss" if metric == "auc" else "test accuracy")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, output)


def _norm(data, metric: str, log_norm, linear_norm):
    if metric == "accuracy":
        return linear_norm(0.0, 1.0)
    if data.count() == 0:
        return linear_norm(0.0, 1.0)
    lo, hi = float(data.min()), float(data.max())
    return log_norm(lo, hi if hi > lo else lo * 10) if lo > 0 else linear_norm(lo, hi)
