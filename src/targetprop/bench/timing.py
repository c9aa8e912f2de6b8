"""Timing methods side by side: every method at a shape, interleaved, medians reported."""
from __future__ import annotations

import dataclasses
import statistics

import torch

from .. import kernels
from .cases import METHODS, BenchSettingError, Shape, cell_of, iteration, run_shape, runs_at, runs_with

GRIDS = {
    # (T, B, p, d[, layers, bidirectional])
    "tiny": [(12, 4, 8, 1), (20, 3, 16, 2)],
    "targets": [(784, 16, 100, 1), (60, 20, 100, 6), (120, 20, 100, 6)],
    "length": [(T, 16, 100, 1) for T in (60, 120, 784, 3072)],
    "width": [(784, 16, p, 1) for p in (32, 100, 256, 512)],
    "batch": [(784, B, 100, 1) for B in (16, 20, 512)],
    # per-step work B·p² around the command line's one-thread bound (2^19), for --threads 1 2
    "threads": [(200, B, p, 1) for B, p in ((20, 100), (64, 100), (512, 100), (16, 256), (128, 256))],
    # compiled loops against one BLAS product per step (with --loops), T = 200 to keep it short
    "loops": [(200, B, p, 1) for p in (32, 100, 256, 512) for B in (16, 64, 512)],
    # stacks: two layers, bidirectional, both, at the sequential-MNIST shape
    "stacked": [(784, 16, 100, 1, 2, False), (784, 16, 100, 1, 1, True), (784, 16, 100, 1, 2, True)],
    "tiny-stacked": [(12, 4, 8, 1, 2, True)],
    # the GPU check (scripts/gpu-check.sh): small and large batch, a short sequence, a 2-layer bidirectional stack
    "gpu": [(784, 16, 100, 1), (784, 512, 100, 1), (60, 20, 100, 6), (784, 16, 100, 1, 2, True)],
    # the LSTM's targets: the sequential-MNIST shape, a short sequence, a large batch
    "lstm": [(784, 16, 100, 1), (60, 16, 100, 1), (784, 512, 100, 1)],
}


@dataclasses.dataclass
class Result:
    T: int
    B: int
    p: int
    d: int
    threads: int
    device: str
    regime: str
    method: str
    median_ms: float
    forward_ms: float
    backward_ms: float
    memory_mb: float
    repeats: int
    stack: str = "1"  # layers, and "bi" when bidirectional (:attr:`Shape.stack`)


#: how a TP layer's loops run: ``auto`` (the layer's default), ``torch`` (one BLAS product per
#: step), ``cpp:ISA`` (the compiled loops built for that instruction set), ``triton`` (the Triton
#: recursions, CUDA)
LOOPS = ("auto", "torch", "cpp:base", "cpp:avx2", "cpp:avx512", "triton")


def measure(shape, methods, threads: int, device="cpu", repeats: int = 30, warmup: int = 3,
            regime: str = "orthogonal", loops=("auto",)) -> list[Result]:
    """Time ``methods`` at one shape and weight regime, interleaved; medians of ``repeats`` after
    ``warmup``. For a ``run:PATH`` regime, p and d are the run's (and only its cell's methods run).
    With several ``loops``, each TP method is timed once per variant (named ``method [variant]``),
    all interleaved. Methods that cannot run at the shape (the naive yardstick on a stack) or with a
    variant (the LSTM with Triton loops) are left out."""
    shape = Shape.of(shape)
    if regime.startswith("run:"):
        p, d, cell = run_shape(regime)
        shape = dataclasses.replace(shape, p=p, d=d)
        methods = [m for m in methods if cell_of(m) == cell]
    methods = [m for m in methods if runs_at(m, shape)]
    timed = [(m, v) for m in methods for v in (loops if isinstance(METHODS[m], dict) else ("auto",))
             if runs_with(m, v)]
    module = kernels.load() if any(v.startswith("cpp:") for _, v in timed) else None
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = {(m, v): iteration(m, shape, device, regime=regime, backend=v.split(":")[0]) for m, v in timed}
        times = {key: [] for key in timed}
        for rep in range(warmup + repeats):
            for m, v in timed:
                if module is not None:
                    module.set_isa(v[4:] if v.startswith("cpp:") else module.widest_isa())
                t = runs[m, v]()
                if rep >= warmup:
                    times[m, v].append(t)
        out = []
        for m, v in timed:
            f, b, tot = zip(*times[m, v])
            name = f"{m} [{v}]" if len(loops) > 1 and isinstance(METHODS[m], dict) else m
            out.append(Result(shape.T, shape.B, shape.p, shape.d, threads, str(device), regime, name,
                              1e3 * statistics.median(tot), 1e3 * statistics.median(f), 1e3 * statistics.median(b),
                              runs[m, v].memory(), repeats, shape.stack))
        return out
    finally:
        torch.set_num_threads(old)
        if module is not None:
            module.set_isa(module.widest_isa())


def check_loops(text: str) -> str:
    if text not in LOOPS:
        raise BenchSettingError(f"loops must be one of {list(LOOPS)}, got {text!r}")
    if not text.startswith("cpp:"):
        return text
    module = kernels.load(required=True)
    if LOOPS.index(text) > LOOPS.index("cpp:" + module.widest_isa()):
        raise BenchSettingError(f"this CPU cannot run {text} (widest: cpp:{module.widest_isa()})")
    return text
