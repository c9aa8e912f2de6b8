"""The float64 reference of a whole layer: stacks, directions, dropout between layers and
variable lengths (docs/maths.md, "Stacks"), for every cell and rule; a one-layer, one-direction
problem is this at ``num_layers = directions = 1``.

Straight loops over layers, directions and steps, from the cells' formulas (``elman.py``,
``gru.py``, ``lstm.py``) and :mod:`targets`; explicit inverses by solve; autograd only for
Jacobian products of the written-out steps and for eq. (3)'s local losses. Nothing of the
library is used.

* Forward: each layer's directions run on its input (the reverse one on the input reversed), the
  directions' ``h`` concatenated, dropout ``o ⊙ m/(1−q)`` between layers.
* Backward, top layer down, per direction: ``λ_t`` receives ``−γ g_t`` (top layer), ``−γ ∂ℓ/∂s_T``
  (every layer's ``h_n``) and the displacement ``z`` handed down from the layer above (no second
  ``γ``); the rule's ``R`` runs back in time; then ``z`` for the layer below: for ``bp`` the
  input's adjoint ``Σ_d J_xᵀ λ``, for a TP rule the ridge solve ``min_z ‖z Wᵀ − y‖² + r‖z‖²`` of
  the directions' input displacements ``y`` jointly (``W`` both directions' ``W_ih`` stacked;
  ``direct``'s ``y`` is a target, so ``z`` subtracts the input), through dropout ``z ⊙ m·(1−q)``
  for TP and ``z ⊙ m/(1−q)`` for ``bp``; eq. (3) per layer and direction.
* ``γ = 1`` for ``bp`` (its displacements are BP's adjoints and ``through_time`` does not apply to
  it); ``signal_below="gradient"``: a TP rule's input and ``h0`` directions divided by ``γ``.
* Variable lengths: each sequence run alone to its own length, the parameter directions summed
  over sequences, the rest put back in its column (zeros at padded steps).
"""
from __future__ import annotations

import torch

from . import elman, gru, lstm
from .targets import displacements, local_directions, states, through_time_directions, vjp

CELLS = {"rnn": elman, "gru": gru, "lstm": lstm}
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def suffix(layer: int, direction: int) -> str:
    return f"_l{layer}{'_reverse' if direction else ''}"


def one(P: dict, layer: int, direction: int) -> dict:
    """One layer and direction's parameters under layer 0's names (what the cell modules read)."""
    s = suffix(layer, direction)
    return {f"{n}_l0": P[n + s] for n in NAMES if P.get(n + s) is not None}


def ridge(w, reg: float):
    """``(WᵀW + rI)⁻¹Wᵀ`` by a plain solve."""
    k = w.shape[1]
    return torch.linalg.solve(w.T @ w + reg * torch.eye(k, dtype=w.dtype), w.T)


def _flip(v, d):
    return v.flip(0) if d else v


def run(cell: str, rule: str, P: dict, x, h0, g_out, g_hn, *, num_layers: int = 1, directions: int = 1,
        nonlinearity: str = "tanh", reg: float, target_step: float, tol: float, through_time: bool = False,
        signal_below: str = "gradient", inverse: dict | None = None, masks=None, dropout: float = 0.0,
        lengths=None) -> dict:
    """The layer's outputs and directions for the linear loss ``⟨g_out, out⟩ + ⟨g_hn, h_n⟩``.

    ``P``: torch.nn's names (``weight_ih_l1_reverse``, …), biases absent or None; ``x`` (T, B, d)
    time-major; ``h0`` and ``g_hn`` (L·D, B, S·p) whole states (``[h, c]`` for the LSTM);
    ``g_out`` (T, B, D·p); ``masks[l]`` (T, B, D·p) the dropout mask after layer ``l`` or None;
    ``lengths`` (B,) or None. Returns ``{"out", "h_n", "input", "h0", "states", name: direction}``,
    ``states[(l, d)]`` (T, B, S·p) in that direction's time order (tensor input only)."""
    kw = dict(num_layers=num_layers, directions=directions, nonlinearity=nonlinearity, reg=reg,
              target_step=target_step, tol=tol, through_time=through_time, signal_below=signal_below,
              inverse=inverse, dropout=dropout)
    masks = list(masks) if masks is not None else [None] * num_layers
    if lengths is not None:
        return _by_sequence(cell, rule, P, x, h0, g_out, g_hn, masks, [int(n) for n in lengths], kw)
    return _run(cell, rule, P, x, h0, g_out, g_hn, masks=masks, **kw)


def _by_sequence(cell, rule, P, x, h0, g_out, g_hn, masks, lengths, kw) -> dict:
    T, B = x.shape[:2]
    result = None
    for b, n in enumerate(lengths):
        cut = lambda v: v[:n, b:b + 1]  # noqa: E731
        one_seq = _run(cell, rule, P, cut(x), h0[:, b:b + 1], cut(g_out), g_hn[:, b:b + 1],
                       masks=[cut(m) if m is not None else None for m in masks], **kw)
        if result is None:
            result = {"out": x.new_zeros(T, B, one_seq["out"].shape[-1]), "input": torch.zeros_like(x),
                      "h_n": torch.zeros_like(h0), "h0": torch.zeros_like(h0)}
            result.update({k: torch.zeros_like(v) for k, v in one_seq.items() if k in P})
        result["out"][:n, b:b + 1] = one_seq["out"]
        result["input"][:n, b:b + 1] = one_seq["input"]
        result["h_n"][:, b:b + 1] = one_seq["h_n"]
        result["h0"][:, b:b + 1] = one_seq["h0"]
        for k in P:
            if k in one_seq:
                result[k] = result[k] + one_seq[k]
    return result


