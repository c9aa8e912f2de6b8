"""The problem table: every cell × every rule it registers × every activation × both backends
(× through time, × bias) against the float64 references of tests/reference/, at relative error
≤ 1e-10; then the facts that tie the rules to torch.nn's own autograd."""
import zlib

import pytest
import torch

from helpers import assert_rel
from problems import BACKENDS, D64, make_problem, reference_run, run_layer, use_backend
from targetprop import rules
from targetprop.activations import ACTIVATIONS

CELL_SCALE = {"rnn": 0.6, "gru": 1.5}  # GRU weights large enough that its gates are far from ½


def table():
    for cell in ("rnn", "gru"):
        for rule in rules.available(cell):
            for act in sorted(ACTIVATIONS) if cell == "rnn" else ["gates"]:
                for through_time in (False,) if rule == "bp" else (False, True):
                    for bias in (True, False):
                        yield cell, rule, act, through_time, bias


def table_problem(cell, rule, act, through_time, bias, backend):
    """The table's problem for one row: its own seed, γ_h = 0.05, r = 0.7, τ = 0.02 (wide enough
    that some units or gates are clamped by π), and for ``learned`` a random reverse layer, not trained."""
    seed = zlib.crc32(f"{cell}/{rule}/{act}/{through_time}/{bias}".encode()) % 1000
    layer, x, h0, C, Cn = make_problem(act if cell == "rnn" else None, bias=bias, seed=seed,
                                       scale=CELL_SCALE[cell], cell=cell)
    use_backend(layer, backend)
    layer.rule, layer.reg, layer.target_step, layer.tol, layer.through_time = rule, 0.7, 0.05, 0.02, through_time
    if rule == "learned":
        g = torch.Generator().manual_seed(seed + 1)
        layer.inverse_lr = 0.0  # the reverse layer stays as drawn: the targets are a pure function of it
        with torch.no_grad():
            layer.inverse_weight_hh_l0.copy_(torch.randn(4, 4, generator=g, dtype=D64) * 0.5)
            layer.inverse_bias_l0.copy_(torch.randn(4, generator=g, dtype=D64) * 0.3)
    return layer, x, h0, C, Cn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,rule,act,through_time,bias", list(table()))
def test_every_rule_matches_its_float64_reference(cell, rule, act, through_time, bias, backend):
    layer, x, h0, C, Cn = table_problem(cell, rule, act, through_time, bias, backend)
    grads, gx, gh0, out, _ = run_layer(layer, x, h0, C, Cn)
    ref = reference_run(layer, x, h0, C, Cn)
    where = f"{cell}/{rule}/{act}/tt={through_time}/bias={bias}/{backend}"
    assert_rel(out, ref["out"], where=where + " forward")
    assert set(grads) == {k for k in ref if k.endswith("_l0")}
    for k in grads:
        assert_rel(grads[k], ref[k], where=f"{where} {k}")
    assert_rel(gx, ref["input"], where=where + " input grad")
    assert_rel(gh0[0], ref["h0"], where=where + " h0 grad")
    assert grads["weight_hh_l0"].abs().max() > 1e-6  # the targets are not trivial


def test_the_table_covers_every_registered_rule_and_activation():
    """Rows come from the registries, so a new rule or activation enters the table (and fails
    there until tests/reference/ knows it)."""
    rows = list(table())
    elman = {("rnn", r) for r in ("bp", "linearized", "difference", "direct", "learned")}
    assert {(c, r) for c, r, *_ in rows} == elman | {("gru", "bp"), ("gru", "linearized")}
    assert {a for c, _, a, *_ in rows if c == "rnn"} == {"tanh", "sigmoid", "identity", "relu"}


def test_rule_is_not_bp():
    """The TP rules give directions really different from γ_h × BP on a generic problem."""
    layer, x, h0, C, Cn = make_problem("tanh", T=10)
    layer.rule = "bp"
    bp = run_layer(layer, x, h0, C, Cn)[0]["weight_hh_l0"]
    layer.rule, layer.reg, layer.target_step = "linearized", 1.0, 1e-2
    tp = run_layer(layer, x, h0, C, Cn)[0]["weight_hh_l0"] / 1e-2
    assert (tp - bp).norm() / bp.norm() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_bp_rule_equals_torch_rnn_autograd(act, batch_first, with_h0, backend):
    layer, x, h0, C, Cn = make_problem(act, T=9, seed=3)
    use_backend(layer, backend)
    layer.rule, layer.batch_first = "bp", batch_first
    rnn = torch.nn.RNN(2, 4, nonlinearity=act, batch_first=batch_first, dtype=D64)
    rnn.load_state_dict(layer.state_dict())
    xin = x if batch_first else x.transpose(0, 1).contiguous()
    Cin = C if batch_first else C.transpose(0, 1).contiguous()
    res = []
    for m in (layer, rnn):
        xg = xin.clone().requires_grad_(True)
        hg = h0.clone().requires_grad_(True)
        out, hn = m(xg, hg if with_h0 else None)
        ((out * Cin).sum() + (hn * Cn).sum()).backward()
        res.append(([w.grad for w in m.parameters()], xg.grad, hg.grad, out, hn))
    (g1, x1, h1, o1, n1), (g2, x2, h2, o2, n2) = res
    assert_rel(o1, o2, where=f"bp vs nn.RNN {act} output")
    assert_rel(n1, n2, where=f"bp vs nn.RNN {act} h_n")
    for a, b in zip(g1, g2):
        assert_rel(a, b, where=f"bp vs nn.RNN {act} param grad")
    assert_rel(x1, x2, where=f"bp vs nn.RNN {act} input grad")
    if with_h0:
        assert_rel(h1, h2, where=f"bp vs nn.RNN {act} h0 grad")


def test_through_time_last_term_is_gamma_times_bp():
    """With a loss on h_T only and T = 1, the through-time direction is exactly γ_h × BP's gradient."""
    layer, x, h0, C, Cn = make_problem("tanh", T=1, seed=8)
    C.zero_()
    layer.rule = "bp"
    bp, *_ = run_layer(layer, x, h0, C, Cn)
    layer.rule, layer.through_time, layer.target_step = "linearized", True, 0.03
    tt, *_ = run_layer(layer, x, h0, C, Cn)
    for k in bp:
        assert_rel(tt[k], 0.03 * bp[k], where=f"through_time T=1 {k}")
