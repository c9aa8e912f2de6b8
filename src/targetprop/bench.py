"""Cost benchmark: one training iteration (forward + backward + optimizer step) of every rule
against native BPTT (``torch.nn.RNN`` autograd), at the paper's shapes (Section 3's claim that
TP costs about what BP costs when T ≥ p); the ``gru-*`` methods do the same for the GRU cell
against ``torch.nn.GRU``.

Methods are timed *interleaved* in one process (one iteration of each in turn, repeated), and
the median is reported, so that machine noise hits every method alike. Each shape is timed in
several weight *regimes* (:data:`REGIMES`), since what a step costs depends on the weights: TP's
displacements shrink at a rate set by ``W_hh`` and may pass through the subnormal range. Memory is reported as
the bytes autograd saves for the backward pass (CPU), or the peak allocated memory (CUDA).

Run: ``python -m targetprop.bench --grid targets`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from .training import checkpoint, environment

from . import kernels
from .init import orthogonal_init_
from .rnn import TPGRU, TPRNN

#: name -> TP layer keyword arguments (``cell="gru"``: a TPGRU), ``"native"`` / ``"native-gru"``
#: for torch.nn.RNN / torch.nn.GRU autograd, ``"naive"`` for the per-step baseline
METHODS: dict[str, dict | str] = {
    "native-bptt": "native",
    "naive-tp": "naive",
    "engine-bp": {"rule": "bp"},
    "tp-linearized": {"rule": "linearized"},
    "tp-difference": {"rule": "difference"},
    "tp-direct": {"rule": "direct"},
    "tp-through-time": {"rule": "linearized", "through_time": True},
    "gru-native-bptt": "native-gru",
    "gru-engine-bp": {"cell": "gru", "rule": "bp"},
    "gru-tp-linearized": {"cell": "gru", "rule": "linearized"},
    "gru-tp-through-time": {"cell": "gru", "rule": "linearized", "through_time": True},
}
#: the methods run when none are named (the GRU ones are asked for by name)
DEFAULT_METHODS = [m for m in METHODS if m != "naive-tp" and not m.startswith("gru-")]


#: weight regimes: the paper's orthogonal init; torch.nn's default init; a contractive
#: recurrence (orthogonal W_hh × 0.5); ``run:PATH``, the weights of a run's last checkpoint
REGIMES = ("orthogonal", "default", "contractive")


def _is_gru(method: str) -> bool:
    return method.startswith("gru-")


def _layer(method: str, d: int, p: int, backend: str = "auto") -> torch.nn.Module:
    spec = METHODS[method]
    if spec == "naive":
        return _NaiveModule(d, p, batch_first=True)
    if spec == "native":
        return torch.nn.RNN(d, p, batch_first=True)
    if spec == "native-gru":
        return torch.nn.GRU(d, p, batch_first=True)
    kwargs = dict(spec)
    cls = TPGRU if kwargs.pop("cell", "rnn") == "gru" else TPRNN
    return cls(d, p, batch_first=True, reg=1.0, backend=backend, **kwargs)


class BenchSettingError(argparse.ArgumentTypeError, ValueError):
    """A bad ``--regime`` or ``--loops`` value (argparse prints the message as it is)."""


def check_regime(regime: str) -> str:
    """``regime`` if known (a ``run:PATH`` whose folder has a checkpoint), else a ValueError."""
    if regime.startswith("run:"):
        if not checkpoint.listed(checkpoint.checkpoint_dir(regime[4:])):
            raise BenchSettingError(f"regime {regime!r}: no checkpoint in {checkpoint.checkpoint_dir(regime[4:])}")
    elif regime not in REGIMES:
        raise BenchSettingError(f"regime must be one of {list(REGIMES)} or run:PATH, got {regime!r}")
    return regime


def run_weights(regime: str) -> dict[str, torch.Tensor]:
    """The recurrent layer's weights (``weight_ih_l0``, ...) from the last checkpoint of a run."""
    found = checkpoint.latest(checkpoint.checkpoint_dir(regime[4:]))
    if found.payload is None:
        raise ValueError(f"regime {regime!r}: no usable checkpoint ({'; '.join(found.problems)})")
    prefix = "rnn."
    return {k[len(prefix):]: v for k, v in found.payload["model"].items() if k.startswith(prefix)}


def run_shape(regime: str) -> tuple[int, int, bool]:
    """(p, d, is_gru) of a run's recurrent layer."""
    weights = run_weights(regime)
    w_ih, p = weights["weight_ih_l0"], weights["weight_hh_l0"].shape[1]
    return p, w_ih.shape[1], w_ih.shape[0] == 3 * p


@torch.no_grad()
def set_regime_(layer: torch.nn.Module, regime: str, gen: torch.Generator) -> torch.nn.Module:
    """Weights of ``layer`` for ``regime`` (the ``default`` regime keeps torch's own init)."""
    if regime.startswith("run:"):
        layer.load_state_dict(run_weights(regime))
    elif regime != "default":
        orthogonal_init_(layer, gen)
        if regime == "contractive":
            layer.weight_hh_l0.mul_(0.5)
    return layer

