"""The LSTM cell: its forward pass and its tape (its rules: :mod:`targetprop.rules.lstm`).

PyTorch's cell, gate rows (i, f, g, o) stacked in ``W_ih`` (4p, d) and ``W_hh`` (4p, p):
``i = σ(·)``, ``f = σ(·)``, ``g = tanh(·)``, ``o = σ(·)`` of ``x W_ihᵀ + b_ih + h W_hhᵀ + b_hh``
(each gate its p rows), ``c' = f⊙c + i⊙g``, ``h' = o⊙tanh(c')``. A step's state is ``[h, c]``
(B, 2p), ``h`` first (``STATES = 2``); the layer's output is the ``h`` part.

BP's adjoint step (docs/maths.md, "LSTM") for a cotangent ``[μh', μc']`` of the state at step t:

    μc* = μc' + o⊙(1−tanh²c')⊙μh'
    μh = [g⊙i(1−i)⊙μc*, c⊙f(1−f)⊙μc*, i⊙(1−g²)⊙μc*, tanh(c')⊙o(1−o)⊙μh'] W_hh,   μc = f⊙μc*

The four bracketed blocks are the pre-activation adjoints of the gates; the TP rule has the same
shape with the stacked ``M_kᵀ`` for ``W_hh`` and the gate derivatives divided instead of
multiplied. When a backward will follow, the forward keeps every step's ``[i, f, g, o, tanh c_t]``
(T, B, 5, p). With ``kernels`` (the compiled module) the forward and both recursions run in the
compiled loops (``kernels/kernels.cpp``), which compute the gate scales on the fly and, as each
``λ_t`` becomes final, write BP's pre-activation adjoints ``G`` (T, B, 4, p) for the directions;
the pure-PyTorch path computes the same from the kept gates with batched tensor operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..activations import Activation
from ..recursion import Recursion, propagate
from .protocol import GRADIENTS, named

NAME = "lstm"
GATES = 4
STATES = 2  # a step's state is [h, c]
#: the layer backends this cell runs: no Triton kernels for the LSTM (targetprop.kernels.BACKENDS has them all)
BACKENDS = ("auto", "cpp", "torch")


def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, activation: Activation = None, kernels=None) -> Tensor:
    """The states (T, B, 2p) ``[h_t, c_t]`` when no backward follows. With ``kernels``, the
    compiled forward (its gates dropped); otherwise the hidden states by PyTorch's native LSTM,
    then the cell states from them (the gates of all steps in one product, then
    ``c_t = f⊙c_{t-1} + i⊙g`` elementwise, step by step)."""
    if kernels is not None:
        return forward_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, activation, kernels)[0]
    T, B, _ = x.shape
    p = w_hh.shape[1]
    has_bias = b_ih is not None
    params = [w_ih, w_hh] + ([b_ih, b_hh] if has_bias else [])
    h_0, c_0 = h0[:, :p].unsqueeze(0).contiguous(), h0[:, p:].unsqueeze(0).contiguous()
    hs, _, _ = torch.lstm(x, (h_0, c_0), params, has_bias, 1, 0.0, False, False, False)
    out = x.new_empty(T, B, 2 * p)
    out[:, :, :p] = hs
    prev = torch.cat([h_0, hs[:-1]]).reshape(T * B, p)
    pre = (x.reshape(T * B, -1) @ w_ih.T).addmm_(prev, w_hh.T)
    if has_bias:
        pre.add_(b_ih + b_hh)
    pre = pre.view(T, B, 4, p)
    i, f, o = pre[:, :, 0].sigmoid(), pre[:, :, 1].sigmoid(), pre[:, :, 3].sigmoid()
    ig = i.mul_(pre[:, :, 2].tanh())
    c = c_0[0]
    for t in range(T):
        c = torch.addcmul(ig[t], f[t], c, out=out[t, :, p:])
    return out


def forward_for_backward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                         b_hh: Tensor | None, activation: Activation = None, kernels=None):
    """``(out, gates)``: the states (T, B, 2p) and every step's activated gates and cell tanh
    ``[i, f, g, o, tanh c_t]`` (T, B, 5, p); one input projection for all steps, then per step
    ``h W_hhᵀ + b_hh`` written straight into the gate buffer and in-place gate arithmetic (in the
    compiled loop when ``kernels`` is given, which with d ≤ p also makes ``x_t W_ihᵀ`` per step)."""
    T, B, d = x.shape
    p = w_hh.shape[1]
    gates = x.new_empty(T, B, 5, p)
    out = x.new_empty(T, B, 2 * p)
    if kernels is not None and d <= p:
        # few inputs: x_t W_ihᵀ per step in the loop, not a (T, B, 4p) projection written and read back
        bias = (b_ih + b_hh) if b_ih is not None else x.new_empty(0)
        kernels.lstm_forward_(x.contiguous(), h0.contiguous(), w_ih.T.contiguous(), w_hh.T.contiguous(), bias, out,
                              gates)
        return out, gates
    flat = x.reshape(T * B, -1)
    gi = (torch.addmm(b_ih, flat, w_ih.T) if b_ih is not None else flat @ w_ih.T).view(T, B, 4 * p)
    if kernels is not None:
        bias = b_hh.contiguous() if b_hh is not None else x.new_empty(0)
        kernels.lstm_forward_(gi, h0.contiguous(), x.new_empty(0), w_hh.T.contiguous(), bias, out, gates)
        return out, gates
    wt = w_hh.T
    h, c = h0[:, :p], h0[:, p:]
    for t in range(T):
        g = gates[t]
        pre = g[:, :4].view(B, 4 * p)
        if b_hh is not None:
            torch.addmm(b_hh, h, wt, out=pre)
        else:
            torch.mm(h, wt, out=pre)
        pre.add_(gi[t])
        g[:, :2].sigmoid_()
        g[:, 2].tanh_()
        g[:, 3].sigmoid_()
        c = torch.mul(g[:, 1], c, out=out[t, :, p:]).addcmul_(g[:, 0], g[:, 2])
        h = torch.mul(torch.tanh(c, out=g[:, 4]), g[:, 3], out=out[t, :, :p])
    return out, gates


def floors(tol: float) -> tuple[float, float]:
    """The TP rule's floors of the gate derivatives: ``σ' ≥ τ(1−τ)``, ``tanh' ≥ 1−(1−τ)²``."""
    return tol * (1 - tol), 1 - (1 - tol) ** 2


