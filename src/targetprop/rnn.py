"""The TP layers: ``TPRNN`` and ``TPGRU`` take ``torch.nn.RNN`` / ``torch.nn.GRU``'s arguments
(same order and defaults), load their state dicts, and train by target propagation.

After ``loss.backward()`` their parameters' ``.grad`` hold the target-propagation direction of
eq. (3) (or the exact gradient with ``rule="bp"``), so any ``torch.optim`` optimizer applies
the paper's update. See ``docs/maths.md``.

Stacks (``num_layers > 1``), ``bidirectional=True``, ``dropout`` between layers and
``PackedSequence`` input run as in ``torch.nn``; their backward hands targets, not gradients, down
the stack (:mod:`targetprop.stack`, docs/maths.md "Stacks"). A one-layer, one-direction module on
a tensor runs the single-layer path (:mod:`targetprop.function`).
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _validation as check
from . import learned, rules
from .activations import get_activation
from .cells import PARAMETERS, elman, gru
from .engine import TPConfig, Workspace
from .function import TPFunction
from .init import orthogonal_
from .inputs import check_input
from .kernels import BACKENDS
from .stack import StackFunction, StackSpec

_NN_ARGS = """
        input_size: features per step ``d``.
        hidden_size: hidden units ``p``.
        num_layers: recurrent layers stacked; targets go down the stack (docs/maths.md, "Stacks").{nonlinearity}
        bias: with ``bias_ih_l{{k}}`` and ``bias_hh_l{{k}}``.
        batch_first: input ``(B, T, d)`` and output ``(B, T, p)`` if True, else ``(T, B, d)`` and
            ``(T, B, p)`` (the default, as ``torch.nn``); ``p`` doubles with ``bidirectional``.
        dropout: as ``torch.nn``, dropout on each layer's output but the last, in training mode; the
            backward uses the forward's mask. With one layer it has no effect (a warning when
            positive); a number in ``[0, 1]``.
        bidirectional: a second direction per layer, run on each sequence reversed within its length.
        device, dtype: where and in which dtype the parameters are made.

    Keyword-only (target propagation):
        rule: {rules}
        reg: ``r ≥ 0``, the ridge term of the regularized inverse (Section 2.1).
        target_step: ``γ_h > 0``, the step that makes the last target from the loss gradient (eq. 1).
        tol: ``τ ∈ (0, 0.5)``: targets are projected into the activation's range shrunk by ``τ``.
        through_time: if True, the authors' public-code variant: the same targets, but the
            parameter direction back-propagates ``Σ_t ½‖h_t − v_t‖²`` through the recurrence
            instead of holding ``h_{{t-1}}`` fixed.
        check_finite: raise on NaN/inf inputs (one reduction per forward).
        backend: ``"auto"`` (fused compiled CPU loops where they apply, built on first use, else
            pure PyTorch), ``"cpp"`` (compiled or an error) or ``"torch"`` (pure PyTorch).{extra}

    ``forward(input, hx=None) -> (output, h_n)`` with ``torch.nn``'s shapes: ``hx`` and ``h_n``
    are ``(L·D, B, p)`` in ``torch.nn``'s order (``(L·D, p)`` for unbatched ``(T, d)`` input), ``D``
    the directions; a ``PackedSequence`` input (sorted or not) gives a ``PackedSequence`` output
    with the same packing, each sequence run to its own length, ``h_n`` its last valid state in
    the caller's order. ``rule="learned"`` needs one layer, one direction and a tensor input.
    The backward cannot build a
    graph: ``create_graph=True`` through the layer (a penalty on a gradient, a Hessian-vector
    product) raises a RuntimeError instead of silently leaving out the layer's second-order terms."""

class _ArgumentTypeError(TypeError, ValueError):
    """A constructor argument of the wrong type: a TypeError, as ``torch.nn`` raises, and a
    ValueError, as this package's other argument checks raise."""


