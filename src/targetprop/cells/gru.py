"""The GRU cell: its forward pass and its tape (its rules: :mod:`targetprop.rules.gru`).

PyTorch's cell, gate rows (r, z, n) stacked in ``W_ih`` (3p, d) and ``W_hh`` (3p, p):
``r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)``, ``z = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)``,
``q = h W_hnᵀ + b_hn``, ``n = tanh(x W_inᵀ + b_in + r⊙q)``, ``h' = (1−z)⊙n + z⊙h``.

BP's adjoint step (docs/maths.md, "GRU"), with ``c_r = r(1−r)⊙q⊙(1−n²)⊙(1−z)``, ``c_z = z(1−z)⊙(h−n)``,
``c_n = r⊙(1−n²)⊙(1−z)``:

    μ = z⊙μ' + [c_r⊙μ'] W_hr + [c_z⊙μ'] W_hz + [c_n⊙μ'] W_hn = z⊙μ' + [c_r⊙μ', c_z⊙μ', c_n⊙μ'] W_hh

The authors' TP rule (:mod:`targetprop.rules.gru`) has the same shape with ``M_•ᵀ`` for ``W_h•``
and the gate derivatives divided instead of multiplied. Both are "per-gate scale, then one (B×3p)·(3p×p) product, plus z⊙λ" per step. When a backward
will follow, the forward pass keeps every step's gates ``[r, z, q, n]`` (T, B, 4, p); the
compiled loop (``kernels/kernels.cpp``) then computes the scales on the fly and, as each ``λ_t``
becomes final, writes the cell's pre-activation adjoints ``[c_r, c_z, c_n, (1−n²)(1−z)]⊙λ_t``,
from which the parameter directions (eq. 3, cotangent −λ_t on h_t) are a few matrix products.
The pure-PyTorch path computes the same from the kept gates with batched tensor operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..activations import Activation
from ..recursion import Recursion, propagate
from .protocol import GRADIENTS, named

NAME = "gru"
GATES = 3
STATES = 1  # a step's state is h alone


def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, activation: Activation = None, kernels=None) -> Tensor:
    """All hidden states (T, B, p) by PyTorch's native GRU kernel (when no backward follows)."""
    has_bias = b_ih is not None
    params = [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else [])
    out, _ = torch.gru(x, h0.unsqueeze(0), params, has_bias, 1, 0.0, False, False, False)
    return out


def forward_for_backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                         b_hh: Tensor | None, activation: Activation = None, kernels=None):
    """``(out, gates)``: the hidden states (T, B, p) and every step's ``[r, z, q, n]`` (T, B, 4, p),
    ``q = h_{t-1} W_hnᵀ + b_hn``; one input projection for all steps, then per step
    ``h W_hhᵀ + b_hh`` written straight into the gate buffer and in-place gate arithmetic (in
    the compiled loop when ``kernels`` is given)."""
    T, B, _ = x.shape
    p = h0.shape[-1]
    flat = x.reshape(T * B, -1)
    gi = (torch.addmm(b_ih, flat, w_ih.T) if b_ih is not None else flat @ w_ih.T).view(T, B, 3 * p)
    gates = x.new_empty(T, B, 4, p)
    out = x.new_empty(T, B, p)
    if kernels is not None:
        bias = b_hh.contiguous() if b_hh is not None else x.new_empty(0)
        kernels.gru_forward_(gi, h0.contiguous(), w_hh.T.contiguous(), bias, out, gates)
        return out, gates
    wt = w_hh.T
    h = h0
    for t in range(T):
        g = gates[t]
        gh = g[:, :3].view(B, 3 * p)  # r, z, q slots: h W_hhᵀ + b_hh
        if b_hh is not None:
            torch.addmm(b_hh, h, wt, out=gh)
        else:
            torch.mm(h, wt, out=gh)
        g[:, :2].view(B, 2 * p).add_(gi[t, :, :2 * p]).sigmoid_()
        n = torch.addcmul(gi[t, :, 2 * p:], g[:, 0], g[:, 2], out=g[:, 3]).tanh_()
        h = torch.sub(h, n, out=out[t]).mul_(g[:, 1]).add_(n)
    return out, gates


