"""Cost benchmark: one training iteration (forward + backward + optimizer step) of every rule
against native BPTT (``torch.nn.RNN`` autograd), at the paper's shapes (Section 3's claim that
TP costs about what BP costs when T ≥ p); the ``gru-*`` and ``lstm-*`` methods do the same for
the GRU and LSTM cells against ``torch.nn.GRU`` and ``torch.nn.LSTM`` (``--grid lstm``: the
LSTM's target shapes).

Methods are timed *interleaved* in one process (one iteration of each in turn, repeated), and
the median is reported, so that machine noise hits every method alike. Each shape is timed in
several weight *regimes* (:data:`REGIMES`), since what a step costs depends on the weights: TP's
displacements shrink at a rate set by ``W_hh`` and may pass through the subnormal range. Memory is reported as
the bytes autograd saves for the backward pass (CPU), or the peak allocated memory (CUDA).

Stacked and bidirectional layers (``--grid stacked``) are timed against the same ``torch.nn``
module, the loss on the last layer's final states.

Run: ``python -m targetprop.bench --grid targets`` (see ``--help``). The package: ``cases``
(methods, regimes, shapes, one iteration), ``timing`` (interleaved medians), ``report`` (table,
machine, plot), ``command`` (the command line).
"""
from .cases import (DEFAULT_METHODS, METHODS, REGIMES, BenchSettingError, Shape, _NaiveModule, check_regime,
                    run_shape, run_weights, set_regime_)
from .command import build_parser, main
from .report import machine, plot, table
from .timing import GRIDS, LOOPS, Result, check_loops, measure

__all__ = ["DEFAULT_METHODS", "GRIDS", "LOOPS", "METHODS", "REGIMES", "BenchSettingError", "Result", "Shape",
           "_NaiveModule", "build_parser", "check_loops", "check_regime", "machine", "main", "measure", "plot",
           "run_shape", "run_weights", "set_regime_", "table"]
