"""The autograd glue: one ``torch.autograd.Function`` for every layer shape (layers × directions ×
tensor or packed input), for any cell and rule (docs/maths.md, "Stacks").

Forward: layer by layer, each direction a cell run without a graph (a reverse direction on each
sequence reversed within its length, :class:`targetprop.packing.Steps`), the directions' outputs
concatenated, dropout between layers (training only) with the mask kept for the backward.

Backward, from the top layer down, per direction: inject the loss gradient (top layer) and
``h_n``'s gradient (every layer, at its last valid step), plus the displacement ``z`` handed down
from the layer above; the rule runs back in time (:mod:`targetprop.engine`); ``z`` for the layer
below by the rule's step down; then each direction's parameter directions (eq. 3). The
directions are returned as the parameters' gradients, so autograd accumulates them into
``.grad`` like any gradient (optimizers, DDP all-reduce and gradient accumulation see nothing
special). What is returned is checked for NaN/inf in one reduction (``check_finite``).

Both passes run with subnormal floats flushed on the calling thread, the caller's mode restored
after (:mod:`targetprop.fpmode`); half-precision layers compute in float32 and cast back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import engine, fpmode, stability
from .cells import PARAMETERS
from .kernels import select_kernels
from .packing import Steps

NO_DOUBLE_BACKWARD = (
    "a TP layer cannot be differentiated twice: its backward computes the parameters' directions "
    "(the TP direction, or the gradient with rule='bp') and the input's gradient without an "
    "autograd graph, so with create_graph=True (a penalty on a gradient, a Hessian-vector product) "
    "the layer's second-order terms would be silently missing. Use create_graph=False, or "
    "torch.nn's layer where second derivatives are needed.")

#: dtypes computed in float32 inside the layer (no half-precision Cholesky; displacements underflow)
HALF = (torch.float16, torch.bfloat16)


class NonFiniteDirectionError(FloatingPointError):
    """The backward of a TP layer produced NaN or inf in what it hands autograd."""


@dataclass(frozen=True)
class Shape:
    """A layer's stack: layers, directions (1, or 2 for bidirectional), dropout between layers,
    and whether it ran in training mode (dropout applies)."""

    num_layers: int
    directions: int
    hidden_size: int
    dropout: float = 0.0
    training: bool = False
    name: str = "TPRNN"  # the layer's class, for error messages

    def dropping(self, layer: int) -> bool:
        return self.training and self.dropout > 0 and layer < self.num_layers - 1

    def suffix(self, layer: int, direction: int) -> str:
        return f"l{layer}{'_reverse' if direction else ''}"


class RecurrentFunction(torch.autograd.Function):
    """``(cell, settings, shape, workspace, keep, lengths, x (T,B,d), h0 (L·D,B,S·p), *params) ->
    (out (T,B,D·p), h_n (L·D,B,S·p))``, ``S = cell.STATES`` (the state ``[h, c]`` of an LSTM:
    ``out`` holds the ``h`` part); ``params`` four per layer and direction in ``torch.nn``'s
    order (``W_ih, W_hh, b_ih, b_hh``, the biases None without bias); ``lengths`` (B,) or None;
    ``keep``: whether a backward may follow (the caller's grad mode and something requiring grad),
    else nothing is kept: the memory of one layer at a time."""

    @staticmethod
    def forward(ctx, cell, settings, shape, workspace, keep, lengths, x, h0, *params):
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not zeros
        ctx.device = x.device.type
        with fpmode.flushed():
            if x.dtype not in HALF:
                return _forward(ctx, cell, settings, shape, workspace, keep, lengths, x, h0, params)
            wide = [t.float() if t is not None else None for t in params]
            out, h_n = _forward(ctx, cell, settings, shape, workspace, keep, lengths, x.float(), h0.float(), wide)
            return out.to(x.dtype), h_n.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        if torch.is_grad_enabled():  # autograd records the backward only when asked to: create_graph=True
            raise RuntimeError(NO_DOUBLE_BACKWARD)
        grads = (g.float() if g is not None and g.dtype in HALF else g for g in (grad_out, grad_hn))
        with fpmode.flushed(), torch.autocast(ctx.device, enabled=False):
            return (None,) * 6 + _backward(ctx, *grads)


def _forward(ctx, cell, settings, shape, workspace, keep, lengths, x, h0, params):
    T, B, _ = x.shape
    L, D, p = shape.num_layers, shape.directions, shape.hidden_size
    steps = Steps(T, B, lengths, x.device)
    kernels = select_kernels(settings.backend, x, params[1])
    run = cell.forward_for_backward if keep else lambda *a: (cell.forward(*a),)
    inputs, extras, outs, masks, h_n = [], [], [], [], []
    layer_in = x
    for layer in range(L):
        directions = []
        for d in range(D):
            k = layer * D + d
            out, *extra = run(steps.reverse(layer_in) if d else layer_in, h0[k], *params[4 * k:4 * k + 4],
                              settings.activation, kernels)
            if keep:
                extras.append(extra)
                outs.append(out)
            h_n.append(steps.last(out))
            h = out if cell.STATES == 1 else out[..., :p]
            directions.append(steps.reverse(h) if d else h)
        if keep:
            inputs.append(layer_in)  # a reverse direction's input is re-made from it in the backward
        layer_out = torch.cat(directions, -1) if D > 1 else directions[0]
        mask = None
        if shape.dropping(layer):
            mask = torch.empty_like(layer_out).bernoulli_(1 - shape.dropout)  # as torch.nn on a padded tensor
            layer_in = layer_out * mask.div(1 - shape.dropout) if shape.dropout < 1 else layer_out * mask
        else:
            layer_in = layer_out
        if keep:
            masks.append(mask)
    h_n = torch.stack(h_n)
    if not keep:
        return layer_out, h_n
    ctx.cell, ctx.settings, ctx.shape, ctx.workspace, ctx.steps, ctx.kernels = \
        cell, settings, shape, workspace, steps, kernels
    # every tensor the backward reads goes through save_for_backward (autograd's saved-tensor
    # hooks, memory accounting and in-place checks see it; only the small index tensors of
    # ``steps`` are attributes); the counts say how to split it again
    ctx.extra_counts = [len(e) for e in extras]
    ctx.masked = [m is not None for m in masks]
    ctx.save_for_backward(h0, *params, *outs, *inputs, *(t for e in extras for t in e),
                          *(m for m in masks if m is not None))
    return layer_out, h_n


def _unpack(ctx, L: int, D: int):
    """``(h0, params, outs, inputs, extras, masks)`` as :func:`_forward` saved them."""
    saved = iter(ctx.saved_tensors)
    take = lambda n: [next(saved) for _ in range(n)]  # noqa: E731
    h0, params, outs, inputs = next(saved), take(4 * L * D), take(L * D), take(L)
    extras = [take(n) for n in ctx.extra_counts]
    masks = [next(saved) if m else None for m in ctx.masked]
    return h0, params, outs, inputs, extras, masks


def _backward(ctx, grad_out, grad_hn):
    cell, settings, shape, steps = ctx.cell, ctx.settings, ctx.shape, ctx.steps
    L, D, p = shape.num_layers, shape.directions, shape.hidden_size
    h0, params, outs, inputs, extras, masks = _unpack(ctx, L, D)
    needs = ctx.needs_input_grad[6:]
    rule = settings.rule
    shards = engine.data_parallel_shards(settings)
    scale = engine.injection_scale(settings, shards)
    workspace = ctx.workspace if ctx.workspace is not None else engine.Workspace()
    valid = None if steps.lengths is None else steps.valid.to(h0.dtype)
    grad_x, grad_h0 = None, (torch.zeros_like(h0) if needs[1] else None)
    grads = [None] * len(params)
    z = None  # the displacement of this layer's output handed down from above: (T, B, D·p), time order
    for layer in reversed(range(L)):
        tapes, lams, adjoints = [], [], []
        for d in range(D):
            k = layer * D + d
            tape = cell.Tape(steps.reverse(inputs[layer]) if d else inputs[layer], h0[k], outs[k],
                             *params[4 * k:4 * k + 4], settings.activation, ctx.kernels, *extras[k])
            # scratch per direction, not per layer: a layer's buffers are dead before the one below starts
            tape.workspace, tape.valid, tape.suffix = workspace.part(d), valid, shape.suffix(layer, d)
            g = None
            if layer == L - 1 and grad_out is not None:
                g = grad_out[..., d * p:(d + 1) * p] if D > 1 else grad_out
                g = steps.reverse(g) if d else g
            lam = engine.inject(g, scale, tape.out, tape.workspace)
            if grad_hn is not None:
                steps.add_at_last_(lam, grad_hn[k], -scale)
            if z is not None:
                zd = z[..., d * p:(d + 1) * p] if D > 1 else z
                lam[1:, :, :p].add_(steps.reverse(zd) if d else zd)
            adjoints.append(engine.propagate_targets(tape, lam, settings))
            tapes.append(tape)
            lams.append(lam)
        if layer > 0:
            z = rule.down(tapes, lams, adjoints, settings, steps, layer, inputs[layer], masks[layer - 1],
                          shape.dropout)
        for d, (tape, lam, adj) in enumerate(zip(tapes, lams, adjoints)):
            k = layer * D + d
            want = [n for i, n in enumerate(PARAMETERS) if needs[2 + 4 * k + i]]
            want += ["h0"] if needs[1] else []
            want += ["input"] if layer == 0 and needs[0] else []
            got = tape.directions(lam, want, engine.through_time_(tape, lam, settings, adj))
            grads[4 * k:4 * k + 4] = [got.get(n) for n in PARAMETERS]
            if needs[1]:
                grad_h0[k] = got["h0"]
            if "input" in got:
                gi = steps.reverse(got["input"]) if d else got["input"]
                grad_x = gi if grad_x is None else grad_x.add_(gi)
    if shards > 1:  # each process's share of a sum over the whole batch (engine.injection_scale)
        for g in (grad_x, grad_h0, *grads):
            if g is not None:
                g.mul_(shards)
    if settings.signal_below == "gradient" and rule.makes_targets:
        # eq. 3's input and h0 gradients are those of γ_h-sized target losses: handed below in BP's units
        for g in (grad_x, grad_h0):
            if g is not None:
                g.div_(settings.target_step)
    if settings.check_finite:
        _check_finite(shape, settings, grad_x, grad_h0, grads)
    return (grad_x, grad_h0, *grads)


def _check_finite(shape: Shape, settings, grad_x, grad_h0, grads) -> None:
    """One reduction over everything returned; on NaN/inf, an error naming where and what to try."""
    named = [("the input's gradient", grad_x), ("h0's gradient", grad_h0)]
    named += [(f"{PARAMETERS[i % 4]}_{shape.suffix(*divmod(i // 4, shape.directions))}", g)
              for i, g in enumerate(grads)]
    present = [(n, g) for n, g in named if g is not None]
    if not present or bool(torch.stack([g.sum() for _, g in present]).isfinite().all()):
        return
    bad = [n for n, g in present if not bool(torch.isfinite(g).all())] or [n for n, _ in present]
    rule = settings.rule.name
    hint = ("a gradient that overflowed (saturated units and diverging weights; try a smaller learning "
            "rate or gradient clipping)") if not settings.rule.makes_targets else (
        f"usually saturated units (|h| near the activation's bounds, where eq. 2 divides by a' ≥ the floor "
        f"set by tol) or an ill-conditioned inverse (reg too small){_gain_hint(settings)}; try "
        f"{_remedies(settings)}")
    raise NonFiniteDirectionError(
        f"{shape.name}(rule={rule!r}, reg={settings.reg:g}, tol={settings.tol:g}, "
        f"target_step={settings.target_step:g}): the backward produced NaN/inf in {', '.join(bad)}; {hint}. "
        "check_finite=False lets it through.")


def _remedies(settings) -> str:
    """What to try, leaving out what the settings already do."""
    tries = ["reg=10" if settings.reg < 10 else f"a larger reg (e.g. {10 * settings.reg:g})"]
    if settings.tol < 0.1:
        tries.append("tol=0.1")
    tries.append("a smaller learning rate or target_step")
    if not settings.through_time:
        tries.append("through_time=True")
    return ", ".join(tries[:-1]) + ", or " + tries[-1]


def _gain_hint(settings) -> str:
    """Where the rule bounds its step back (the Elman rules), how much one step can amplify the
    targets at these settings."""
    gain = settings.rule.step_gain_bound(settings)
    if gain is None or gain <= 1:
        return ""
    name = settings.activation.name
    return (f"; at these settings one step of eq. 2 back in time can multiply a displacement by up to "
            f"{gain:.3g} (1/(2√reg·a'_min(tol))), so over a long sequence the targets can overflow; "
            f"{_contraction(settings.tol, name)} (docs/maths.md, \"Why long runs overflow\")")


def _contraction(tol: float, name: str) -> str:
    reg = stability.contractive_reg(tol, name)
    if math.isinf(reg):
        return f"no reg makes a step a contraction at tol={tol:g}"
    return f"with tol={tol:g}, reg ≥ {reg:.3g} makes every step a contraction"