@dataclass
class GRUTape:
    """What the forward pass keeps: inputs, weights, hidden states and the gates of every step
    (from :func:`forward_for_backward`)."""

    x: Tensor  # (T, B, d)
    h0: Tensor  # (B, p)
    out: Tensor  # (T, B, p)
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    activation: Activation = None
    kernels: object = None
    gates: Tensor = None  # (T, B, 4, p): r, z, q, n
    workspace: object = None  # scratch buffers (a part of an engine.Workspace); set by the engine
    suffix: str = "l0"  # the layer and direction, as in the parameters' names (for error messages)
    valid: Tensor | None = None  # (T, B, 1) valid steps of a packed batch (unused: every rule is linear)

    def __post_init__(self):
        if self.gates is None:
            raise ValueError("GRUTape needs the gates kept by gru.forward_for_backward")

    @cached_property
    def _h_prev(self) -> Tensor:
        return torch.cat([self.h0.unsqueeze(0), self.out[:-1]])

    @cached_property
    def bp_factors(self) -> Tensor:
        """(T, B, 4, p): ``[c_r, c_z, c_n, (1−n²)(1−z)]`` (module docstring), for the torch path."""
        r, z, q, n = self.gates.unbind(2)
        dn = (1 - n * n) * (1 - z)
        return torch.stack([r * (1 - r) * q * dn, z * (1 - z) * (self._h_prev - n), r * dn, dn], dim=2)

    def recursion(self, linearized: bool, mat: Tensor, tol: float, keep_adjoints: bool = True) -> Recursion:
        """``λ_{t-1} += z_t⊙λ_t + [s_r, s_z, s_n](λ_t) mat`` for t = T..1; ``mat`` (3p, p); the
        scales are BP's ``[c_r, c_z, c_n]`` or, with ``linearized``, the authors' rule's
        (:meth:`divided_gate_scales`, then ``c_n``). The compiled loop also writes, and returns,
        the pre-activation adjoints of the final ``λ`` unless ``keep_adjoints`` is False."""
        floor = tol * (1 - tol)
        if self.kernels is not None:
            mat = mat.contiguous()

            def run(lam):
                adjoints = self.workspace.empty("adjoints", self.gates.shape, self.gates) if keep_adjoints \
                    else self.gates.new_empty(0)
                self.kernels.gru_recursion_(lam, self.gates, self.h0.contiguous(), self.out, mat, linearized,
                                            floor, adjoints)
                return adjoints if keep_adjoints else None

            return run
        f = self.bp_factors
        if linearized:
            scales = torch.stack([*self.divided_gate_scales(floor), f[:, :, 2]], dim=2)
        else:
            scales = f[:, :, :3]
        z = self.gates[:, :, 1].unbind(0)
        scales = scales.unbind(0)
        B, p = self.out.shape[1:]
        buf = self.out.new_empty(B, 3, p)
        flat = buf.view(B, 3 * p)

        def step(t, lam_t, out):
            torch.mul(scales[t - 1], lam_t.unsqueeze(1), out=buf)
            out.addmm_(flat, mat).addcmul_(z[t - 1], lam_t)

        return lambda lam: propagate(step, lam)

    def divided_gate_scales(self, floor: float) -> tuple[Tensor, Tensor]:
        """The linearized rule's r and z scales, ``q(1−n²)(1−z) ⊘ max(r(1−r), f)`` and
        ``(h−n) ⊘ max(z(1−z), f)``: (T, B, p) each."""
        r, z, q, n = self.gates.unbind(2)
        dn = self.bp_factors[:, :, 3]
        return q * dn / torch.clamp_min(r * (1 - r), floor), (self._h_prev - n) / torch.clamp_min(z * (1 - z), floor)

    def adjoint_recursion(self) -> Recursion:
        return self.recursion(False, self.weight_hh, 0.0)

    def preactivation_adjoints(self, lam: Tensor, adjoints: Tensor | None = None) -> Tensor:
        """(T, B, 4, p): ``[c_r, c_z, c_n, (1−n²)(1−z)]⊙λ_t``: ``adjoints`` when the recursion that
        made ``lam`` final returned them (the compiled loop), else computed here."""
        return adjoints if adjoints is not None else self.bp_factors * lam[1:].unsqueeze(2)

    def directions(self, lam: Tensor, needs, adjoints: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. (3): the cell's vector-Jacobian product over all rows with cotangent −λ_t on h_t
        (hence the negations); ``h0`` receives −λ_0. With ``G`` the pre-activation adjoints, the
        hidden side ``h W_hhᵀ + b_hh`` receives ``[G_r, G_z, G_n]`` (n's through r⊙q), the input
        side ``x W_ihᵀ + b_ih`` receives ``[G_r, G_z, (1−n²)(1−z)⊙λ]``. Keyed by name, for the
        names in ``needs`` (as the Elman tape's); ``adjoints`` as in :meth:`preactivation_adjoints`."""
        need_x, need_h0, need_wih, need_whh, need_bih, need_bhh = (k in needs for k in GRADIENTS)
        T, B, p = self.out.shape
        rows = self.preactivation_adjoints(lam, adjoints).reshape(T * B, 4 * p)  # contiguous: a view
        # column blocks of the rows, as strided views (BLAS reads them in place; no copies)
        hidden, gates_rz, gate_n = rows[:, :3 * p], rows[:, :2 * p], rows[:, 3 * p:]
        x = self.x.reshape(T * B, -1)
        grad_x = grad_wih = grad_whh = grad_bih = grad_bhh = None
        if need_x:
            w_rz, w_n = self.weight_ih[:2 * p], self.weight_ih[2 * p:]
            grad_x = torch.addmm(gate_n @ w_n, gates_rz, w_rz).neg_().view(self.x.shape)
        if need_wih:
            grad_wih = torch.cat([gates_rz.T @ x, gate_n.T @ x]).neg_()
        if need_bih and self.bias_ih is not None:
            grad_bih = torch.cat([gates_rz.sum(0), gate_n.sum(0)]).neg_()
        if need_whh:
            prev = self.out[:-1].reshape((T - 1) * B, p)
            grad_whh = torch.addmm(hidden[:B].T @ self.h0, hidden[B:].T, prev).neg_()
        if need_bhh and self.bias_hh is not None:
            grad_bhh = hidden.sum(0).neg_()
        return named(grad_x, lam[0].neg() if need_h0 else None, grad_wih, grad_whh, grad_bih, grad_bhh)


Tape = GRUTape  # the name the engine looks up on a cell module
