"""The facts that tie the rules to BP: a TP direction is not BP's, ``rule="bp"`` is torch.nn.RNN's
autograd, and through time with T = 1 it is γ_h × BP. (Every rule against the float64 reference,
for every layer shape: tests/test_table.py.)"""
import pytest
import torch

from helpers import assert_rel
from problems import BACKENDS, D64, make_problem, run_layer, use_backend


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
