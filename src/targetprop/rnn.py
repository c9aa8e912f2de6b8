"""``TPRNN``: a one-layer Elman RNN that looks and loads like ``torch.nn.RNN`` and trains by TP.

After ``loss.backward()`` its parameters' ``.grad`` hold the target-propagation direction of
eq. (3) (or the exact gradient with ``rule="bp"``), so any ``torch.optim`` optimizer applies
the paper's update. See ``docs/maths.md``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _validation as check
from . import elman, rules
from .activations import get_activation
from .engine import TPConfig
from .function import ElmanTPFunction
from .kernels import BACKENDS


class TPRNN(nn.Module):
    """Elman RNN with a target-propagation backward.

    Args:
        input_size: features per step ``d``.
        hidden_size: hidden units ``p``.
        nonlinearity: ``"tanh"`` (paper), ``"sigmoid"``, ``"identity"`` or ``"relu"``.
        bias: with ``bias_ih_l0`` and ``bias_hh_l0``.
        batch_first: input ``(B, T, d)`` and output ``(B, T, p)`` if True, else time first.
        rule: how targets travel back in time: ``"linearized"`` (eq. 2, default), ``"difference"``,
            ``"direct"``, or ``"bp"`` (exact gradient, for comparison on equal machinery).
        reg: ``r ≥ 0``, the ridge term of the regularized inverse.
        target_step: ``γ_h > 0``, the step that makes the last target from the loss gradient (eq. 1).
        tol: ``τ ∈ (0, 0.5)``: targets are projected into the activation's range shrunk by ``τ``.
        through_time: if True, the authors' public-code variant: the same targets, but the
            parameter direction back-propagates ``Σ_t ½‖h_t − v_t‖²`` through the recurrence
            instead of holding ``h_{t-1}`` fixed.
        check_finite: raise on NaN/inf inputs (one reduction per forward).
        backend: ``"auto"`` (fused compiled CPU loops where they apply, built on first use, else
            pure PyTorch), ``"cpp"`` (compiled or an error) or ``"torch"`` (pure PyTorch).

    Shapes as ``torch.nn.RNN`` with one layer: ``forward(x, h0=None) -> (output, h_n)``,
    ``h0`` and ``h_n`` are ``(1, B, p)`` (``(1, p)`` for unbatched ``(T, d)`` input).
    """

    cell = elman.CELL

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = True,
        rule: str = "linearized",
        reg: float = 1.0,
        target_step: float = 1e-2,
        tol: float = 1e-3,
        through_time: bool = False,
        check_finite: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.input_size = check.positive_int("input_size", input_size)
        self.hidden_size = check.positive_int("hidden_size", hidden_size)
        self.nonlinearity = nonlinearity
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.rule = rule
        self.reg = reg
        self.target_step = target_step
        self.tol = tol
        self.through_time = bool(through_time)
        self.check_finite = bool(check_finite)
        self.backend = backend
        self.num_layers = 1
        self.bidirectional = False
        kw = {"device": device, "dtype": dtype}
        self.weight_ih_l0 = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh_l0 = nn.Parameter(torch.empty(hidden_size, hidden_size, **kw))
        if self.bias:
            self.bias_ih_l0 = nn.Parameter(torch.empty(hidden_size, **kw))
            self.bias_hh_l0 = nn.Parameter(torch.empty(hidden_size, **kw))
        else:
            self.register_parameter("bias_ih_l0", None)
            self.register_parameter("bias_hh_l0", None)
        self.reset_parameters()

    # Hyper-parameters are validated whenever they are set, not only in __init__.
    def __setattr__(self, name, value):
        validate = _SETTERS.get(name)
        if validate is not None:
            value = validate(self, value)
        super().__setattr__(name, value)

    def reset_parameters(self) -> None:
        """``torch.nn.RNN``'s default: uniform in ``±1/√p``. The paper's init is
        :func:`targetprop.orthogonal_init_`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def extra_repr(self) -> str:
        s = (f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, "
             f"bias={self.bias}, batch_first={self.batch_first}, rule={self.rule!r}")
        if self.rule != "bp":
            s += f", reg={self.reg:g}, target_step={self.target_step:g}, tol={self.tol:g}"
            if self.through_time:
                s += ", through_time=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _config(self) -> TPConfig:
        return TPConfig(self.cell, self.rule, get_activation(self.nonlinearity), self.reg,
                        self.target_step, self.tol, self.through_time, self.backend)

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
        x, h0, batched = self._check_input(x, h0)
        if h0 is None:
            h0 = x.new_zeros(x.shape[1], self.hidden_size)
        out, h_n = ElmanTPFunction.apply(self._config(), x, h0, self.weight_ih_l0, self.weight_hh_l0,
                                         self.bias_ih_l0, self.bias_hh_l0)
        if not batched:
            return out.squeeze(1), h_n
        return (out.transpose(0, 1) if self.batch_first else out), h_n.unsqueeze(0)


def _set_rule(self, v):
    return rules.check_rule_name(self.cell, v)


def _set_nonlinearity(self, v):
    return get_activation(v).name


_SETTERS = {
    "rule": _set_rule,
    "nonlinearity": _set_nonlinearity,
    "reg": lambda self, v: check.real("reg", v, low=0.0, low_open=False),
    "target_step": lambda self, v: check.real("target_step", v, low=0.0, low_open=True),
    "tol": lambda self, v: check.real("tol", v, low=0.0, high=0.5, low_open=True),
    "backend": lambda self, v: check.choice("backend", v, BACKENDS),
}
