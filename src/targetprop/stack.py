"""Stacked, bidirectional and variable-length TP layers: one autograd Function over every layer
and direction, because targets, not gradients, go down the stack (docs/maths.md, "Stacks").

Forward: layer by layer, each direction a cell run (a reverse direction on each sequence reversed
within its length, :class:`targetprop.packing.Steps`), the directions' outputs concatenated,
dropout between layers (training only) with the mask kept for the backward.

Backward, from the top layer down: each direction's displacements are injected from the loss
gradient (top layer) and ``h_n``'s gradient (every layer, at its last valid step), plus the
displacement ``z`` handed down from the layer above (no γ_h); the rule runs back in time; ``z``
for the layer below is the regularized inverse of this layer's whole input map over both
directions (``bp``: its adjoint); then each direction's parameter directions (eq. 3) from its
displacements (``through_time``: from its local losses back-propagated through its recurrence).
A one-layer, one-direction module on a padded tensor does not come here (:mod:`targetprop.function`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import engine, rules
from .cells import PARAMETERS
from .function import guarded_backward, guarded_forward
from .inverse import inverse_operator
from .kernels import select_kernels
from .packing import Steps


@dataclass(frozen=True)
class StackSpec:
    num_layers: int
    directions: int  # 1, or 2 for bidirectional
    dropout: float  # between layers, when training
    training: bool

    def dropping(self, layer: int) -> bool:
        return self.training and self.dropout > 0 and layer < self.num_layers - 1


class StackFunction(torch.autograd.Function):
    """``(cell, config, spec, grad_enabled, lengths, x (T,B,d), h0 (L·D,B,p), *params) ->
    (out (T,B,D·p), h_n (L·D,B,p))``; ``params`` four per layer and direction in ``torch.nn``'s
    order (``W_ih, W_hh, b_ih, b_hh``, the biases None without bias); ``lengths`` (B,) or None."""

    @staticmethod
    def forward(ctx, cell, config, spec, grad_enabled, lengths, x, h0, *params):
        ctx.device = x.device.type
        return guarded_forward(lambda x, h0, *w: _forward(ctx, cell, config, spec, grad_enabled, lengths, x, h0, w),
                               x, h0, *params)

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        return (None,) * 5 + guarded_backward(ctx.device, lambda *g: _backward(ctx, *g), grad_out, grad_hn)


def _forward(ctx, cell, config, spec, grad_enabled, lengths, x, h0, params):
    ctx.set_materialize_grads(False)
    T, B, _ = x.shape
    L, D = spec.num_layers, spec.directions
    steps = Steps(T, B, lengths, x.device)
    kernels = select_kernels(config.backend, x, params[1])
    backward = grad_enabled and any(ctx.needs_input_grad)  # else keep nothing: memory of one layer at a time
    keep = getattr(cell, "forward_for_backward", None) if backward else None
    inputs, extras, outs, masks, h_n = [], [], [], [], []
    layer_in = x
    for layer in range(L):
        directions = []
        for d in range(D):
            k = layer * D + d
            x_in = steps.reverse(layer_in) if d else layer_in
            w = params[4 * k:4 * k + 4]
            if keep is not None:
                out, *extra = keep(x_in, h0[k], *w, config.activation, kernels)
            else:
                out, extra = cell.forward(x_in, h0[k], *w, config.activation, kernels), []
            if backward:
                extras.append(extra)
                outs.append(out)
            h_n.append(steps.last(out))
            directions.append(steps.reverse(out) if d else out)
        if backward:
            inputs.append(layer_in)  # a reverse direction's input is re-made from it in the backward
        layer_out = torch.cat(directions, -1) if D > 1 else directions[0]
        mask = None
        if spec.dropping(layer):
            mask = torch.empty_like(layer_out).bernoulli_(1 - spec.dropout)  # as torch.nn on a padded tensor
            layer_in = layer_out * mask.div(1 - spec.dropout) if spec.dropout < 1 else layer_out * mask
        else:
            layer_in = layer_out
        if backward:
            masks.append(mask)
    if not backward:
        return layer_out, torch.stack(h_n)
    ctx.cell, ctx.config, ctx.spec, ctx.steps, ctx.kernels = cell, config, spec, steps, kernels
    # every tensor of the run the backward reads goes through save_for_backward (autograd's
    # saved-tensor hooks, memory accounting and in-place checks see it; only the small index
    # tensors of ``steps`` are attributes); the counts say how to split it again
    ctx.extra_counts = [len(e) for e in extras]
    ctx.masked = [m is not None for m in masks]
    ctx.save_for_backward(h0, *params, *outs, *inputs, *(t for e in extras for t in e),
                          *(m for m in masks if m is not None))
    return layer_out, torch.stack(h_n)


def _unpack(ctx, L: int, D: int):
    """``(h0, params, outs, inputs, extras, masks)`` as :func:`_forward` saved them (``inputs``
    one per layer, in time order)."""
    saved = iter(ctx.saved_tensors)
    take = lambda n: [next(saved) for _ in range(n)]  # noqa: E731
    h0, params, outs, inputs = next(saved), take(4 * L * D), take(L * D), take(L)
    extras = [take(n) for n in ctx.extra_counts]
    masks = [next(saved) if m else None for m in ctx.masked]
    return h0, params, outs, inputs, extras, masks


def _backward(ctx, grad_out, grad_hn):
    cell, config, spec, steps = ctx.cell, ctx.config, ctx.spec, ctx.steps
    L, D = spec.num_layers, spec.directions
    h0, params, outs, inputs, extras, masks = _unpack(ctx, L, D)
    p = h0.shape[-1]
    needs = ctx.needs_input_grad[5:]
    rule = rules.get_rule(cell.NAME, config.rule)
    scale = engine.injection_scale(config)
    workspace = config.workspace or engine.Workspace()
    valid = None if steps.lengths is None else steps.valid.to(h0.dtype)
    grad_x, grad_h0 = None, (torch.zeros_like(h0) if needs[1] else None)
    grads = [None] * len(params)
    z = None  # the displacement of this layer's output handed down from above: (T, B, D·p), time order
    for layer in reversed(range(L)):
        tapes, lams = [], []
        for d in range(D):
            k = layer * D + d
            x_in = steps.reverse(inputs[layer]) if d else inputs[layer]
            tape = cell.Tape(x_in, h0[k], outs[k], *params[4 * k:4 * k + 4], config.activation,
                             ctx.kernels, *extras[k])
            # scratch per direction, not per layer: a layer's buffers are dead before the one below starts
            tape.workspace, tape.valid = workspace.part(d), valid
            tape.suffix = f"l{layer}{'_reverse' if d else ''}"
            g = None
            if layer == L - 1 and grad_out is not None:
                g = grad_out[..., d * p:(d + 1) * p]
                g = steps.reverse(g) if d else g
            lam = engine.inject(g, None, scale, tape.out, tape.workspace)
            if grad_hn is not None:
                steps.add_at_last_(lam, grad_hn[k], -scale)
            if z is not None:
                zd = z[..., d * p:(d + 1) * p]
                lam[1:].add_(steps.reverse(zd) if d else zd)
            rule.prepare(tape, config)(lam)
            engine.record(tape, config, lam)
            tapes.append(tape)
            lams.append(lam)
        if layer > 0:
            z = _down(rule, config, spec, steps, tapes, lams, layer, inputs[layer], masks[layer - 1])
        for d, (tape, lam) in enumerate(zip(tapes, lams)):
            k = layer * D + d
            want = [n for i, n in enumerate(PARAMETERS) if needs[2 + 4 * k + i]]
            want += ["h0"] if needs[1] else []
            want += ["input"] if layer == 0 and needs[0] else []
            got = tape.directions(engine.through_time_(tape, lam, config), want)
            grads[4 * k:4 * k + 4] = [got.get(n) for n in PARAMETERS]
            if needs[1]:
                grad_h0[k] = got["h0"]
            if "input" in got:
                gi = steps.reverse(got["input"]) if d else got["input"]
                grad_x = gi if grad_x is None else grad_x.add_(gi)
    return (grad_x, grad_h0, *grads)


def _down(rule, config, spec, steps, tapes, lams, layer: int, layer_in: Tensor, mask: Tensor | None) -> Tensor:
    """``z`` (T, B, D·p): the displacement of layer ``layer − 1``'s output from layer ``layer``'s
    displacements, by the joint ridge solve over both directions (docs/maths.md, "Stacks")."""
    ys = [rule.input_displacement(tape, lam, config) for tape, lam in zip(tapes, lams)]
    y = torch.cat([ys[0]] + [steps.reverse(v) for v in ys[1:]], -1)
    w = torch.cat([tape.weight_ih for tape in tapes]) if len(tapes) > 1 else tapes[0].weight_ih
    T, B, _ = y.shape
    flat = y.view(T * B, -1)
    if rule.input_map == "adjoint":
        z = flat @ w
    else:
        name = f"[weight_ih_l{layer}; weight_ih_l{layer}_reverse]" if len(tapes) > 1 else f"weight_ih_l{layer}"
        z = flat @ inverse_operator(w, config.reg, name).T
        if rule.input_map == "direct":
            z.sub_(layer_in.reshape(T * B, -1))
    z = steps.mask_(z.view(T, B, -1))
    if mask is not None:
        # x = o ⊙ m/(1−q): bp multiplies by m/(1−q); TP inverts it on the kept units, o = x(1−q)
        q = spec.dropout
        factor = (1 / (1 - q) if q < 1 else 0.0) if rule.input_map == "adjoint" else 1 - q
        z.mul_(mask).mul_(factor)
    return z
