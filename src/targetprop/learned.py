"""The reverse layer of the learned-inverse baseline for the Elman cell (its rule: ``learned`` in
:mod:`targetprop.rules.elman`): difference target propagation through a parameterized reverse
layer (DTP / TPTT, Manchev & Spratling 2020; the paper's Section 2.1).

Reverse layer: ``ψ_t(v) = a(x_t W_ihᵀ + v Vᵀ + c)`` with its own ``V`` (p×p) and ``c`` (p).
Targets travel by the difference formula: ``R(λ_t, t) = ψ_t(h_t + λ_t) − ψ_t(h_t)``.

Training (inside every backward, *before* targets are propagated; docs/maths.md, "Learned inverses"): one step of
SGD with Nesterov momentum on the noisy reconstruction loss

    L(V, c) = mean over all (t, b) of ½‖ψ_t(f(h_{t-1} + ε, x_t)) − (h_{t-1} + ε)‖²,  ε ~ N(0, σ²),

with ε drawn from PyTorch's global generator (so ``torch.manual_seed`` reproduces it). ``V``,
``c`` and their momentum buffers are *buffers* of the layer (in its state dict, not in
``parameters()``), so the forward optimizer never sees them and a checkpoint keeps them.

Under ``torch.distributed`` (DDP) the reconstruction gradient is averaged over the processes
before the step, so every process takes the same step, the one of the whole batch when the
shards have equal sizes (the noise ε is each process's own draw).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cells.elman import ElmanTape


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
        _average_over_processes(g_w, g_b)
        for param, grad, velocity in ((self.weight, g_w, self.weight_velocity), (self.bias, g_b, self.bias_velocity)):
            velocity.mul_(self.momentum).add_(grad)
            param.sub_(grad.add(velocity, alpha=self.momentum), alpha=self.lr)
        return loss.detach()


def _average_over_processes(*grads: Tensor) -> None:
    """Average ``grads`` in place over the processes of the default group, if one is running."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat.div_(dist.get_world_size())
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