@dataclass
class LSTMTape:
    """What the forward pass keeps: inputs, weights, states ``[h, c]`` and the gates of every step
    (from :func:`forward_for_backward`)."""

    x: Tensor  # (T, B, d)
    h0: Tensor  # (B, 2p): [h_0, c_0]
    out: Tensor  # (T, B, 2p): [h_t, c_t]
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    activation: Activation = None
    kernels: object = None  # the compiled module, or None for the pure-PyTorch path
    gates: Tensor = None  # (T, B, 5, p): i, f, g, o, tanh(c_t)
    workspace: object = None  # scratch buffers (a part of an engine.Workspace); set by the engine
    suffix: str = "l0"
    valid: Tensor | None = None  # unused: every rule is linear in λ, padded steps carry λ = 0

    def __post_init__(self):
        if self.gates is None:
            raise ValueError("LSTMTape needs the gates kept by lstm.forward_for_backward")

    @property
    def p(self) -> int:
        return self.weight_hh.shape[1]

    @cached_property
    def c_prev(self) -> Tensor:
        """(T, B, p): ``c_{t-1}``."""
        p = self.p
        return torch.cat([self.h0[:, p:].unsqueeze(0), self.out[:-1, :, p:]])

    @cached_property
    def h_prev(self) -> Tensor:
        """(T, B, p): ``h_{t-1}``."""
        p = self.p
        return torch.cat([self.h0[:, :p].unsqueeze(0), self.out[:-1, :, :p]])

    @property
    def tanh_c(self) -> Tensor:
        """(T, B, p): ``tanh(c_t)``, kept by the forward."""
        return self.gates[:, :, 4]

    @cached_property
    def cell_factor(self) -> Tensor:
        """(T, B, p): ``o⊙(1−tanh²c_t)``, how ``λh_t`` enters the effective cell displacement."""
        return self.gates[:, :, 3] * (1 - self.tanh_c ** 2)

    def gate_scales(self, divided: bool, tol: float = 0.0) -> Tensor:
        """(T, B, 4, p): the factors of ``[λc*, λc*, λc*, λh]`` giving the gates' pre-activation
        displacements: BP's ``[g⊙σ'(i), c_{t-1}⊙σ'(f), i⊙tanh'(g), tanh(c_t)⊙σ'(o)]``, or, with
        ``divided``, the same with each gate derivative divided instead of multiplied, floored
        (σ' at τ(1−τ), tanh' at 1−(1−τ)²)."""
        i, f, g, o = self.gates[:, :, :4].unbind(2)
        di, df, dg, do = i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)
        values = (g, self.c_prev, i, self.tanh_c)
        if not divided:
            return torch.stack([v * d for v, d in zip(values, (di, df, dg, do))], dim=2)
        fs, ft = floors(tol)
        return torch.stack([v / torch.clamp_min(d, fl) for v, d, fl in zip(values, (di, df, dg, do), (fs, fs, ft, fs))],
                           dim=2)

    def recursion(self, divided: bool, mat: Tensor, tol: float = 0.0, keep_adjoints: bool = True) -> Recursion:
        """``λc* = λc_t + o⊙tanh'(c_t)⊙λh_t``; ``λh_{t-1} += [[s_i, s_f, s_g]⊙λc*, s_o⊙λh_t] mat``,
        ``λc_{t-1} += f⊙λc*`` for t = T..1; the scales are :meth:`gate_scales` ``(divided, tol)``,
        ``mat`` (4p, p): ``W_hh`` (BP) or the stacked ``M_kᵀ`` (TP). The compiled loop also writes,
        and returns, BP's pre-activation adjoints of the final ``λ`` (T, B, 4, p) unless
        ``keep_adjoints`` is False."""
        if self.kernels is not None:
            mat, (fs, ft) = mat.contiguous(), floors(tol)
            T, B, p = self.out.shape[0], self.out.shape[1], self.p

            def run(lam):
                adjoints = self.workspace.empty("adjoints", (T, B, 4, p), self.gates) if keep_adjoints \
                    else self.gates.new_empty(0)
                self.kernels.lstm_recursion_(lam, self.gates, self.h0.contiguous(), self.out, mat, divided, fs, ft,
                                             adjoints)
                return adjoints if keep_adjoints else None

            return run
        return self._torch_recursion(self.gate_scales(divided, tol), mat)

    def _torch_recursion(self, scales: Tensor, mat: Tensor) -> Recursion:
        T, B, p = self.out.shape[0], self.out.shape[1], self.p
        kc = self.cell_factor.unbind(0)
        f = self.gates[:, :, 1].unbind(0)
        sc, so = scales[:, :, :3].unbind(0), scales[:, :, 3].unbind(0)
        buf = self.out.new_empty(B, 4, p)
        flat = buf.view(B, 4 * p)
        cstar = self.out.new_empty(B, p)

        def step(t, lam_t, out):
            lh, lc = lam_t[:, :p], lam_t[:, p:]
            torch.addcmul(lc, kc[t - 1], lh, out=cstar)
            torch.mul(sc[t - 1], cstar.unsqueeze(1), out=buf[:, :3])
            torch.mul(so[t - 1], lh, out=buf[:, 3])
            out[:, :p].addmm_(flat, mat)
            out[:, p:].addcmul_(f[t - 1], cstar)

        return lambda lam: propagate(step, lam)

    def adjoint_recursion(self) -> Recursion:
        return self.recursion(False, self.weight_hh)

    def scaled_displacements(self, lam: Tensor, scales: Tensor) -> Tensor:
        """(T, B, 4p): ``[s_i⊙λc*, s_f⊙λc*, s_g⊙λc*, s_o⊙λh_t]`` from the final ``λ`` (T+1, B, 2p)."""
        T, B, _ = self.out.shape
        p = self.p
        lh, lc = lam[1:, :, :p], lam[1:, :, p:]
        cstar = torch.addcmul(lc, self.cell_factor, lh)
        out = torch.empty_like(scales)
        torch.mul(scales[:, :, :3], cstar.unsqueeze(2), out=out[:, :, :3])
        torch.mul(scales[:, :, 3], lh, out=out[:, :, 3])
        return out.view(T, B, 4 * p)

    def preactivation_adjoints(self, lam: Tensor, adjoints: Tensor | None = None) -> Tensor:
        """(T, B, 4p): BP's pre-activation adjoints of the gates for the cotangent ``λ_t`` of the state:
        ``adjoints`` when the recursion that made ``lam`` final returned them (the compiled loop),
        else computed here."""
        if adjoints is not None:
            return adjoints.view(*adjoints.shape[:2], -1)
        return self.scaled_displacements(lam, self.gate_scales(False))

    def directions(self, lam: Tensor, needs, adjoints: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. (3): the cell's vector-Jacobian product over all (x_t, [h_{t-1}, c_{t-1}]) with
        cotangent −λ_t on the whole state ``[h_t, c_t]`` (hence the negations); ``h0`` receives
        −λ_0 (the whole state). Both sides of the pre-activation receive the same adjoints ``G``
        (T·B, 4p): ``W_ih`` gets ``−Gᵀx``, ``W_hh`` ``−Gᵀh_{t-1}``, each bias ``−ΣG``, the input
        ``−G W_ih``; ``adjoints`` as in :meth:`preactivation_adjoints`."""
        need_x, need_h0, need_wih, need_whh, need_bih, need_bhh = (k in needs for k in GRADIENTS)
        T, B, _ = self.out.shape
        rows = self.preactivation_adjoints(lam, adjoints).reshape(T * B, -1)
        grad_x = grad_wih = grad_whh = grad_bih = grad_bhh = None
        if need_x:
            grad_x = (rows @ self.weight_ih).neg_().view(self.x.shape)
        if need_wih:
            grad_wih = (rows.T @ self.x.reshape(T * B, -1)).neg_()
        if need_whh:
            grad_whh = (rows.T @ self.h_prev.reshape(T * B, -1)).neg_()
        bias = rows.sum(0).neg_() if (need_bih and self.bias_ih is not None) or \
            (need_bhh and self.bias_hh is not None) else None
        if need_bih and self.bias_ih is not None:
            grad_bih = bias
        if need_bhh and self.bias_hh is not None:
            grad_bhh = bias.clone() if grad_bih is not None else bias
        return named(grad_x, lam[0].neg() if need_h0 else None, grad_wih, grad_whh, grad_bih, grad_bhh)


Tape = LSTMTape  # the name the engine looks up on a cell module
