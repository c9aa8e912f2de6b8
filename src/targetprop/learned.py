"""The learned-inverse baseline for the Elman cell: difference target propagation through a
parameterized reverse layer (DTP / TPTT, Manchev & Spratling 2020; the paper's Section 2.1).

Reverse layer: ``ψ_t(v) = a(x_t W_ihᵀ + v Vᵀ + c)`` with its own ``V`` (p×p) and ``c`` (p).
Targets travel by the difference formula: ``R(λ_t, t) = ψ_t(h_t + λ_t) − ψ_t(h_t)``.

Training (inside every backward, *before* targets are propagated; docs/maths.md, "Learned inverses"): one step of
SGD with Nesterov momentum on the noisy reconstruction loss

    L(V, c) = mean over all (t, b) of ½‖ψ_t(f(h_{t-1} + ε, x_t)) − (h_{t-1} + ε)‖²,  ε ~ N(0, σ²),

with ε drawn from PyTorch's global generator (so ``torch.manual_seed`` reproduces it). ``V``,
``c`` and their momentum buffers are *buffers* of the layer (in its state dict, not in
``parameters()``), so the forward optimizer never sees them and a checkpoint keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cells.elman import NAME, ElmanTape
from .rules import propagate, register


@dataclass(eq=False)
class ReverseLayer:
    """Views of the layer's buffers and the reverse layer's own hyper-parameters."""

    weight: Tensor  # V
    bias: Tensor  # c
    weight_velocity: Tensor
    bias_velocity: Tensor
    lr: float
    noise: float
    momentum: float

    def _inputs(self, tape: ElmanTape, noise: float):
        """``h_{t-1} (+ ε)`` for all t, and ``f(h_{t-1} (+ ε), x_t)``: both (T, B, p)."""
        T, B, p = tape.out.shape
        h_prev = torch.cat([tape.h0.unsqueeze(0), tape.out[:-1]])
        if noise > 0:
            h_prev = h_prev + noise * torch.randn_like(h_prev)
        fwd = torch.baddbmm(tape.input_projection, h_prev, tape.weight_hh.T.expand(T, p, p))
        return h_prev, tape.activation.apply_(fwd)

    def _reconstruction(self, tape: ElmanTape, v: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        T, B, _ = tape.out.shape
        pre = (tape.x.reshape(T * B, -1) @ tape.weight_ih.T).view(T, B, -1) + v @ weight.T + bias
        return tape.activation.apply_(pre)

    def reconstruction_error(self, tape: ElmanTape) -> Tensor:
        """Mean over (t, b) of ``‖ψ_t(f(h_{t-1})) − h_{t-1}‖²`` without noise (a diagnostic)."""
        with torch.no_grad():
            target, fwd = self._inputs(tape, 0.0)
            return (self._reconstruction(tape, fwd, self.weight, self.bias) - target).pow(2).sum(-1).mean()

    @torch.no_grad()
    def train_step(self, tape: ElmanTape) -> Tensor:
        """One Nesterov-SGD step on the noisy reconstruction loss; returns the loss before it."""
        target, fwd = self._inputs(tape, self.noise)
        weight = self.weight.detach().requires_grad_(True)
        bias = self.bias.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = 0.5 * (self._reconstruction(tape, fwd, weight, bias) - target).pow(2).sum(-1).mean()
            g_w, g_b = torch.autograd.grad(loss, [weight, bias])
        for param, grad, velocity in ((self.weight, g_w, self.weight_velocity), (self.bias, g_b, self.bias_velocity)):
            velocity.mul_(self.momentum).add_(grad)
            param.sub_(grad.add(velocity, alpha=self.momentum), alpha=self.lr)
        return loss.detach()


@register(NAME, "learned")
class Learned:
    uses_target_step = True

    def prepare(self, tape: ElmanTape, config):
        inverse: ReverseLayer = config.inverse
        if inverse.lr > 0:
            inverse.train_step(tape)
        act, V = tape.activation, inverse.weight
        # ψ_t(h_t + λ) = a(pre_t + λ Vᵀ) with pre_t = x_t W_ihᵀ + c + h_t Vᵀ, for all t at once
        T, B, p = tape.out.shape
        pre = (tape.x.reshape(T * B, -1) @ tape.weight_ih.T).view(T, B, p).add_(inverse.bias)
        pre = torch.baddbmm(pre, tape.out, V.T.expand(T, p, p))
        base = act.apply_(pre.clone()).unbind(0)
        pre = pre.unbind(0)
        buf = tape.work_buffer()

        def step(t, lam_t, out):
            act.apply_(torch.addmm(pre[t - 1], lam_t, V.T, out=buf)).sub_(base[t - 1])
            out.add_(buf)

        return lambda lam: propagate(step, lam)
