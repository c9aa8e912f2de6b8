"""Problem builders shared by the layer tests: a seeded float64 layer with its input, initial
state and a linear loss, one backward through it, and the float64 reference's answer for it.

The loss is ``Σ out ⊙ C + h_n ⊙ C_n`` with random ``C``, ``C_n``: every step gets a generic loss
gradient ``g_t`` (``C_t``, plus ``C_n`` at t = T).
"""
from __future__ import annotations

import torch

import reference
from helpers import require
from targetprop import TPGRU, TPRNN

D64 = torch.float64
BACKENDS = ["torch", "cpp"]  # the pure-PyTorch path and the compiled loops
LAYERS = {"rnn": TPRNN, "gru": TPGRU}


def make_problem(nonlinearity="tanh", B=3, T=6, d=2, p=4, bias=True, seed=0, scale=0.6, *, cell="rnn",
                 backend="auto"):
    """``(layer, x, h0, C, Cn)``: a batch-first float64 layer with weights ``~ N(0, scale²/fan_in)``,
    ``x`` (B, T, d), ``h0`` (1, B, p) and the loss weights, all drawn from one generator."""
    if backend == "cpp":
        use_backend(None, backend)
    g = torch.Generator().manual_seed(seed)
    options = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    layer = LAYERS[cell](d, p, bias=bias, batch_first=True, dtype=D64, backend=backend, through_time=False,
                         reg=1.0, tol=1e-3, **options)  # eq. 3 at the paper's r and τ unless a test sets them
    with torch.no_grad():
        for w in layer.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=D64) * scale / w.shape[-1] ** 0.5)
    x = torch.randn(B, T, d, generator=g, dtype=D64)
    h0 = 0.3 * torch.randn(1, B, p, generator=g, dtype=D64)
    C = torch.randn(B, T, p, generator=g, dtype=D64)  # per-step loss weights
    Cn = torch.randn(1, B, p, generator=g, dtype=D64)  # loss on h_n
    return layer, x, h0, C, Cn


def make_gru(B=3, T=6, d=2, p=4, seed=0, scale=0.6, bias=True, backend="auto"):
    return make_problem(B=B, T=T, d=d, p=p, bias=bias, seed=seed, scale=scale, cell="gru", backend=backend)


def run_layer(layer, x, h0, C, Cn):
    """One backward of the linear loss: ``(directions by name, input grad, h0 grad, out, h_n)``."""
    layer.zero_grad(set_to_none=True)
    xg, h0g = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, hn = layer(xg, h0g)
    ((out * C).sum() + (hn * Cn).sum()).backward()
    return {k: w.grad for k, w in layer.named_parameters()}, xg.grad, h0g.grad, out, hn


def loss_gradients(C, Cn) -> list:
    """``g[t] = ∂ℓ/∂h_t`` for t = 1..T (``g[0]`` unused) of the linear loss."""
    T = C.shape[1]
    g = [None] + [C[:, t] for t in range(T)]
    g[T] = g[T] + Cn[0]
    return g


def reference_run(layer, x, h0, C, Cn, rule=None) -> dict:
    """The float64 reference (tests/reference/) for ``layer``'s settings (``rule`` overrides its
    rule): ``{"out", "targets", parameter name, "input", "h0"}``."""
    P = {k: w.detach() for k, w in layer.named_parameters()}
    rule = rule or layer.rule
    inverse = None
    if rule == "learned":
        inverse = {"weight": layer.inverse_weight_hh_l0.detach(), "bias": layer.inverse_bias_l0.detach()}
    return reference.run(layer.cell, rule, P, x, h0[0], loss_gradients(C, Cn),
                         nonlinearity=getattr(layer, "nonlinearity", None), target_step=layer.target_step,
                         reg=layer.reg, tol=layer.tol, through_time=layer.through_time, inverse=inverse,
                         signal_below=layer.signal_below)


def use_backend(layer, backend: str):
    """Set ``layer.backend`` (if a layer is given); skip the test when the compiled loops do not build
    on this machine (helpers.require)."""
    if backend == "cpp":
        require("cpp")
    if layer is not None:
        layer.backend = backend
    return layer
