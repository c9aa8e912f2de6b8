"""The benchmark's outputs: a Markdown table with ratios to native BPTT, the machine line, a plot."""
from __future__ import annotations

import os
import platform

import torch

from .. import kernels, markdown
from ..training import environment
from .cases import LAYERS, cell_of
from .timing import Result


def table(results: list[Result]) -> str:
    """Markdown table; the ratios are the method's median over native BPTT's and over the
    engine's BP at the same shape, for the same cell (``gru-*`` against ``gru-native-bptt``,
    ``lstm-*`` against ``lstm-native-bptt``)."""
    def key(r):
        return r.T, r.B, r.p, r.d, r.stack, r.threads, r.device, r.regime

    def medians(name):
        return {key(r): r.median_ms for r in results if r.method == name}

    prefixes = {cell: "" if cell == "rnn" else f"{cell}-" for cell in LAYERS}
    cells = {cell: (medians(f"{pre}native-bptt"), medians(f"{pre}engine-bp")) for cell, pre in prefixes.items()}
    header = ["T", "B", "p", "d", "layers", "threads", "regime", "method", "iteration ms", "fwd ms", "bwd ms",
              "÷ native", "÷ engine-bp", "saved/peak MB"]
    rows = []
    for r in results:
        native, bp = cells[cell_of(r.method)]
        rn = f"{r.median_ms / native[key(r)]:.2f}" if key(r) in native else "–"
        rb = f"{r.median_ms / bp[key(r)]:.2f}" if key(r) in bp else "–"
        rows.append([r.T, r.B, r.p, r.d, r.stack, r.threads, r.regime, r.method, f"{r.median_ms:.2f}",
                     f"{r.forward_ms:.2f}", f"{r.backward_ms:.2f}", rn, rb, f"{r.memory_mb:.2f}"])
    return markdown.table(header, rows)


def machine() -> str:
    """The CPU model, its vector extensions, the compiled loops' instruction set, the GPU (if any),
    Triton's version (if installed) and the versions."""
    module = kernels.load()
    loops = f"compiled loops: {module.isa()}" if module is not None else "compiled loops unavailable"
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    try:
        import triton

        gpu += f", Triton {triton.__version__}"
    except ImportError:
        pass
    return (f"{environment.cpu_model()} ({' '.join(environment.cpu_flags()) or 'vector extensions unknown'}), "
            f"{os.cpu_count()} logical CPUs, {loops}{gpu}, torch {torch.__version__}, Python {platform.python_version()}")


def plot(results: list[Result], path: str) -> None:
    """Time per iteration against T and against p (one line per method, the first regime), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (var, fixed) in zip(axes, (("T", "p"), ("p", "T"))):
        for m in dict.fromkeys(r.method for r in results):
            rs = [r for r in results if r.method == m and r.threads == 1 and r.regime == results[0].regime
                  and r.stack == "1"]
            groups = {}
            for r in rs:
                groups.setdefault((getattr(r, fixed), r.B), []).append(r)
            for (fv, B), grp in groups.items():
                if len(grp) < 2:
                    continue
                grp.sort(key=lambda r: getattr(r, var))
                ax.plot([getattr(r, var) for r in grp], [r.median_ms for r in grp], marker="o",
                        label=f"{m} ({fixed}={fv}, B={B})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(var)
        ax.set_ylabel("ms per iteration (1 thread)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle("Training iteration time, TP rules vs BPTT")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
