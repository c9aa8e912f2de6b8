"""Autograd glue: a TP layer as one ``torch.autograd.Function``, for any cell.

Forward runs the cell's forward kernel without building a graph and keeps only the hidden
states; backward turns the incoming ``grad_output`` / ``grad_h_n`` into displacements
(:mod:`targetprop.engine`) and returns the parameter directions of eq. (3) as the parameters'
gradients, so autograd accumulates them into ``.grad`` like any gradient (optimizers, DDP
all-reduce and gradient accumulation see nothing special). Both passes run with subnormal
floats flushed on the calling thread, the caller's mode restored after (:mod:`targetprop.fpmode`).
Half-precision layers (float16, bfloat16) compute in float32 and cast their results back.

The cell is a module following the protocol of :mod:`targetprop.cells`; the compiled kernels
are chosen by :func:`targetprop.kernels.select_kernels`.
"""
from __future__ import annotations

import torch

from . import engine, fpmode
from .cells import GRADIENTS
from .kernels import select_kernels


NO_DOUBLE_BACKWARD = (
    "a TPRNN/TPGRU layer cannot be differentiated twice: its backward computes the parameters' "
    "directions (the TP direction, or the gradient with rule='bp') and the input's gradient without "
    "an autograd graph, so with create_graph=True (a penalty on a gradient, a Hessian-vector product) "
    "the layer's second-order terms would be silently missing. Use create_graph=False, or "
    "torch.nn.RNN/torch.nn.GRU where second derivatives are needed.")

#: dtypes computed in float32 inside the layer (no half-precision Cholesky; displacements underflow)
HALF = (torch.float16, torch.bfloat16)


class TPFunction(torch.autograd.Function):
    """``(cell, config, grad_enabled, x (T,B,d), h0 (B,p), W_ih, W_hh, b_ih, b_hh) -> (out (T,B,p), h_n (B,p))``.

    ``grad_enabled``: the caller's ``torch.is_grad_enabled()`` (autograd turns grad mode off
    inside ``forward``), so that evaluation keeps nothing for a backward that cannot come."""

    @staticmethod
    def forward(ctx, cell, config, grad_enabled, x, h0, w_ih, w_hh, b_ih, b_hh):
        return guarded_forward(lambda *t: TPFunction._forward(ctx, cell, config, grad_enabled, *t),
                               x, h0, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def _forward(ctx, cell, config, grad_enabled, x, h0, w_ih, w_hh, b_ih, b_hh):
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not (T, B, p) zeros
        ctx.cell, ctx.config, ctx.device = cell, config, x.device.type
        ctx.kernels = select_kernels(config.backend, x, w_hh)
        keep = getattr(cell, "forward_for_backward", None)
        if keep is not None and grad_enabled and any(ctx.needs_input_grad):
            out, *extra = keep(x, h0, w_ih, w_hh, b_ih, b_hh, config.activation, ctx.kernels)
        else:
            out, extra = cell.forward(x, h0, w_ih, w_hh, b_ih, b_hh, config.activation, ctx.kernels), []
        ctx.save_for_backward(x, h0, out, w_ih, w_hh, b_ih, b_hh, *extra)
        return out, out[-1].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        return guarded_backward(ctx.device, lambda *g: TPFunction._backward(ctx, *g), grad_out, grad_hn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn):
        saved = ctx.saved_tensors
        tape = ctx.cell.Tape(*saved[:7], ctx.config.activation, ctx.kernels, *saved[7:])
        tape.workspace = ctx.config.workspace or engine.Workspace()
        lam = engine.displacements(tape, grad_out, grad_hn, ctx.config)
        grads = tape.directions(lam, [k for k, need in zip(GRADIENTS, ctx.needs_input_grad[3:]) if need])
        return (None, None, None, *(grads.get(k) for k in GRADIENTS))


def guarded_forward(run, x, *tensors):
    """``run(x, *tensors) -> (out, h_n)`` with subnormals flushed; half-precision input runs in
    float32 (no half-precision Cholesky; displacements would underflow) and its results are cast
    back (the directions by autograd, to each parameter's dtype)."""
    with fpmode.flushed():
        if x.dtype not in HALF:
            return run(x, *tensors)
        out, h_n = run(*(t.float() if t is not None else None for t in (x, *tensors)))
        return out.to(x.dtype), h_n.to(x.dtype)


def guarded_backward(device: str, run, grad_out, grad_hn):
    """``run(grad_out, grad_hn)`` with subnormals flushed, autocast off and half-precision
    gradients widened; a RuntimeError under ``create_graph=True`` (:data:`NO_DOUBLE_BACKWARD`)."""
    if torch.is_grad_enabled():  # autograd records the backward only when asked to: create_graph=True
        raise RuntimeError(NO_DOUBLE_BACKWARD)
    with fpmode.flushed(), torch.autocast(device, enabled=False):
        return run(*(g.float() if g is not None and g.dtype in HALF else g for g in (grad_out, grad_hn)))
