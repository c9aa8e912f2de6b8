"""The cell protocol (targetprop.cells) and the rule table (targetprop.rules): names, tables,
directions keyed by parameter name."""
import pytest
import torch

from targetprop import TPGRU, TPRNN, kernels
from targetprop import engine, rules
from targetprop.cells import CELLS, GRADIENTS, elman, get_cell, gru
from targetprop.activations import get_activation


def test_cells_are_found_by_name():
    assert get_cell("rnn") is elman and get_cell("gru") is gru and set(CELLS) == {"rnn", "gru", "lstm"}
    assert (TPRNN(2, 3).cell, TPGRU(2, 3).cell) == ("rnn", "gru")
    with pytest.raises(ValueError, match="cell must be one of"):
        get_cell("elman")
    with pytest.raises(ValueError, match="cell must be one of \\['gru', 'lstm', 'rnn'\\], got 'lru'"):
        get_cell("lru")


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_tape_directions_are_keyed_by_parameter_name(cell):
    g = torch.Generator().manual_seed(0)
    T, B, d, p = 4, 2, 3, 5
    module = get_cell(cell)
    rows = module.GATES * p
    x, h0 = torch.randn(T, B, d, generator=g, dtype=torch.float64), torch.randn(B, p, generator=g, dtype=torch.float64)
    w = [torch.randn(*s, generator=g, dtype=torch.float64) * 0.4 for s in ((rows, d), (rows, p), (rows,), (rows,))]
    act = get_activation("tanh")
    kern = kernels.select_kernels("torch", x, w[1])
    out, *extra = module.forward_for_backward(x, h0, *w, act, kern)
    tape = module.Tape(x, h0, out, *w, act, kern, *extra)
    tape.workspace = engine.Workspace().part(0)
    settings = engine.Settings(rules.get_rule(cell, "bp"), act, 1.0, 1e-2, 1e-3)
    grad_out = torch.randn(T, B, p, generator=g, dtype=torch.float64)
    lam = engine.inject(grad_out, engine.injection_scale(settings), out, tape.workspace)
    adjoints = engine.propagate_targets(tape, lam, settings)
    grads = tape.directions(lam.clone(), GRADIENTS, adjoints)
    assert set(grads) == set(GRADIENTS)
    assert set(tape.directions(lam.clone(), ("weight_hh", "h0"))) == {"weight_hh", "h0"}
    # bp: the directions are autograd's gradients of <grad_out, out>
    leaves = [t.clone().requires_grad_(True) for t in (x, h0, *w)]
    params = [leaves[2], leaves[3], leaves[4], leaves[5]]
    run = torch.rnn_tanh if cell == "rnn" else torch.gru
    ref, _ = run(leaves[0], leaves[1].unsqueeze(0), params, True, 1, 0.0, False, False, False)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), leaves)
    for k, r in zip(GRADIENTS, ref_grads):
        assert torch.allclose(grads[k], r, rtol=1e-10, atol=1e-12), k


def test_the_rule_table_gives_the_names_and_the_objects():
    """Names come from the one table; every rule is a whole object of its cell's rules file."""
    assert rules.RULE_NAMES == ("bp", "linearized", "difference", "direct", "learned")
    assert rules.available("rnn") == rules.RULE_NAMES and rules.available("gru") == ("bp", "linearized")
    for (cell, name), rule in rules.TABLE.items():
        assert rule.name == name and type(rule).__module__ == f"targetprop.rules.{'elman' if cell == 'rnn' else cell}"
        assert rule.makes_targets == (name != "bp")
        assert rule.stackable == (name != "learned")
    with pytest.raises(ValueError, match="not defined for the gru cell"):
        rules.get_rule("gru", "direct")
