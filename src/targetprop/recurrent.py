"""The base of the TP layers: ``torch.nn``'s parameters, validation and forward, for any cell.

The parameters are made per layer and direction with ``torch.nn``'s names and shapes
(``weight_ih_l{k}``, ``…_reverse``), listed in ``_all_weights`` as ``torch.nn`` does; every
hyper-parameter is validated whenever it is set (:data:`SETTERS`, bounds from
:mod:`targetprop.hyperparams`); the forward checks its input (:mod:`targetprop.inputs`) and runs
the one autograd Function (:mod:`targetprop.function`) for every shape.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _validation as check
from . import hyperparams as hp
from . import rules
from .activations import get_activation
from .cells import PARAMETERS
from .engine import Settings, Workspace
from .function import RecurrentFunction, Shape
from .inputs import check_input
from .kernels import BACKENDS

NO_TORCH_FUNC = ("TP layers do not support torch.func transforms (grad, vjp, vmap, jacrev, …): their backward "
                 "is the TP direction, not a derivative of the forward. Use loss.backward() or "
                 "torch.autograd.grad, or torch.nn's layer for torch.func.")


class TPRecurrent(nn.Module):
    """Parameters, validation and forward shared by the TP layers; subclasses name the cell
    (``cell_module``, a module of :mod:`targetprop.cells`)."""

    cell_module = None
    proj_size = 0  # as torch.nn.RNN / torch.nn.GRU, which have no projections

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                 device, dtype, *, rule, reg, target_step, tol, through_time, check_finite, backend,
                 signal_below) -> None:
        super().__init__()
        #: the backward's scratch buffers, per thread (not saved, not copied; ``.clear()`` frees them)
        self.workspace = Workspace()
        self.input_size = check.size_arg("input_size", input_size)
        self.hidden_size = check.size_arg("hidden_size", hidden_size)
        self.num_layers = check.size_arg("num_layers", num_layers)
        self.bias = check.bool_arg("bias", bias)
        self.batch_first = batch_first
        self.bidirectional = check.bool_arg("bidirectional", bidirectional)
        self.dropout = dropout
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout applies between stacked layers, so with num_layers=1 dropout={dropout} "
                          "has no effect (as in torch.nn)", stacklevel=3)
        kw = {"device": device, "dtype": dtype}
        rows = self.cell_module.GATES * hidden_size
        self._all_weights = []
        for layer in range(num_layers):
            features = input_size if layer == 0 else hidden_size * self.directions
            for suffix in ("", "_reverse")[:self.directions]:
                names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                setattr(self, names[0], nn.Parameter(torch.empty(rows, features, **kw)))
                setattr(self, names[1], nn.Parameter(torch.empty(rows, hidden_size, **kw)))
                for b in (f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"):
                    if bias:
                        setattr(self, b, nn.Parameter(torch.empty(rows, **kw)))
                        names.append(b)
                    else:
                        self.register_parameter(b, None)
                self._all_weights.append(names)
        self.reg, self.target_step, self.tol = reg, target_step, tol
        self.through_time, self.check_finite, self.backend, self.signal_below = \
            through_time, check_finite, backend, signal_below
        self.rule = rule
        self.reset_parameters()

    @property
    def cell(self) -> str:
        return self.cell_module.NAME

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """Width of a step's state: ``p``, or ``S·p`` for a cell carrying more than ``h``."""
        return self.cell_module.STATES * self.hidden_size

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, ``[[W_ih, W_hh, b_ih, b_hh], …]`` as ``torch.nn``."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """Nothing to do: ``torch.nn`` packs its weights into one buffer for cuDNN here; these layers
        keep no packed copy."""

    def __setattr__(self, name, value):
        validate = SETTERS.get(name)
        if validate is not None:
            value = validate(self, value)
        super().__setattr__(name, value)

    def reset_parameters(self) -> None:
        """``torch.nn``'s default: uniform in ``±1/√p``. The paper's init is
        :func:`targetprop.orthogonal_init_`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}{self._repr_cell()}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout != 0:
            s += f", dropout={self.dropout:g}"
        if self.bidirectional:
            s += ", bidirectional=True"
        s += f", rule={self.rule!r}"
        if self.rule != "bp":
            s += f", reg={self.reg:g}, target_step={self.target_step:g}, tol={self.tol:g}"
            if self.through_time:
                s += ", through_time=True"
            if self.signal_below != hp.SIGNAL_BELOW:
                s += f", signal_below={self.signal_below!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _repr_cell(self) -> str:
        return ""

    def _activation(self):
        return get_activation("tanh")

    def _inverse(self):
        return None

    def _settings(self, update_inverse: bool) -> Settings:
        return Settings(rules.get_rule(self.cell, self.rule), self._activation(), self.reg, self.target_step,
                        self.tol, self.through_time, self.backend, self.check_finite, self._inverse(),
                        update_inverse, self.signal_below)

    def _weights(self) -> list:
        return [getattr(self, f"{k}_l{layer}{suffix}") for layer in range(self.num_layers)
                for suffix in ("", "_reverse")[:self.directions] for k in PARAMETERS]

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None):
        data = input.data if isinstance(input, PackedSequence) else input
        if isinstance(data, Tensor) and torch.is_autocast_enabled(data.device.type):
            # Under autocast the layer runs in its parameters' dtype (float32 for a float32 layer),
            # like the ops autocast keeps in full precision; its outputs come in that dtype.
            dtype = self.weight_hh_l0.dtype
            with torch.autocast(data.device.type, enabled=False):
                return self.forward(input.to(dtype), hx.to(dtype) if isinstance(hx, Tensor) else hx)
        x, h0, batched, packing = check_input(self, input, hx)
        T, B, _ = x.shape
        if h0 is None:
            h0 = x.new_zeros(self.num_layers * self.directions, B, self.state_size)
        weights = self._weights()
        if B == 0:  # as torch.nn: empty outputs, zero gradients
            out, h_n = _empty(x, h0, weights, self.directions * self.hidden_size)
        else:
            trained = [w for w in weights if w is not None and w.requires_grad]
            keep = torch.is_grad_enabled() and bool(x.requires_grad or h0.requires_grad or trained)
            shape = Shape(self.num_layers, self.directions, self.hidden_size, self.dropout, self.training,
                          type(self).__name__)
            settings = self._settings(update_inverse=keep and self.training and bool(trained))
            out, h_n = _run(self.cell_module, settings, shape, self.workspace, keep,
                            None if packing is None else packing.lengths, x, h0, weights)
        if packing is not None:
            return packing.pack(out), h_n
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n


