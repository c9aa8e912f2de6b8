"""What the benchmark times: the methods (TP rules, native BPTT, a naive yardstick) for each cell,
the weight regimes, the shapes, and one training iteration of a method at a shape as a closure."""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

import torch

from ..init import orthogonal_init_
from ..lstm_layer import TPLSTM
from ..rnn import TPGRU, TPRNN
from ..training import checkpoint, rundir

#: name -> TP layer keyword arguments (``cell="gru"``: a TPGRU, ``cell="lstm"``: a TPLSTM),
#: ``"native"`` / ``"native-gru"`` / ``"native-lstm"`` for torch.nn.RNN / GRU / LSTM autograd,
#: ``"naive"`` for the per-step baseline; a method of a gated cell is named ``CELL-...``
METHODS: dict[str, dict | str] = {
    "native-bptt": "native",
    "naive-tp": "naive",
    "engine-bp": {"rule": "bp"},
    "tp-linearized": {"rule": "linearized", "through_time": False},
    "tp-difference": {"rule": "difference", "through_time": False},
    "tp-direct": {"rule": "direct", "through_time": False},
    "tp-through-time": {"rule": "linearized", "through_time": True},
    "gru-native-bptt": "native-gru",
    "gru-engine-bp": {"cell": "gru", "rule": "bp"},
    "gru-tp-linearized": {"cell": "gru", "rule": "linearized", "through_time": False},
    "gru-tp-through-time": {"cell": "gru", "rule": "linearized", "through_time": True},
    "lstm-native-bptt": "native-lstm",
    "lstm-engine-bp": {"cell": "lstm", "rule": "bp"},
    "lstm-tp-linearized": {"cell": "lstm", "rule": "linearized", "through_time": False},
    "lstm-tp-through-time": {"cell": "lstm", "rule": "linearized", "through_time": True},
}
#: the TP layer and the torch.nn layer of each cell
LAYERS = {"rnn": (TPRNN, torch.nn.RNN), "gru": (TPGRU, torch.nn.GRU), "lstm": (TPLSTM, torch.nn.LSTM)}


def cell_of(method: str) -> str:
    """The cell ``method`` times: ``"gru"`` / ``"lstm"`` for ``gru-*`` / ``lstm-*``, else ``"rnn"``."""
    prefix = method.split("-", 1)[0]
    return prefix if prefix in LAYERS else "rnn"


#: the methods run when none are named (the GRU and LSTM ones are asked for by name)
DEFAULT_METHODS = [m for m in METHODS if m != "naive-tp" and cell_of(m) == "rnn"]

