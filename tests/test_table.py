"""The case table (tests/cases.py) against the float64 reference (tests/reference/stack.py): for
every row, the layer's outputs, h_n and the directions it writes into every parameter's .grad,
the input's and h0's, at relative error ≤ 1e-10 (and three-layer stacks, whose middle layer
receives and hands down); the rows left out are refused by the library, and the thinned table
covers every pair of factor values the full one does."""
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import cases
import reference
from helpers import assert_rel

D64 = torch.float64
#: the problem: T steps, B sequences (lengths when packed: unsorted, a tie, one of full length), d inputs, p units
T, B, d, p = 5, 3, 3, 4
LENGTHS = [2, 5, 2]
#: weights ~ N(0, scale²/fan_in): the gated cells' gates far from ½
SCALE = {"rnn": 0.6, "gru": 1.5, "lstm": 1.5}
#: reg, γ_h and τ of every row (τ wide enough that π clamps some units or gates)
REG, GAMMA, TOL = 0.7, 0.05, 0.02


def problem(case: cases.Case):
    """``(layer, x (T, B, d), h0 (L·D, B, S·p), C (T, B, D·p), Cn (L·D, B, S·p))`` from one seeded generator."""
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    options = {"nonlinearity": case.activation} if case.activation else {}
    layer = cases.LAYERS[case.cell](d, p, case.layers, bias=case.bias, bidirectional=case.directions == 2,
                                    dtype=D64, rule=case.rule, reg=REG, target_step=GAMMA, tol=TOL,
                                    through_time=case.through_time, backend=case.backend, **options)
    with torch.no_grad():
        for w in layer.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=D64) * SCALE[case.cell] / w.shape[-1] ** 0.5)
        if case.rule == "learned":  # a random reverse layer, kept as drawn: the targets are a function of it
            layer.inverse_lr = 0.0
            layer.inverse_weight_hh_l0.copy_(torch.randn(p, p, generator=g, dtype=D64) * 0.5)
            layer.inverse_bias_l0.copy_(torch.randn(p, generator=g, dtype=D64) * 0.3)
    S, LD = layer.cell_module.STATES, case.layers * case.directions
    x = torch.randn(T, B, d, generator=g, dtype=D64)
    h0 = 0.3 * torch.randn(LD, B, S * p, generator=g, dtype=D64)
    C = torch.randn(T, B, case.directions * p, generator=g, dtype=D64)
    Cn = torch.randn(LD, B, S * p, generator=g, dtype=D64)
    return layer, x, h0, C, Cn


def run_layer(layer, case, x, h0, C, Cn) -> dict:
    """One backward of ``⟨C, out⟩ + ⟨Cn, h_n⟩`` (padded steps of a packed output carry no loss)."""
    xg, hg = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    inp = pack_padded_sequence(xg, torch.tensor(LENGTHS), enforce_sorted=False) if case.packed else xg
    hx = (hg[..., :p], hg[..., p:]) if layer.cell_module.STATES == 2 else hg
    out, h_n = layer(inp, hx)
    if isinstance(h_n, tuple):
        h_n = torch.cat(h_n, -1)
    if case.packed:
        out = pad_packed_sequence(out, total_length=T)[0]
    ((out * C).sum() + (h_n * Cn).sum()).backward()
    return {"out": out, "h_n": h_n, "input": xg.grad, "h0": hg.grad,
            **{k: w.grad for k, w in layer.named_parameters()}}


def expected(layer, case, x, h0, C, Cn) -> dict:
    P = {k: w.detach() for k, w in layer.named_parameters()}
    inverse = None
    if case.rule == "learned":
        inverse = {"weight": layer.inverse_weight_hh_l0.detach(), "bias": layer.inverse_bias_l0.detach()}
    return reference.stack.run(case.cell, case.rule, P, x, h0, C, Cn, num_layers=case.layers,
                               directions=case.directions, nonlinearity=case.activation, reg=REG,
                               target_step=GAMMA, tol=TOL, through_time=case.through_time, inverse=inverse,
                               lengths=LENGTHS if case.packed else None)


@pytest.fixture
def backend_here(case, monkeypatch):
    """``backend="triton"`` on these CPU tensors runs Triton's interpreter."""
    if case.backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("case", cases.params())
def test_every_case_matches_the_float64_reference(case, backend_here):
    layer, x, h0, C, Cn = problem(case)
    got = run_layer(layer, case, x, h0, C, Cn)
    want = expected(layer, case, x, h0, C, Cn)
    names = [k for k, _ in layer.named_parameters()]
    for k in ["out", "h_n", "input", "h0", *names]:
        assert_rel(got[k], want[k], where=f"{case.id} {k}")
    assert got["weight_hh_l0"].abs().max() > 1e-6  # the directions are not trivial


#: beyond the table: three layers, both directions, where the middle layer both receives a displacement
#: from above and hands one down (in the table's two-layer rows each layer does one of the two)
MIDDLE = [cases.Case(cell, rule, act, 3, 2, False, "auto", through_time, True)
          for cell, rule, act in cases.models() if act in (None, "tanh") and cases.rules.get_rule(cell, rule).stackable
          for through_time in (False, True)]


@pytest.mark.parametrize("case", cases.params(MIDDLE))
def test_a_middle_layer_matches_the_float64_reference(case, backend_here):
    test_every_case_matches_the_float64_reference(case, backend_here)


def test_refused_rows_are_refused_by_the_library():
    """Each row cases.refused leaves out raises a ValueError naming the rule or the backend when the
    layer is made or run (one row per reason, model and shape suffices: the reasons depend on nothing else)."""
    seen = set()
    for case in cases.full():
        why = cases.refused(case)
        key = (why, case.cell, case.rule, case.activation, case.layers, case.directions, case.packed, case.backend)
        if why is None or key in seen:
            continue
        seen.add(key)
        with pytest.raises(ValueError, match=cases.refusal_names(case)):
            layer, x, h0, C, Cn = problem(case)
            run_layer(layer, case, x, h0, C, Cn)
    assert {key[0] for key in seen} == {why for _, why, _ in cases.REFUSALS}


def test_the_table_covers_every_pair_and_every_whole_combination():
    """Thinning keeps every combination of cases.WHOLE the library accepts and every pair of factor values."""
    accepted = [c for c in cases.full() if cases.refused(c) is None]
    assert cases.every_pair(cases.CASES) == cases.every_pair(accepted)
    whole = lambda c: tuple(getattr(c, k) for k in cases.WHOLE)  # noqa: E731
    assert {whole(c) for c in cases.CASES} == {whole(c) for c in accepted}
    assert len({c.id for c in cases.CASES}) == len(cases.CASES)
    # the table's factors are the library's
    assert {(c.cell, c.rule) for c in cases.CASES} == set(cases.rules.TABLE)
    assert {c.backend for c in cases.CASES} == set(cases.kernels.BACKENDS)
    assert {(c.cell, c.backend) for c in cases.CASES} == {(c.cell, c.backend) for c in accepted}
    assert {c.activation for c in cases.CASES if c.cell == "rnn"} == set(cases.ACTIVATIONS)