GRIDS = {
    # (T, B, p, d)
    "tiny": [(12, 4, 8, 1), (20, 3, 16, 2)],
    "targets": [(784, 16, 100, 1), (60, 20, 100, 6), (120, 20, 100, 6)],
    "length": [(T, 16, 100, 1) for T in (60, 120, 784, 3072)],
    "width": [(784, 16, p, 1) for p in (32, 100, 256, 512)],
    "batch": [(784, B, 100, 1) for B in (16, 20, 512)],
    # per-step work B·p² around the command line's one-thread bound (2^19), for --threads 1 2
    "threads": [(200, B, p, 1) for B, p in ((20, 100), (64, 100), (512, 100), (16, 256), (128, 256))],
    # compiled loops against one BLAS product per step (with --loops), T = 200 to keep it short
    "loops": [(200, B, p, 1) for p in (32, 100, 256, 512) for B in (16, 64, 512)],
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


class _NaiveTP(torch.autograd.Function):
    """Linearized TP written the straightforward way, as a yardstick: a per-step Python forward,
    a per-step backward that allocates every temporary and accumulates each parameter
    direction step by step, and ``M`` from an explicit inverse. Not used by the library."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        hs = [x.new_zeros(x.shape[1], w_hh.shape[0])]
        for t in range(x.shape[0]):
            hs.append(torch.tanh(x[t] @ w_ih.T + b_ih + hs[-1] @ w_hh.T + b_hh))
        ctx.save_for_backward(x, w_ih, w_hh, *hs)
        return hs[-1]

    @staticmethod
    def backward(ctx, g):
        x, w_ih, w_hh, *hs = ctx.saved_tensors
        m = torch.linalg.inv(w_hh.T @ w_hh + torch.eye(w_hh.shape[0], dtype=w_hh.dtype)) @ w_hh.T
        grads = [torch.zeros_like(w) for w in (w_ih, w_hh)] + [torch.zeros_like(w_hh[0])]
        lam = -1e-2 * g
        for t in range(x.shape[0], 0, -1):
            deriv = 1 - hs[t] ** 2
            delta = -deriv * lam
            grads[0] += delta.T @ x[t - 1]
            grads[1] += delta.T @ hs[t - 1]
            grads[2] += delta.sum(0)
            lam = (lam / (1 - hs[t].clamp(-0.999, 0.999) ** 2)) @ m.T
        return None, grads[0], grads[1], grads[2], grads[2].clone()


class _NaiveModule(torch.nn.RNN):
    def forward(self, x):
        h = _NaiveTP.apply(x.transpose(0, 1), self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        return None, h.unsqueeze(0)


def _iteration(method: str, T: int, B: int, p: int, d: int, device, seed: int = 0, regime: str = "orthogonal",
               backend: str = "auto") -> Callable[[], tuple]:
    """A closure running one training iteration; returns (forward s, backward s, total s)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # torch.nn's default init draws from the global generator
    rnn = set_regime_(_layer(method, d, p, backend), regime, gen)
    head = torch.nn.Linear(p, 10)
    rnn.to(device)
    head.to(device)
    x = torch.randn(B, T, d, generator=gen).to(device)
    y = torch.randint(0, 10, (B,), generator=gen).to(device)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=1e-4)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def run():
        opt.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(rnn(x)[1][0]), y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t0

    def memory():
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            run()
            return torch.cuda.max_memory_allocated() / 2**20
        saved = {}

        def pack(t):
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(head(rnn(x)[1][0]), y)
        del loss
        return sum(saved.values()) / 2**20

    run.memory = memory
    return run


#: how a TP layer's loops run: ``auto`` (the layer's default), ``torch`` (one BLAS product per
#: step), ``cpp:ISA`` (the compiled loops built for that instruction set)
LOOPS = ("auto", "torch", "cpp:base", "cpp:avx2", "cpp:avx512")


def measure(shape, methods, threads: int, device="cpu", repeats: int = 30, warmup: int = 3,
            regime: str = "orthogonal", loops=("auto",)) -> list[Result]:
    """Time ``methods`` at one shape and weight regime, interleaved; medians of ``repeats`` after
    ``warmup``. For a ``run:PATH`` regime, p and d are the run's. With several ``loops``, each TP
    method is timed once per variant (named ``method [variant]``), all interleaved."""
    T, B, p, d = shape
    if regime.startswith("run:"):
        p, d, gru = run_shape(regime)
        methods = [m for m in methods if _is_gru(m) == gru]
    timed = [(m, v) for m in methods for v in (loops if isinstance(METHODS[m], dict) else ("auto",))]
    module = kernels.load() if any(v.startswith("cpp:") for _, v in timed) else None
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = {(m, v): _iteration(m, T, B, p, d, device, regime=regime, backend=v.split(":")[0]) for m, v in timed}
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
            out.append(Result(T, B, p, d, threads, str(device), regime, name, 1e3 * statistics.median(tot),
                              1e3 * statistics.median(f), 1e3 * statistics.median(b), runs[m, v].memory(), repeats))
        return out
    finally:
        torch.set_num_threads(old)
        if module is not None:
            module.set_isa(module.widest_isa())


