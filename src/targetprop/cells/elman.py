"""The Elman cell: its forward pass and its tape (its rules: :mod:`targetprop.rules.elman`).

Step (row vectors, time-major): ``u_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh``,
``h_t = a(u_t)``. Index letters: T steps, B batch rows, d inputs, p hidden units.

BP's step back in time: ``μ_{t-1} += (μ_t ⊙ a'(u_t)) W_hh``. Parameter directions (eq. 3) with ``δ_t = a'(u_t) ⊙ (−λ_t)`` stacked over all t:
``grad W_hh = Σ_t δ_tᵀ h_{t-1}``, ``grad W_ih = Σ_t δ_tᵀ x_t``, ``grad b = Σ_t δ_t``, each one
matrix product after the recursion; the input receives ``δ_t W_ih`` and ``h_0`` receives ``−λ_0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..activations import Activation
from ..inverse import inverse_operator
from ..recursion import Recursion, propagate
from .protocol import GRADIENTS, named

NAME = "rnn"  # as torch.nn.RNN
GATES = 1
STATES = 1  # a step's state is h alone

_ACTIVATION_CODES = {"tanh": 0, "sigmoid": 1, "identity": 2, "relu": 3}  # kernels/kernels.cpp


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
    """``x_t W_ihᵀ + b_ih + b_hh`` for all t at once: (T, B, p), a new contiguous tensor."""
    T, B, d = x.shape
    flat = x.reshape(T * B, d)
    proj = torch.addmm(b_ih + b_hh, flat, w_ih.T) if b_ih is not None else flat @ w_ih.T
    return proj.view(T, B, -1)


def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, activation: Activation, kernels=None) -> Tensor:
    """All hidden states ``h_1..h_T`` (T, B, p) for time-major ``x`` (T, B, d) and ``h0`` (B, p).

    With ``kernels`` (the compiled module), a fused loop over one input projection; otherwise
    PyTorch's native kernel where it has one, else an in-place loop of ``addmm_`` + activation.
    """
    if kernels is not None:
        out = input_projection(x, w_ih, b_ih, b_hh)
        kernels.elman_forward_(out, h0.contiguous(), w_hh.T.contiguous(), _ACTIVATION_CODES[activation.name])
        return out
    if activation.native_kernel is not None:
        has_bias = b_ih is not None
        params = [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else [])
        kernel = getattr(torch, activation.native_kernel)
        out, _ = kernel(x, h0.unsqueeze(0), params, has_bias, 1, 0.0, False, False, False)
        return out
    out = input_projection(x, w_ih, b_ih, b_hh)
    h = h0
    for t in range(out.shape[0]):
        activation.apply_(out[t].addmm_(h, w_hh.T))
        h = out[t]
    return out


def forward_for_backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                         b_hh: Tensor | None, activation: Activation, kernels=None) -> tuple[Tensor]:
    """``(out,)``: the Elman tape needs nothing besides the hidden states."""
    return (forward(x, h0, w_ih, w_hh, b_ih, b_hh, activation, kernels),)


@dataclass
class ElmanTape:
    """What the forward pass keeps for the backward: inputs, weights and hidden states."""

    x: Tensor  # (T, B, d)
    h0: Tensor  # (B, p)
    out: Tensor  # (T, B, p): h_1..h_T
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    activation: Activation
    kernels: object = None  # the compiled module, or None for the pure-PyTorch path
    workspace: object = None  # scratch buffers (a part of an engine.Workspace); set by the engine
    suffix: str = "l0"  # the layer and direction, as in the parameters' names (for error messages)
    valid: Tensor | None = None  # (T, B, 1): 1 at each sequence's valid steps (packed input), else None

    def inverse_operator(self, reg: float) -> Tensor:
        """``M = (W_hhᵀW_hh + rI)⁻¹W_hhᵀ`` (a failure names this layer's ``weight_hh``)."""
        return inverse_operator(self.weight_hh, reg, f"weight_hh_{self.suffix}")

    def h_prev(self, t: int) -> Tensor:
        """``h_{t-1}`` for t = 1..T."""
        return self.h0 if t == 1 else self.out[t - 2]

    @cached_property
    def derivative(self) -> Tensor:
        """``a'(u_t)`` for all t, exact (no projection): (T, B, p)."""
        return self.activation.derivative(self.out, out=self.workspace.empty("derivative", self.out.shape, self.out))

    @cached_property
    def input_projection(self) -> Tensor:
        return input_projection(self.x, self.weight_ih, self.bias_ih, self.bias_hh)

    def work_buffer(self) -> Tensor:
        return self.out.new_empty(self.out.shape[1:])

    def scaled_recursion(self, factor: Tensor, mat: Tensor, divide: bool, floor: float) -> Recursion:
        """``λ_{t-1} += (λ_t ⊙ f_t) mat``, or ``(λ_t ⊘ max(f_t, floor)) mat`` if ``divide``."""
        if self.kernels is not None:
            mat = mat.contiguous()

            def run(lam):
                self.kernels.scaled_recursion_(lam, factor, mat, divide, floor)

            return run
        if divide:
            factor = torch.clamp_min(factor, floor).reciprocal_()
        factors, buf = factor.unbind(0), self.work_buffer()

        def step(t, lam_t, out):
            torch.mul(lam_t, factors[t - 1], out=buf)
            out.addmm_(buf, mat)

        return lambda lam: propagate(step, lam)

    def adjoint_recursion(self) -> Recursion:
        """BP's step ``R = (λ_t ⊙ a'(u_t)) W_hh``, used by ``bp`` and by ``through_time``."""
        return self.scaled_recursion(self.derivative, self.weight_hh, False, 0.0)

    def directions(self, lam: Tensor, needs, adjoints=None) -> dict[str, Tensor]:
        """Eq. (3) from the displacements: the directions named in ``needs`` (among
        ``input, h0, weight_ih, weight_hh, bias_ih, bias_hh``), keyed by name.

        ``lam`` (T+1, B, p) is consumed (overwritten in place); ``adjoints`` is unused (no
        recursion of this cell hands any over).
        """
        need_x, need_h0, need_wih, need_whh, need_bih, need_bhh = (k in needs for k in GRADIENTS)
        T, B, p = self.out.shape
        d = self.x.shape[-1]
        grad_h0 = lam[0].neg() if need_h0 else None
        # P = a'(u) ⊙ λ = −δ, in place over λ_1..λ_T; signs are fixed on the small results.
        P = lam[1:].mul_(self.derivative)
        flat = P.view(T * B, p)
        grad_x = (P @ self.weight_ih).neg_() if need_x else None
        grad_wih = (flat.T @ self.x.reshape(T * B, d)).neg_() if need_wih else None
        grad_whh = None
        if need_whh:
            grad_whh = P[0].T @ self.h0
            if T > 1:
                grad_whh.addmm_(P[1:].reshape((T - 1) * B, p).T, self.out[:-1].reshape((T - 1) * B, p))
            grad_whh.neg_()
        grad_b = flat.sum(0).neg_() if (need_bih or need_bhh) else None
        grad_bih = grad_b if need_bih else None
        grad_bhh = (grad_b.clone() if need_bih else grad_b) if need_bhh else None
        return named(grad_x, grad_h0, grad_wih, grad_whh, grad_bih, grad_bhh)


Tape = ElmanTape  # the name the autograd glue looks up on a cell module