def _bool_arg(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise _ArgumentTypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def _size_arg(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ArgumentTypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return value


class _TPRecurrent(nn.Module):
    """Parameters, validation and forward shared by the TP layers; subclasses name the cell.

    The parameters are made per layer and direction with ``torch.nn``'s names and shapes
    (``weight_ih_l{k}``, ``…_reverse``), listed in ``_all_weights`` as ``torch.nn`` does."""

    cell_module = None  # elman or gru
    proj_size = 0  # as torch.nn.RNN / torch.nn.GRU, which have no projections

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                 device, dtype, rule, reg, target_step, tol, through_time, check_finite, backend) -> None:
        super().__init__()
        #: the backward's scratch buffers, kept between calls (not saved, not copied; ``.clear()`` frees them)
        self.workspace = Workspace()
        self.input_size = _size_arg("input_size", input_size)
        self.hidden_size = _size_arg("hidden_size", hidden_size)
        self.num_layers = _size_arg("num_layers", num_layers)
        self.bias = _bool_arg("bias", bias)
        self.batch_first = batch_first
        self.bidirectional = _bool_arg("bidirectional", bidirectional)
        self.dropout = dropout
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout applies between stacked layers, so with num_layers=1 dropout={dropout} "
                          "has no effect (as in torch.nn)", stacklevel=3)
        kw = {"device": device, "dtype": dtype}
        rows = self.cell_module.GATES * hidden_size
        directions = 2 if bidirectional else 1
        self._all_weights = []
        for layer in range(num_layers):
            features = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
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
        self.reg = reg
        self.target_step = target_step
        self.tol = tol
        self.through_time = through_time
        self.check_finite = check_finite
        self.backend = backend
        self.rule = rule
        self.reset_parameters()

    @property
    def cell(self) -> str:
        return self.cell_module.NAME

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, ``[[W_ih, W_hh, b_ih, b_hh], …]`` as ``torch.nn``."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """Nothing to do: ``torch.nn`` packs its weights into one buffer for cuDNN here; these layers
        keep no packed copy (a cuDNN kernel that runs their forward takes the weights as they are)."""

    # Hyper-parameters (and batch_first) are validated whenever they are set, not only in __init__.
    def __setattr__(self, name, value):
        validate = _SETTERS.get(name)
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
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _repr_cell(self) -> str:
        return ""

    def _activation(self):
        return get_activation("tanh")

    def _inverse(self):
        return None

    def _config(self) -> TPConfig:
        return TPConfig(self.cell, self.rule, self._activation(), self.reg, self.target_step, self.tol,
                        self.through_time, self.backend, self._inverse(), self.workspace)

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None):
        data = input.data if isinstance(input, PackedSequence) else input
        if isinstance(data, Tensor) and torch.is_autocast_enabled(data.device.type):
            # Under autocast the layer runs in its parameters' dtype (float32 for a float32 layer),
            # like the ops autocast keeps in full precision; its outputs come in that dtype.
            dtype = self.weight_hh_l0.dtype
            with torch.autocast(data.device.type, enabled=False):
                return self.forward(input.to(dtype), hx.to(dtype) if isinstance(hx, Tensor) else hx)
        x, h0, batched, packing = check_input(self, input, hx)
        directions = 2 if self.bidirectional else 1
        grad_enabled = torch.is_grad_enabled()
        if packing is None and self.num_layers == 1 and directions == 1:  # one layer: no stack machinery
            h0 = x.new_zeros(x.shape[1], self.hidden_size) if h0 is None else h0[0]
            out, h_n = TPFunction.apply(self.cell_module, self._config(), grad_enabled, x, h0,
                                        self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
            h_n = h_n.unsqueeze(0)
        else:
            if h0 is None:
                h0 = x.new_zeros(self.num_layers * directions, x.shape[1], self.hidden_size)
            spec = StackSpec(self.num_layers, directions, self.dropout, self.training)
            weights = [getattr(self, f"{k}_l{layer}{suffix}") for layer in range(self.num_layers)
                       for suffix in ("", "_reverse")[:directions] for k in PARAMETERS]
            out, h_n = StackFunction.apply(self.cell_module, self._config(), spec, grad_enabled,
                                           None if packing is None else packing.lengths, x, h0, *weights)
        if packing is not None:
            return packing.pack(out), h_n
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n


class TPRNN(_TPRecurrent):
    __doc__ = """Elman RNN with a target-propagation backward (the paper's model), a drop-in for
    ``torch.nn.RNN``: the same positional arguments and defaults, parameter names and shapes.

    Args:""" + _NN_ARGS.format(
        nonlinearity="""
        nonlinearity: ``"tanh"`` (paper) or ``"relu"``, as ``torch.nn``; also ``"sigmoid"`` and
            ``"identity"``. ``mode`` is ``"RNN_"`` + its upper-case name (``"RNN_TANH"``, …).""",
        rules="""how targets travel back in time: ``"linearized"`` (eq. 2, default), ``"difference"``,
            ``"direct"``, ``"learned"`` (reverse layer, DTP baseline) or ``"bp"`` (exact gradient).""",
        extra="""
        inverse_lr, inverse_noise, inverse_momentum: the reverse layer's training with
            ``rule="learned"`` (below).""") + """

    ``rule="learned"`` trains a reverse layer ``ψ(v) = a(x W_ihᵀ + v Vᵀ + c)`` inside every
    backward (one Nesterov-SGD step with ``inverse_lr``, ``inverse_momentum``, on a
    reconstruction loss with noise ``inverse_noise``) before propagating targets; its ``V`` and
    ``c`` are the buffers ``inverse_weight_hh_l0`` and ``inverse_bias_l0`` (with momentum
    buffers), so the forward optimizer does not see them. See :mod:`targetprop.learned`.
    """

    cell_module = elman

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, rule: str = "linearized", reg: float = 1.0, target_step: float = 1e-2,
                 tol: float = 1e-3, through_time: bool = False, check_finite: bool = True, backend: str = "auto",
                 inverse_lr: float = 1e-3, inverse_noise: float = 0.1, inverse_momentum: float = 0.9) -> None:
        get_activation(nonlinearity)  # a bad name fails before anything else, as in torch.nn
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, rule, reg, target_step, tol, through_time, check_finite, backend)
        self.nonlinearity = nonlinearity
        self.inverse_lr = inverse_lr
        self.inverse_noise = inverse_noise
        self.inverse_momentum = inverse_momentum

    @property
    def mode(self) -> str:
        """``"RNN_TANH"`` / ``"RNN_RELU"`` as ``torch.nn.RNN`` (``"RNN_SIGMOID"``, ``"RNN_IDENTITY"``
        for the activations ``torch.nn`` does not have)."""
        return "RNN_" + self.nonlinearity.upper()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "rule" and value == "learned":
            self._ensure_reverse_layer()

    def _repr_cell(self) -> str:
        return f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh" else ""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.rule == "learned":
            s += f", inverse_lr={self.inverse_lr:g}, inverse_noise={self.inverse_noise:g}, " \
                 f"inverse_momentum={self.inverse_momentum:g}"
        return s

    def _activation(self):
        return get_activation(self.nonlinearity)

    def _ensure_reverse_layer(self) -> None:
        """Create the reverse layer's buffers (orthogonal ``V``, zero ``c``) the first time it is needed."""
        if "inverse_weight_hh_l0" in self._buffers:
            return
        w = self.weight_hh_l0
        self.register_buffer("inverse_weight_hh_l0", orthogonal_(torch.empty_like(w)))
        self.register_buffer("inverse_bias_l0", w.new_zeros(self.hidden_size))
        self.register_buffer("inverse_weight_hh_l0_momentum", torch.zeros_like(w))
        self.register_buffer("inverse_bias_l0_momentum", w.new_zeros(self.hidden_size))

    def _inverse(self):
        if self.rule != "learned":
            return None
        self._ensure_reverse_layer()
        return learned.ReverseLayer(self.inverse_weight_hh_l0, self.inverse_bias_l0,
                                    self.inverse_weight_hh_l0_momentum, self.inverse_bias_l0_momentum,
                                    self.inverse_lr, self.inverse_noise, self.inverse_momentum)

    def inverse_reconstruction_error(self, input: Tensor, hx: Tensor | None = None) -> float:
        """For ``rule="learned"``: mean ``‖ψ_t(f(h_{t-1})) − h_{t-1}‖²`` over the steps of ``input``
        (no noise), how far the learned reverse layer is from inverting the forward step."""
        if self.rule != "learned":
            raise ValueError("inverse_reconstruction_error needs rule='learned'")
        xt, h0, _, _ = check_input(self, input, hx)
        h0 = xt.new_zeros(xt.shape[1], self.hidden_size) if h0 is None else h0[0]
        with torch.no_grad():
            out = elman.forward(xt, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                self.bias_hh_l0, self._activation())
            tape = elman.ElmanTape(xt, h0, out, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                   self.bias_hh_l0, self._activation())
            return self._inverse().reconstruction_error(tape).item()


class TPGRU(_TPRecurrent):
    __doc__ = """GRU with a target-propagation backward (the paper's Fashion-MNIST model), a drop-in
    for ``torch.nn.GRU``: the same positional arguments and defaults, parameter names and shapes.

    Args:""" + _NN_ARGS.format(
        nonlinearity="",
        rules="""``"linearized"`` (the authors' GRU rule, default) or ``"bp"`` (exact gradient).""",
        extra="") + """

    Gate rows ``(r, z, n)`` as ``torch.nn.GRU``; the rule is written out in :mod:`targetprop.cells.gru`.
    """

    cell_module = gru
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, rule: str = "linearized", reg: float = 1.0, target_step: float = 1e-2,
                 tol: float = 1e-3, through_time: bool = False, check_finite: bool = True,
                 backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, rule, reg, target_step, tol, through_time, check_finite, backend)