def check_loops(text: str) -> str:
    if text not in LOOPS:
        raise BenchSettingError(f"loops must be one of {list(LOOPS)}, got {text!r}")
    module = kernels.load(required=text.startswith("cpp:"))
    if text.startswith("cpp:") and LOOPS.index(text) > LOOPS.index("cpp:" + module.widest_isa()):
        raise BenchSettingError(f"this CPU cannot run {text} (widest: cpp:{module.widest_isa()})")
    return text


def table(results: list[Result]) -> str:
    """Markdown table; the ratios are the method's median over native BPTT's and over the
    engine's BP at the same shape, for the same cell (``gru-*`` against ``gru-native-bptt``)."""
    def key(r):
        return r.T, r.B, r.p, r.d, r.threads, r.device, r.regime

    def medians(name):
        return {key(r): r.median_ms for r in results if r.method == name}

    cells = {"": (medians("native-bptt"), medians("engine-bp")),
             "gru-": (medians("gru-native-bptt"), medians("gru-engine-bp"))}
    lines = ["| T | B | p | d | threads | regime | method | iteration ms | fwd ms | bwd ms | ÷ native | ÷ engine-bp "
             "| saved/peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        native, bp = cells["gru-" if _is_gru(r.method) else ""]
        rn = f"{r.median_ms / native[key(r)]:.2f}" if key(r) in native else "–"
        rb = f"{r.median_ms / bp[key(r)]:.2f}" if key(r) in bp else "–"
        lines.append(f"| {r.T} | {r.B} | {r.p} | {r.d} | {r.threads} | {r.regime} | {r.method} | {r.median_ms:.2f} | "
                     f"{r.forward_ms:.2f} | {r.backward_ms:.2f} | {rn} | {rb} | {r.memory_mb:.2f} |")
    return "\n".join(lines)


def machine() -> str:
    """The CPU model, its vector extensions, the compiled loops' instruction set and the versions."""
    module = kernels.load()
    loops = f"compiled loops: {module.isa()}" if module is not None else "compiled loops unavailable"
    return (f"{environment.cpu_model()} ({' '.join(environment.cpu_flags()) or 'vector extensions unknown'}), "
            f"{os.cpu_count()} logical CPUs, {loops}, torch {torch.__version__}, Python {platform.python_version()}")


def plot(results: list[Result], path: str) -> None:
    """Time per iteration against T and against p (one line per method, the first regime), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (var, fixed) in zip(axes, (("T", "p"), ("p", "T"))):
        for m in dict.fromkeys(r.method for r in results):
            rs = [r for r in results if r.method == m and r.threads == 1 and r.regime == results[0].regime]
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


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="targetprop bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", nargs="+", default=["targets"], choices=sorted(GRIDS), help="shape grids to run")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                   help="methods to time (naive-tp: a straightforward per-step TP, as a yardstick; "
                        "gru-*: the GRU cell against torch.nn.GRU, not in the default)")
    p.add_argument("--threads", dest="thread_counts", nargs="+", type=int, default=[1, torch.get_num_threads()],
                   help="intra-op thread counts to time (default: 1 and all)")
    p.add_argument("--repeats", type=int, default=30, help="timed iterations per method (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--regime", dest="regimes", nargs="+", default=list(REGIMES), type=check_regime,
                   metavar="REGIME", help="weight regimes: orthogonal (the paper's init), default (torch.nn's), "
                   "contractive (orthogonal W_hh x 0.5), run:PATH (a run's last checkpoint; its p and d); "
                   "default: the first three")
    p.add_argument("--loops", nargs="+", default=["auto"], type=check_loops, metavar="LOOPS",
                   help="how TP methods run, each timed interleaved: auto (the layer's choice), torch (one BLAS "
                   "product per step), cpp:base|cpp:avx2|cpp:avx512 (the compiled loops of that instruction "
                   "set); default: auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", help="write the table (markdown) to this file")
    p.add_argument("--plot", help="write a PNG of time against T and p")
    return p


def _command(argv, from_cli: bool) -> str:
    if argv is not None:
        return "targetprop bench " + " ".join(argv)
    if from_cli:  # the targetprop command line
        return "targetprop " + " ".join(sys.argv[1:])
    return "python -m targetprop.bench " + " ".join(sys.argv[1:])


def main(argv=None, args=None) -> int:
    from_cli = args is not None
    args = args or build_parser().parse_args(argv)
    shapes = list(dict.fromkeys(s for g in args.grid for s in GRIDS[g]))
    results = []
    for threads in dict.fromkeys(args.thread_counts):
        for shape in shapes:
            for regime in args.regimes:
                new = measure(shape, args.methods, threads, args.device, args.repeats, args.warmup, regime, args.loops)
                results += new
                print(table(new).split("\n", 2)[-1], flush=True)
    text = f"Machine: {machine()}\n\nCommand: `{_command(argv, from_cli)}`\n\n" + table(results) + "\n"
    print("\n" + text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
