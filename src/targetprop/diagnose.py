"""Why TP learns or does not: its directions against BP's gradient, and how far back its targets reach.

On one fixed batch, for each rule asked (``linearized``, ``linearized-through-time``, ``bp``, …),
:func:`diagnose` runs one forward and backward of a copy of the model and reports:

* ``cosine_with_bp`` {rule: {parameter: c}}: cosine of the rule's direction with BP's gradient;
* ``norm_ratio`` {rule: {parameter: ρ}}: its norm over ``s·‖BP gradient‖``, ``s = γ_h`` for the
  rules that scale the injected gradients by it (1 for ``bp``): eq. 3's step on the recurrent
  weights is ``γ_θ·γ_h`` times the direction, so ρ = 1 is "BP's step size";
* ``displacement_norm`` {rule: [d_0, …, d_{T-1}]}: ``d_k`` the batch mean of ``‖λ_{T−k}‖``, the
  displacement of the state k steps before the last (eqs. 1–2, before any through-time pass);
  ``bp_adjoint_norm`` the same for BP's adjoint (for an LSTM, of the whole state ``[h, c]``);
* ``horizon`` {rule: {"1e-6": k, "zero": k | None}}: the first k where ``d_k < 10⁻⁶ d_0``, and the
  first where it is exactly 0 (None: never);
* ``last_step_share``, ``last10_share`` {rule: s}: how much of the ``W_hh`` direction ``D`` comes
  from the displacements of the last step (last 10 steps), ``⟨D_S, D⟩ / ‖D‖²`` with ``D_S`` the
  direction computed from those displacements alone (directions are linear in them).

For an orthogonal ``W_hh``, eq. 2 multiplies a displacement by about ``1/(1+r)`` per step back
(times ``1/a' ≥ 1``), so the horizon is about ``ln(10⁶)/ln(1+r)`` steps (docs/maths.md).

This module measures only; printing, writing and plotting a result is
:mod:`targetprop.experiments.diagnose_report`'s, and a run's ``diagnostics.csv``
:mod:`targetprop.training.diagnostics`'.
"""
from __future__ import annotations

import copy

from torch import Tensor, nn

from . import engine

#: a rule name, or a rule name + THROUGH_TIME for the authors' through-time variant
THROUGH_TIME = "-through-time"
ZERO_RATIO = 1e-6


def rule_settings(name: str) -> tuple[str, bool]:
    """``("linearized", True)`` for ``"linearized-through-time"``; ``(name, False)`` otherwise."""
    return (name[: -len(THROUGH_TIME)], True) if name.endswith(THROUGH_TIME) else (name, False)


def default_rules(rule: str) -> list[str]:
    """The layer's own rule, its through-time variant and ``bp``."""
    return ["bp"] if rule == "bp" else [rule, rule + THROUGH_TIME, "bp"]


def _run(model: nn.Module, layer: str, x: Tensor, y: Tensor, loss_fn, name: str):
    """(directions of the parameters of the submodule ``layer``, the recorded (tape, config, λ))
    for rule ``name``."""
    model = copy.deepcopy(model)  # a learned rule trains its reverse layer in the backward
    layer = dict(model.named_modules())[layer]
    layer.rule, layer.through_time = rule_settings(name)
    model.zero_grad(set_to_none=True)
    with engine.recording() as records:
        loss_fn(model(x), y).backward()
    if len(records) != 1:
        raise ValueError(f"diagnose needs exactly one TP layer in the model, found {len(records)} backward(s)")
    return {k: p.grad.detach().clone() for k, p in layer.named_parameters()}, records[0]


def _whh_direction(record, keep_from: int) -> Tensor:
    """The ``W_hh`` direction from the displacements of steps ``keep_from..T`` alone."""
    tape, config, lam = record
    part = lam.clone()
    part[:keep_from].zero_()
    engine.through_time_(tape, part, config)
    return tape.directions(part, ("weight_hh",))["weight_hh"]


def _shares(record, steps: tuple[int, ...]) -> list[float]:
    """For each count in ``steps``: the share ``⟨D_S, D⟩/‖D‖²`` of the last that many steps."""
    T = record[2].shape[0] - 1
    full = _whh_direction(record, 1).flatten()
    denom = full.dot(full).item()
    if not denom:
        return [float("nan")] * len(steps)
    return [_whh_direction(record, max(1, T - k + 1)).flatten().dot(full).item() / denom for k in steps]


def _steps_back_norms(lam: Tensor) -> list[float]:
    """``d_k`` = batch mean of ‖λ_{T−k}‖, k = 0..T−1."""
    return lam[1:].double().norm(dim=-1).mean(-1).flip(0).tolist()


def _horizon(norms: list[float]) -> dict:
    start = norms[0]
    below = next((k for k, d in enumerate(norms) if d < ZERO_RATIO * start), None)
    zero = next((k for k, d in enumerate(norms) if d == 0.0), None)
    return {"1e-6": below, "zero": zero}


def _cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    n = a.norm().item() * b.norm().item()
    return min(1.0, max(-1.0, a.dot(b).item() / n)) if n else float("nan")  # rounding can pass ±1


def diagnose(model: nn.Module, x: Tensor, y: Tensor, loss_fn, rule_names: list[str], layer: str = "rnn") -> dict:
    """The diagnostics of the module docstring for ``model`` (whose TP layer is the submodule
    ``layer``) on the batch ``(x, y)`` with ``loss_fn(model(x), y)``; ``model`` is not changed."""
    target = dict(model.named_modules()).get(layer)
    if target is not None and (getattr(target, "num_layers", 1) != 1 or getattr(target, "bidirectional", False)):
        raise ValueError(f"diagnose needs a one-layer, one-direction TP layer; {layer!r} has "
                         f"num_layers={target.num_layers}, bidirectional={target.bidirectional}")
    names = list(dict.fromkeys([*rule_names, "bp"]))
    runs = {name: _run(model, layer, x, y, loss_fn, name) for name in names}
    bp_grads = runs["bp"][0]
    out = {k: {} for k in ("cosine_with_bp", "norm_ratio", "displacement_norm", "horizon", "last_step_share",
                           "last10_share")}
    for name in rule_names:
        grads, record = runs[name]
        config = record[1]
        scale = engine.injection_scale(config)
        out["cosine_with_bp"][name] = {k: _cosine(g, bp_grads[k]) for k, g in grads.items()}
        out["norm_ratio"][name] = {k: g.norm().item() / (scale * bp_grads[k].norm().item())
                                   if bp_grads[k].norm().item() else float("nan") for k, g in grads.items()}
        norms = _steps_back_norms(record[2])
        out["displacement_norm"][name] = norms
        out["horizon"][name] = _horizon(norms)
        out["last_step_share"][name], out["last10_share"][name] = _shares(record, (1, 10))
    out["bp_adjoint_norm"] = _steps_back_norms(runs["bp"][1][2])
    return out