def _run(cell, rule, P, x, h0, g_out, g_hn, *, num_layers, directions, nonlinearity, reg, target_step, tol,
         through_time, signal_below, inverse, masks, dropout) -> dict:
    module, L, D, q = CELLS[cell], num_layers, directions, dropout
    p = h0.shape[-1] // module.STATES
    T = x.shape[0]
    Ps = {(l, d): one(P, l, d) for l in range(L) for d in range(D)}
    step = {k: module.stepper(Pk, nonlinearity) for k, Pk in Ps.items()}

    # forward: each layer's input and each direction's states s_0..s_T (its own time order)
    inputs, ss, layer_in = [], {}, x
    for l in range(L):
        inputs.append(layer_in)
        outs = []
        for d in range(D):
            ss[(l, d)] = states(step[(l, d)], _flip(layer_in, d), h0[l * D + d], Ps[(l, d)])
            outs.append(_flip(torch.stack(ss[(l, d)][1:])[..., :p], d))
        layer_out = torch.cat(outs, -1)
        layer_in = layer_out * masks[l] / (1 - q) if masks[l] is not None else layer_out

    gamma = 1.0 if rule == "bp" else target_step
    result = {"out": layer_out, "h_n": torch.stack([ss[(l, d)][T] for l in range(L) for d in range(D)]),
              "states": {k: torch.stack(v[1:]) for k, v in ss.items()},
              "input": torch.zeros_like(x), "h0": torch.zeros_like(h0)}
    z = None  # the displacement of this layer's output handed down from above, (T, B, D·p)
    for l in reversed(range(L)):
        lams = {}
        for d in range(D):
            k = l * D + d
            injected = [torch.zeros_like(h0[k]) for _ in range(T + 1)]
            for t in range(1, T + 1):
                if l == L - 1:
                    injected[t][:, :p] -= gamma * _flip(g_out[..., d * p:(d + 1) * p], d)[t - 1]
                if z is not None:
                    injected[t][:, :p] += _flip(z[..., d * p:(d + 1) * p], d)[t - 1]
            injected[T] = injected[T] - gamma * g_hn[k]
            R = module.rule(rule, Ps[(l, d)], nonlinearity, reg=reg, tol=tol, inverse=inverse)
            lams[d] = displacements(R, _flip(inputs[l], d), ss[(l, d)], injected)
        if l > 0:
            z = _down(module, rule, Ps, step, inputs[l], ss, lams, l, D, nonlinearity, reg, tol)
            if masks[l - 1] is not None:
                z = z * masks[l - 1] * ((1 - q) if rule != "bp" else 1 / (1 - q))
        for d in range(D):
            k, xin, lam = l * D + d, _flip(inputs[l], d), lams[d]
            v = [s + lt for s, lt in zip(ss[(l, d)], lam)]
            if through_time and rule != "bp":
                got = through_time_directions(step[(l, d)], Ps[(l, d)], xin, h0[k], v)
            else:
                got = {**local_directions(step[(l, d)], Ps[(l, d)], xin, ss[(l, d)], v), "h0": -lam[0]}
            for name in Ps[(l, d)]:
                result[name[:-len("_l0")] + suffix(l, d)] = got[name]
            result["h0"][k] = got["h0"]
            if l == 0:
                result["input"] = result["input"] + _flip(got["input"], d)
    if rule != "bp" and signal_below == "gradient":
        result["input"], result["h0"] = result["input"] / gamma, result["h0"] / gamma
    return result


def _down(module, rule, Ps, step, layer_in, ss, lams, l, D, nonlinearity, reg, tol):
    """``z`` (T, B, D_in) for layer ``l − 1``'s output from layer ``l``'s final displacements."""
    T = layer_in.shape[0]
    if rule == "bp":
        z = 0
        for d in range(D):
            xin, s, lam, P = _flip(layer_in, d), ss[(l, d)], lams[d], Ps[(l, d)]
            z = z + _flip(torch.stack([vjp(lambda xt: step[(l, d)](xt, s[t], P), xin[t], lam[t + 1])
                                       for t in range(T)]), d)
        return z
    ys = []
    for d in range(D):
        Y = module.input_displacement(rule, Ps[(l, d)], nonlinearity, tol=tol)
        xin, s, lam = _flip(layer_in, d), ss[(l, d)], lams[d]
        ys.append(_flip(torch.stack([Y(xin[t], s[t], s[t + 1], lam[t + 1]) for t in range(T)]), d))
    w = torch.cat([Ps[(l, d)]["weight_ih_l0"] for d in range(D)])
    z = torch.cat(ys, -1) @ ridge(w, reg).T
    return z - layer_in if rule in module.INPUT_TARGET_RULES else z
