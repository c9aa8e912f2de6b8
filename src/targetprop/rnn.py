"""The TP layers: ``TPRNN`` and ``TPGRU`` look and load like one-layer ``torch.nn.RNN`` /
``torch.nn.GRU`` and train by target propagation.

After ``loss.backward()`` their parameters' ``.grad`` hold the target-propagation direction of
eq. (3) (or the exact gradient with ``rule="bp"``), so any ``torch.optim`` optimizer applies
the paper's update. See ``docs/maths.md``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _validation as check
from . import elman, gru, learned, rules
from .activations import get_activation
from .engine import TPConfig
from .function import TPFunction
from .init import orthogonal_
from .kernels import BACKENDS

_COMMON_ARGS = """
        input_size: features per step ``d``.
        hidden_size: hidden units ``p``.
        bias: with ``bias_ih_l0`` and ``bias_hh_l0``.
        batch_first: input ``(B, T, d)`` and output ``(B, T, p)`` if True, else time first.
        reg: ``r ≥ 0``, the ridge term of the regularized inverse (Section 2.1).
        target_step: ``γ_h > 0``, the step that makes the last target from the loss gradient (eq. 1).
        tol: ``τ ∈ (0, 0.5)``: targets are projected into the activation's range shrunk by ``τ``.
        through_time: if True, the authors' public-code variant: the same targets, but the
            parameter direction back-propagates ``Σ_t ½‖h_t − v_t‖²`` through the recurrence
            instead of holding ``h_{t-1}`` fixed.
        check_finite: raise on NaN/inf inputs (one reduction per forward).
        backend: ``"auto"`` (fused compiled CPU loops where they apply, built on first use, else
            pure PyTorch), ``"cpp"`` (compiled or an error) or ``"torch"`` (pure PyTorch).

    Shapes as ``torch.nn`` with one layer: ``forward(x, h0=None) -> (output, h_n)``; ``h0`` and
    ``h_n`` are ``(1, B, p)`` (``(1, p)`` for unbatched ``(T, d)`` input)."""


class _TPRecurrent(nn.Module):
    """Parameters, validation and forward shared by the TP layers; subclasses name the cell."""

    cell_module = None  # elman or gru
    gates = 1
    _hyper = ("rule", "reg", "target_step", "tol", "backend")

    def __init__(self, input_size, hidden_size, bias, batch_first, rule, reg, target_step, tol,
                 through_time, check_finite, backend, device, dtype) -> None:
        super().__init__()
        self.input_size = check.positive_int("input_size", input_size)
        self.hidden_size = check.positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.num_layers = 1
        self.bidirectional = False
        kw = {"device": device, "dtype": dtype}
        rows = self.gates * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(rows, input_size, **kw))
        self.weight_hh_l0 = nn.Parameter(torch.empty(rows, hidden_size, **kw))
        if self.bias:
            self.bias_ih_l0 = nn.Parameter(torch.empty(rows, **kw))
            self.bias_hh_l0 = nn.Parameter(torch.empty(rows, **kw))
        else:
            self.register_parameter("bias_ih_l0", None)
            self.register_parameter("bias_hh_l0", None)
        self.reg = reg
        self.target_step = target_step
        self.tol = tol
        self.through_time = bool(through_time)
        self.check_finite = bool(check_finite)
        self.backend = backend
        self.rule = rule
        self.reset_parameters()

    @property
    def cell(self) -> str:
        return self.cell_module.CELL

    # Hyper-parameters are validated whenever they are set, not only in __init__.
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
        s = f"{self.input_size}, {self.hidden_size}{self._repr_cell()}, bias={self.bias}, " \
            f"batch_first={self.batch_first}, rule={self.rule!r}"
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
                        self.through_time, self.backend, self._inverse())

    def _check_input(self, x: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
        """Validate; return time-major ``x`` (T, B, d), ``h0`` (B, p) or None, and batched-ness."""
        if not isinstance(x, Tensor):
            raise ValueError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3):
            raise ValueError(
                f"input must be 3-D ({'B, T, d' if self.batch_first else 'T, B, d'}) or 2-D unbatched "
                f"(T, d), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features per step, expected input_size={self.input_size}")
        if x.dtype != self.weight_hh_l0.dtype:
            raise ValueError(f"input dtype {x.dtype} does not match the layer's {self.weight_hh_l0.dtype}")
        batched = x.dim() == 3
        x = (x.transpose(0, 1) if self.batch_first else x) if batched else x.unsqueeze(1)
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"input must have at least one step and one sequence, got shape {tuple(x.shape)}")
        if self.check_finite:
            check.finite("input", x)
        if h0 is not None:
            want = (1, x.shape[1], self.hidden_size) if batched else (1, self.hidden_size)
            if tuple(h0.shape) != want:
                raise ValueError(f"h0 must have shape {want}, got {tuple(h0.shape)}")
            if h0.dtype != x.dtype:
                raise ValueError(f"h0 dtype {h0.dtype} does not match the input's {x.dtype}")
            if self.check_finite:
                check.finite("h0", h0)
            h0 = h0[0] if batched else h0
        return x, h0, batched

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type):
            # Under autocast the layer runs in its parameters' dtype (float32 for a float32 layer),
            # like the ops autocast keeps in full precision; its outputs come in that dtype.
            dtype = self.weight_hh_l0.dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.to(dtype), h0.to(dtype) if isinstance(h0, Tensor) else h0)
        x, h0, batched = self._check_input(x, h0)
        if h0 is None:
            h0 = x.new_zeros(x.shape[1], self.hidden_size)
        out, h_n = TPFunction.apply(self.cell_module, self._config(), torch.is_grad_enabled(), x, h0,
                                    self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        if not batched:
            return out.squeeze(1), h_n
        return (out.transpose(0, 1) if self.batch_first else out), h_n.unsqueeze(0)


class TPRNN(_TPRecurrent):
    __doc__ = """Elman RNN with a target-propagation backward (the paper's model).

    Args:""" + _COMMON_ARGS.replace("        bias:", """        nonlinearity: ``"tanh"`` (paper), ``"sigmoid"``, ``"identity"`` or ``"relu"``.
        rule: how targets travel back in time: ``"linearized"`` (eq. 2, default), ``"difference"``,
            ``"direct"``, ``"learned"`` (reverse layer, DTP baseline) or ``"bp"`` (exact gradient).
        bias:""", 1) + """

    ``rule="learned"`` trains a reverse layer ``ψ(v) = a(x W_ihᵀ + v Vᵀ + c)`` inside every
    backward (one Nesterov-SGD step with ``inverse_lr``, ``inverse_momentum``, on a
    reconstruction loss with noise ``inverse_noise``) before propagating targets; its ``V`` and
    ``c`` are the buffers ``inverse_weight_hh_l0`` and ``inverse_bias_l0`` (with momentum
    buffers), so the forward optimizer does not see them. See :mod:`targetprop.learned`.
    """

    cell_module = elman

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True,
                 batch_first: bool = True, rule: str = "linearized", reg: float = 1.0, target_step: float = 1e-2,
                 tol: float = 1e-3, through_time: bool = False, check_finite: bool = True, backend: str = "auto",
                 inverse_lr: float = 1e-3, inverse_noise: float = 0.1, inverse_momentum: float = 0.9,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first, rule, reg, target_step, tol,
                         through_time, check_finite, backend, device, dtype)
        self.nonlinearity = nonlinearity
        self.inverse_lr = inverse_lr
        self.inverse_noise = inverse_noise
        self.inverse_momentum = inverse_momentum

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "rule" and value == "learned":
            self._ensure_reverse_layer()

    def _repr_cell(self) -> str:
        return f", nonlinearity={self.nonlinearity!r}"

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

    def inverse_reconstruction_error(self, x: Tensor, h0: Tensor | None = None) -> float:
        """For ``rule="learned"``: mean ``‖ψ_t(f(h_{t-1})) − h_{t-1}‖²`` over the steps of ``x``
        (no noise), how far the learned reverse layer is from inverting the forward step."""
        if self.rule != "learned":
            raise ValueError("inverse_reconstruction_error needs rule='learned'")
        xt, h0, _ = self._check_input(x, h0)
        if h0 is None:
            h0 = xt.new_zeros(xt.shape[1], self.hidden_size)
        with torch.no_grad():
            out = elman.forward(xt, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                self.bias_hh_l0, self._activation())
            tape = elman.ElmanTape(xt, h0, out, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                   self.bias_hh_l0, self._activation())
            return self._inverse().reconstruction_error(tape).item()


class TPGRU(_TPRecurrent):
    __doc__ = """GRU with a target-propagation backward (the paper's Fashion-MNIST model).

    Args:""" + _COMMON_ARGS.replace("        bias:", """        rule: ``"linearized"`` (the authors' GRU rule, default) or ``"bp"`` (exact gradient).
        bias:""", 1) + """

    Gate rows ``(r, z, n)`` as ``torch.nn.GRU``; the rule is written out in :mod:`targetprop.gru`.
    """

    cell_module = gru
    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = True,
                 rule: str = "linearized", reg: float = 1.0, target_step: float = 1e-2, tol: float = 1e-3,
                 through_time: bool = False, check_finite: bool = True, backend: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first, rule, reg, target_step, tol,
                         through_time, check_finite, backend, device, dtype)


def _set_rule(self, v):
    return rules.check_rule_name(self.cell_module.CELL, v)


def _nonneg(name):
    return lambda self, v: check.real(name, v, low=0.0, low_open=False)


_SETTERS = {
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