def _run(*args):
    """The Function; under ``torch.compile`` run eagerly (a graph break: its loops are compiled
    code of their own). ``torch.compiler.disable`` is applied only while compiling: applying it
    imports ``torch._dynamo`` (1.6 s), which a model that is never compiled should not pay."""
    if torch.compiler.is_compiling():
        return torch.compiler.disable(_apply)(*args)
    return _apply(*args)


def _apply(cell, settings, shape, workspace, keep, lengths, x, h0, weights):
    """``RecurrentFunction.apply``; a one-line error under ``torch.func`` transforms."""
    try:
        return RecurrentFunction.apply(cell, settings, shape, workspace, keep, lengths, x, h0, *weights)
    except RuntimeError as err:
        if "functorch" in str(err) or "setup_context" in str(err):
            raise RuntimeError(NO_TORCH_FUNC) from None
        raise


def _empty(x: Tensor, h0: Tensor, weights, width: int):
    """Outputs for a batch of no sequences, connected to the inputs and weights (zero gradients)."""
    zero = sum(t.flatten()[:0].sum() for t in (x, h0, *weights) if t is not None)  # exactly 0, even beside NaN
    return x.new_zeros(x.shape[0], 0, width) + zero, h0.new_zeros(h0.shape) + zero


def _set_rule(self, v):
    v = rules.check_rule_name(self.cell, v)
    if (self.num_layers > 1 or self.bidirectional) and not rules.get_rule(self.cell, v).stackable:
        raise ValueError(f"rule={v!r} needs num_layers=1 and bidirectional=False (it defines no step down a "
                         "stack: its reverse layer is trained for one layer and one direction)")
    return v


def _set_backend(self, v):
    v = check.choice("backend", v, BACKENDS)
    supported = getattr(self.cell_module, "BACKENDS", BACKENDS)  # a cell may have no kernels of some kind
    if v not in supported:
        raise ValueError(f"{type(self).__name__} supports backend {', '.join(map(repr, supported))}, got {v!r} "
                         f"(there are no {v} kernels for the {self.cell.upper()} cell)")
    return v


def _real(name):
    return lambda self, v: hp.REALS[name].check(v)


SETTERS = {
    "dropout": lambda self, v: check.probability("dropout", v),
    "batch_first": lambda self, v: check.bool_arg("batch_first", v),
    "through_time": lambda self, v: check.bool_arg("through_time", v),
    "check_finite": lambda self, v: check.bool_arg("check_finite", v),
    "rule": _set_rule,
    "nonlinearity": lambda self, v: get_activation(v).name,
    "backend": _set_backend,
    "signal_below": lambda self, v: check.choice("signal_below", v, hp.SIGNALS_BELOW),
    **{name: _real(name) for name in hp.REALS},
}
