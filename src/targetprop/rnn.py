"""The TP layers: ``TPRNN`` and ``TPGRU`` take ``torch.nn.RNN`` / ``torch.nn.GRU``'s arguments
(same order and defaults), load their state dicts, and train by target propagation.

After ``loss.backward()`` their parameters' ``.grad`` hold the target-propagation direction of
eq. (3) (or the exact gradient with ``rule="bp"``), so any ``torch.optim`` optimizer applies
the paper's update. See ``docs/maths.md``.

Stacks (``num_layers > 1``), ``bidirectional=True``, ``dropout`` between layers and
``PackedSequence`` input run as in ``torch.nn``; their backward hands targets, not gradients, down
the stack (docs/maths.md "Stacks"). Every shape runs through one autograd Function
(:mod:`targetprop.function`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import hyperparams as hp
from . import learned
from .activations import get_activation
from .cells import elman, gru
from .init import orthogonal_
from .inputs import check_input
from .recurrent import TPRecurrent

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
        reg: ``r ≥ 0``, the ridge term of the regularized inverse (Section 2.1); default 10.
        target_step: ``γ_h > 0``, the step that makes the last target from the loss gradient (eq. 1);
            default 1e-2.
        tol: ``τ ∈ (0, 0.5)``: targets are projected into the activation's range shrunk by ``τ``;
            default 0.1.
        signal_below: what the input (the modules below) and ``hx`` receive from a TP rule:
            ``"gradient"`` (default) the gradient of the layer's local target losses divided by
            ``γ_h``, of the size of BP's gradient, so one learning rate serves the whole model;
            ``"target"`` that gradient as eq. (3) makes it, ``γ_h`` times smaller.
        through_time: if True (the default), the authors' public-code variant: the same targets,
            but the parameter direction back-propagates ``Σ_t ½‖h_t − v_t‖²`` through the
            recurrence instead of holding ``h_{{t-1}}`` fixed; False is the paper's eq. (3).
            The defaults are the setting that never failed and learned most in docs/DEFAULTS.md;
            the paper's is ``through_time=False, reg=1, tol=1e-3``.
        check_finite: raise on NaN/inf inputs (one reduction per forward) and, naming the parameter
            and what to try, on NaN/inf in what the backward writes (one reduction per backward).
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

#: the learned rule's reverse layer: ``V``, ``c`` and their momentum buffers (in the state dict)
REVERSE_LAYER_BUFFERS = ("inverse_weight_hh_l0", "inverse_bias_l0", "inverse_weight_hh_l0_momentum",
                         "inverse_bias_l0_momentum")


class TPRNN(TPRecurrent):
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
                 device=None, dtype=None, *, rule: str = hp.RULE, reg: float = hp.REG.default,
                 target_step: float = hp.TARGET_STEP.default, tol: float = hp.TOL.default,
                 through_time: bool = hp.THROUGH_TIME, check_finite: bool = hp.CHECK_FINITE,
                 backend: str = hp.BACKEND, signal_below: str = hp.SIGNAL_BELOW,
                 inverse_lr: float = hp.INVERSE_LR.default, inverse_noise: float = hp.INVERSE_NOISE.default,
                 inverse_momentum: float = hp.INVERSE_MOMENTUM.default) -> None:
        get_activation(nonlinearity)  # a bad name fails before anything else, as in torch.nn
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, rule=rule, reg=reg, target_step=target_step, tol=tol,
                         through_time=through_time, check_finite=check_finite, backend=backend,
                         signal_below=signal_below)
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
        weight, bias, weight_momentum, bias_momentum = REVERSE_LAYER_BUFFERS
        self.register_buffer(weight, orthogonal_(torch.empty_like(w)))
        self.register_buffer(bias, w.new_zeros(self.hidden_size))
        self.register_buffer(weight_momentum, torch.zeros_like(w))
        self.register_buffer(bias_momentum, w.new_zeros(self.hidden_size))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A ``torch.nn.RNN`` state dict loads strictly into a ``rule="learned"`` layer too: the
        reverse layer's buffers, which ``torch.nn`` does not have, then keep their values."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        own = [prefix + name for name in REVERSE_LAYER_BUFFERS]
        if not any(k in state_dict for k in own):
            missing_keys[:] = [k for k in missing_keys if k not in own]

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


class TPGRU(TPRecurrent):
    __doc__ = """GRU with a target-propagation backward (the paper's Fashion-MNIST model), a drop-in
    for ``torch.nn.GRU``: the same positional arguments and defaults, parameter names and shapes.

    Args:""" + _NN_ARGS.format(
        nonlinearity="",
        rules="""``"linearized"`` (the authors' GRU rule, default) or ``"bp"`` (exact gradient).""",
        extra="") + """

    Gate rows ``(r, z, n)`` as ``torch.nn.GRU``; the rule is written out in :mod:`targetprop.rules.gru`.
    """

    cell_module = gru
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, rule: str = hp.RULE, reg: float = hp.REG.default,
                 target_step: float = hp.TARGET_STEP.default, tol: float = hp.TOL.default,
                 through_time: bool = hp.THROUGH_TIME, check_finite: bool = hp.CHECK_FINITE,
                 backend: str = hp.BACKEND, signal_below: str = hp.SIGNAL_BELOW) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, rule=rule, reg=reg, target_step=target_step, tol=tol,
                         through_time=through_time, check_finite=check_finite, backend=backend,
                         signal_below=signal_below)
