"""The cell protocol (targetprop.cells): the registry, the names, directions keyed by parameter name."""
import pytest
import torch

from targetprop import TPGRU, TPRNN, kernels
from targetprop.cells import GRADIENTS, elman, get_cell, gru
from targetprop.engine import TPConfig, displacements
from targetprop.activations import get_activation


def test_cells_are_found_by_name_and_the_old_elman_name_still_works():
    assert get_cell("rnn") is elman and get_cell("gru") is gru
    assert get_cell("elman") is elman
    assert (TPRNN(2, 3).cell, TPGRU(2, 3).cell) == ("rnn", "gru")
    with pytest.raises(ValueError, match="cell must be one of \\['gru', 'rnn'\\], got 'lstm'"):
        get_cell("lstm")


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
    out, *extra = getattr(module, "forward_for_backward", None)(x, h0, *w, act, kern) if cell == "gru" \
        else (module.forward(x, h0, *w, act, kern),)
    tape = module.Tape(x, h0, out, *w, act, kern, *extra)
    config = TPConfig(cell, "bp", act, 1.0, 1e-2, 1e-3)
    grad_out = torch.randn(T, B, p, generator=g, dtype=torch.float64)
    lam = displacements(tape, grad_out, None, config)
    grads = tape.directions(lam.clone(), GRADIENTS)
    assert set(grads) == set(GRADIENTS) and module.STATES == ("h",)
    assert set(tape.directions(lam.clone(), ("weight_hh", "h0"))) == {"weight_hh", "h0"}
    # bp: the directions are autograd's gradients of <grad_out, out>
    leaves = [t.clone().requires_grad_(True) for t in (x, h0, *w)]
    params = [leaves[2], leaves[3], leaves[4], leaves[5]]
    run = torch.rnn_tanh if cell == "rnn" else torch.gru
    ref, _ = run(leaves[0], leaves[1].unsqueeze(0), params, True, 1, 0.0, False, False, False)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), leaves)
    for k, r in zip(GRADIENTS, ref_grads):
        assert torch.allclose(grads[k], r, rtol=1e-10, atol=1e-12), k


def test_the_elman_cells_earlier_name_finds_its_rules_too():
    from targetprop import rules

    assert rules.get_rule("elman", "linearized") is rules.get_rule("rnn", "linearized")
    assert rules.available("elman") == rules.available("rnn")
