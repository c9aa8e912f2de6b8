"""The GRU cell: its forward pass, its TP rules and its parameter directions.

PyTorch's cell, gate rows (r, z, n) stacked in ``W_ih`` (3p, d) and ``W_hh`` (3p, p):
``r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)``, ``z = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)``,
``q = h W_hnᵀ + b_hn``, ``n = tanh(x W_inᵀ + b_in + r⊙q)``, ``h' = (1−z)⊙n + z⊙h``.

BP's adjoint step (DESIGN.md §2), with ``c_r = r(1−r)⊙q⊙(1−n²)⊙(1−z)``, ``c_z = z(1−z)⊙(h−n)``,
``c_n = r⊙(1−n²)⊙(1−z)``:

    μ = z⊙μ' + [c_r⊙μ'] W_hr + [c_z⊙μ'] W_hz + [c_n⊙μ'] W_hn = z⊙μ' + [c_r⊙μ', c_z⊙μ', c_n⊙μ'] W_hh

The authors' TP rule (``linearized``) replaces each ``W_h•`` by ``M_•ᵀ``, ``M_• = (W_h•ᵀW_h• + rI)⁻¹W_h•ᵀ``
(three Cholesky factorizations, batched), and *divides* by the gate derivatives ``r(1−r)``,
``z(1−z)`` (gates clamped to [τ, 1−τ], i.e. derivatives floored at τ(1−τ)) instead of
multiplying; the direct path ``z⊙λ'`` and the tanh derivative ``1−n²`` are kept. Derived for
the cell computed here (the authors' code writes it for the other convention,
``h' = (1−z)⊙h + z⊙n``).

Both are "per-gate scale, then one (B×3p)·(3p×p) product, plus z⊙λ" per step, with every
per-step factor computed for all steps at once before the loop. Parameter directions (eq. 3):
one batched vector-Jacobian product of the cell over all (x_t, h_{t-1}) pairs, cotangent −λ_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .activations import Activation
from .inverse import inverse_operator
from .kernels import KernelUnavailableError
from .rules import Recursion, propagate, register

CELL = "gru"


def select_kernels(backend: str, *tensors):
    """No compiled loops for the GRU cell: its recursion runs on PyTorch ops."""
    if backend == "cpp":
        raise KernelUnavailableError("backend='cpp' is not available for the GRU cell; use 'auto' or 'torch'")
    return None


def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, activation: Activation = None, kernels=None) -> Tensor:
    """All hidden states (T, B, p) by PyTorch's native GRU kernel."""
    has_bias = b_ih is not None
    params = [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else [])
    out, _ = torch.gru(x, h0.unsqueeze(0), params, has_bias, 1, 0.0, False, False, False)
    return out


def cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None):
    """One GRU step on rows, written out: returns ``(h', r, z, n, q)``."""
    gi = x @ w_ih.T
    gh = h @ w_hh.T
    if b_ih is not None:
        gi = gi + b_ih
        gh = gh + b_hh
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, q = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * q)
    return (1 - z) * n + z * h, r, z, n, q


@dataclass
class GRUTape:
    """What the forward pass keeps: inputs, weights and hidden states; gates are recomputed
    for all steps in one batched evaluation of :func:`cell`, which the VJP then reuses."""

    x: Tensor  # (T, B, d)
    h0: Tensor  # (B, p)
    out: Tensor  # (T, B, p)
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    activation: Activation = None
    kernels: object = None

    @cached_property
    def _graph(self):
        """The cell over all (x_t, h_{t-1}) rows at once, with a graph to the weights and x."""
        T, B, p = self.out.shape
        h_prev = torch.cat([self.h0.unsqueeze(0), self.out[:-1]]).reshape(T * B, p)
        leaves = [t.detach().requires_grad_(True) if t is not None else None
                  for t in (self.x.reshape(T * B, -1), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]
        with torch.enable_grad():
            h_next, r, z, n, q = cell(leaves[0], h_prev, *leaves[1:])
        view = lambda t: t.detach().view(T, B, p)
        return h_next, leaves, h_prev.view(T, B, p), view(r), view(z), view(n), view(q)

    def _gated_recursion(self, scales: Tensor, mat: Tensor) -> Recursion:
        """``λ_{t-1} += z_t⊙λ_t + [s_r⊙λ_t, s_z⊙λ_t, s_n⊙λ_t] mat``; ``scales`` (T, B, 3, p), ``mat`` (3p, p)."""
        z = self._graph[4].unbind(0)
        scales = scales.unbind(0)
        B, p = self.out.shape[1:]
        buf = self.out.new_empty(B, 3, p)
        flat = buf.view(B, 3 * p)

        def step(t, lam_t, out):
            torch.mul(scales[t - 1], lam_t.unsqueeze(1), out=buf)
            out.addmm_(flat, mat).addcmul_(z[t - 1], lam_t)

        return lambda lam: propagate(step, lam)

    def _common(self):
        _, _, h_prev, r, z, n, q = self._graph
        dn = (1 - n * n) * (1 - z)  # (1−n²)(1−z)
        return h_prev, r, z, n, q, dn

    def adjoint_recursion(self) -> Recursion:
        h_prev, r, z, n, q, dn = self._common()
        scales = torch.stack([r * (1 - r) * q * dn, z * (1 - z) * (h_prev - n), r * dn], dim=2)
        return self._gated_recursion(scales, self.weight_hh)

    def linearized_recursion(self, reg: float, tol: float) -> Recursion:
        h_prev, r, z, n, q, dn = self._common()
        floor = tol * (1 - tol)
        scales = torch.stack([q * dn / torch.clamp_min(r * (1 - r), floor),
                              (h_prev - n) / torch.clamp_min(z * (1 - z), floor), r * dn], dim=2)
        p = self.out.shape[-1]
        m = inverse_operator(self.weight_hh.view(3, p, p), reg)  # (3, p, p): M_r, M_z, M_n
        return self._gated_recursion(scales, m.mT.reshape(3 * p, p))

    def directions(self, lam: Tensor, needs: tuple[bool, ...]):
        """Eq. (3): one VJP of the batched cell with cotangent −λ_t; ``h0`` receives −λ_0."""
        need_x, need_h0 = needs[:2]
        h_next, leaves, *_ = self._graph
        T, B, p = self.out.shape
        wanted = [leaf for leaf, need in zip(leaves, (need_x, *needs[2:])) if leaf is not None and need]
        grads = iter(torch.autograd.grad(h_next, wanted, grad_outputs=lam[1:].reshape(T * B, p).neg()))
        out = [next(grads) if (leaf is not None and need) else None for leaf, need in zip(leaves, (need_x, *needs[2:]))]
        grad_x = out[0].view(self.x.shape) if out[0] is not None else None
        return (grad_x, lam[0].neg() if need_h0 else None, *out[1:])


Tape = GRUTape


@register(CELL, "bp")
class BP:
    uses_target_step = False

    def prepare(self, tape: GRUTape, config):
        return tape.adjoint_recursion()


@register(CELL, "linearized")
class Linearized:
    uses_target_step = True

    def prepare(self, tape: GRUTape, config):
        return tape.linearized_recursion(config.reg, config.tol)