def _set_rule(self, v):
    v = rules.check_rule_name(self.cell_module.NAME, v)
    if (self.num_layers > 1 or self.bidirectional) and not rules.stackable(rules.get_rule(self.cell, v)):
        raise ValueError(f"rule={v!r} needs num_layers=1 and bidirectional=False (it defines no step down a "
                         "stack: its reverse layer is trained for one layer and one direction)")
    return v


def _nonneg(name):
    return lambda self, v: check.real(name, v, low=0.0, low_open=False)


def _dropout_arg(self, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
        raise ValueError(f"dropout should be a number in range [0, 1], the probability of an element being zeroed, "
                         f"got {v!r}")
    return float(v)


_SETTERS = {
    "dropout": _dropout_arg,
    "batch_first": lambda self, v: _bool_arg("batch_first", v),
    "through_time": lambda self, v: _bool_arg("through_time", v),
    "check_finite": lambda self, v: _bool_arg("check_finite", v),
    "rule": _set_rule,
    "nonlinearity": lambda self, v: get_activation(v).name,
    "reg": _nonneg("reg"),
    "target_step": lambda self, v: check.real("target_step", v, low=0.0, low_open=True),
    "tol": lambda self, v: check.real("tol", v, low=0.0, high=0.5, low_open=True),
    "backend": lambda self, v: check.choice("backend", v, BACKENDS),
    "inverse_lr": _nonneg("inverse_lr"),
    "inverse_noise": _nonneg("inverse_noise"),
    "inverse_momentum": lambda self, v: check.real("inverse_momentum", v, low=0.0, high=1.0, low_open=False),
}