#: weight regimes: the paper's orthogonal init; torch.nn's default init; a contractive
#: recurrence (orthogonal W_hh × 0.5); ``run:PATH``, the weights of a run's last checkpoint
REGIMES = ("orthogonal", "default", "contractive")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark shape: T steps, B sequences, p hidden units, d inputs, and the stack."""

    T: int
    B: int
    p: int
    d: int
    layers: int = 1
    bidirectional: bool = False

    @classmethod
    def of(cls, shape) -> Shape:
        """A :class:`Shape` from itself or a tuple ``(T, B, p, d[, layers[, bidirectional]])``."""
        return shape if isinstance(shape, cls) else cls(*shape)

    @property
    def stacked(self) -> bool:
        return self.layers > 1 or self.bidirectional

    @property
    def stack(self) -> str:
        """``"1"``, ``"2"``, ``"2 bi"``: layers, and "bi" when bidirectional (the table's column)."""
        return f"{self.layers}{' bi' if self.bidirectional else ''}"


def runs_at(method: str, shape: Shape) -> bool:
    """Whether ``method`` can run at ``shape`` (the naive yardstick has one layer, one direction)."""
    return not (shape.stacked and METHODS[method] == "naive")


def runs_with(method: str, loops: str) -> bool:
    """Whether ``method`` runs with ``loops`` (a cell's TP layer takes only the backends it has:
    no Triton loops for the LSTM)."""
    spec = METHODS[method]
    if not isinstance(spec, dict):
        return True
    backend = loops.split(":")[0]
    return backend in getattr(LAYERS[cell_of(method)][0].cell_module, "BACKENDS", (backend,))


def _layer(method: str, shape: Shape, backend: str = "auto") -> torch.nn.Module:
    spec, d, p = METHODS[method], shape.d, shape.p
    stack = {"num_layers": shape.layers, "bidirectional": shape.bidirectional, "batch_first": True}
    if spec == "naive":
        return _NaiveModule(d, p, batch_first=True)
    if isinstance(spec, str):  # "native", "native-gru", "native-lstm"
        return LAYERS[cell_of(method)][1](d, p, **stack)
    kwargs = dict(spec)
    return LAYERS[kwargs.pop("cell", "rnn")][0](d, p, **stack, reg=1.0, backend=backend, **kwargs)


class BenchSettingError(argparse.ArgumentTypeError, ValueError):
    """A bad ``--regime`` or ``--loops`` value (argparse prints the message as it is)."""


def check_regime(regime: str) -> str:
    """``regime`` if known (a ``run:PATH`` whose folder has a checkpoint), else a ValueError."""
    if regime.startswith("run:"):
        if not checkpoint.listed(rundir.checkpoint_dir(regime[4:])):
            raise BenchSettingError(f"regime {regime!r}: no checkpoint in {rundir.checkpoint_dir(regime[4:])}")
    elif regime not in REGIMES:
        raise BenchSettingError(f"regime must be one of {list(REGIMES)} or run:PATH, got {regime!r}")
    return regime


def run_weights(regime: str) -> dict[str, torch.Tensor]:
    """The recurrent layer's weights (``weight_ih_l0``, ...) from the last checkpoint of a run."""
    found = checkpoint.latest(rundir.checkpoint_dir(regime[4:]))
    if found.payload is None:
        raise ValueError(f"regime {regime!r}: no usable checkpoint ({'; '.join(found.problems)})")
    prefix = "rnn."
    return {k[len(prefix):]: v for k, v in found.payload["model"].items() if k.startswith(prefix)}


def run_shape(regime: str) -> tuple[int, int, str]:
    """(p, d, cell) of a run's recurrent layer (the cell from its gate rows: 1, 3 or 4 per unit)."""
    weights = run_weights(regime)
    w_ih, p = weights["weight_ih_l0"], weights["weight_hh_l0"].shape[1]
    gates = w_ih.shape[0] // p
    cell = next((c for c, (tp, _) in LAYERS.items() if tp.cell_module.GATES == gates), None)
    if cell is None:
        raise ValueError(f"regime {regime!r}: a recurrent layer with {gates} gate blocks is not one of {list(LAYERS)}")
    return p, w_ih.shape[1], cell


@torch.no_grad()
def set_regime_(layer: torch.nn.Module, regime: str, gen: torch.Generator) -> torch.nn.Module:
    """Weights of ``layer`` for ``regime`` (the ``default`` regime keeps torch's own init)."""
    if regime.startswith("run:"):
        layer.load_state_dict(run_weights(regime))
    elif regime != "default":
        orthogonal_init_(layer, gen)
        if regime == "contractive":
            for name, w in layer.named_parameters():
                if name.startswith("weight_hh"):
                    w.mul_(0.5)
    return layer


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


def iteration(method: str, shape: Shape, device, seed: int = 0, regime: str = "orthogonal",
              backend: str = "auto") -> Callable[[], tuple]:
    """A closure running one training iteration; returns (forward s, backward s, total s).

    The loss is a linear classifier on the last layer's final states (both directions' for a
    bidirectional stack, as an encoder is used)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # torch.nn's default init draws from the global generator
    rnn = set_regime_(_layer(method, shape, backend), regime, gen)
    dirs = 2 if shape.bidirectional else 1
    head = torch.nn.Linear(dirs * shape.p, 10)
    rnn.to(device)
    head.to(device)
    x = torch.randn(shape.B, shape.T, shape.d, generator=gen).to(device)
    y = torch.randint(0, 10, (shape.B,), generator=gen).to(device)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=1e-4)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def loss():
        h_n = rnn(x)[1]
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # an LSTM's (h_n, c_n)
        return torch.nn.functional.cross_entropy(head(torch.cat(list(h_n[-dirs:]), -1)), y)

    def run():
        opt.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        value = loss()
        sync()
        t1 = time.perf_counter()
        value.backward()
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
            value = loss()
        del value
        return sum(saved.values()) / 2**20

    run.memory = memory
    return run
