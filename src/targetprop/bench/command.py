"""The benchmark's command line (``targetprop bench``, ``python -m targetprop.bench``)."""
from __future__ import annotations

import argparse
import sys

import torch

from .cases import DEFAULT_METHODS, METHODS, REGIMES, check_regime
from .report import machine, plot, table
from .timing import GRIDS, check_loops, measure

DESCRIPTION = ("Cost benchmark: one training iteration (forward + backward + optimizer step) of every rule "
               "against native BPTT, methods interleaved, medians reported.")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="targetprop bench", description=DESCRIPTION)
    p.add_argument("--grid", nargs="+", default=["targets"], choices=sorted(GRIDS), help="shape grids to run")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                   help="methods to time (naive-tp: a straightforward per-step TP, as a yardstick; "
                        "gru-*, lstm-*: the GRU and LSTM cells against torch.nn.GRU and torch.nn.LSTM, not in "
                        "the default)")
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

