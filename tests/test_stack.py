"""Stacked and bidirectional layers beyond the case table (tests/test_table.py checks every rule,
cell and shape against the float64 reference): rule="bp" equals torch.nn's autograd for every
configuration (batch_first, dropout, three layers), dropout's mask is the forward's and TP inverts
it (against tests/reference/stack.py), state dicts load both ways, the refusals, the scratch kept
and what a recording sees."""
import itertools

import pytest
import torch

import reference
from helpers import assert_rel
from targetprop import TPGRU, TPRNN, RegularizedInverseError

D64 = torch.float64
T, B, d, p = 5, 3, 3, 4


def _grads(module, x, hx, seed=1):
    """Run ``module`` on (x, hx) with the linear loss ⟨C, out⟩ + ⟨Cn, h_n⟩; return
    (out, h_n, x.grad, hx.grad, {name: grad}, C, Cn)."""
    module.zero_grad(set_to_none=True)
    xg, hg = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
    out, h_n = module(xg, hg)
    g = torch.Generator().manual_seed(seed)
    c, cn = torch.randn(out.shape, generator=g, dtype=D64), torch.randn(h_n.shape, generator=g, dtype=D64)
    ((out * c).sum() + (h_n * cn).sum()).backward()
    return out, h_n, xg.grad, hg.grad, {k: w.grad for k, w in module.named_parameters()}, c, cn


# dropout acts between layers: with one layer it is tested in test_dropin.py
CONFIGS = [c for c in itertools.product([1, 2, 3], [False, True], [True, False], [False, True], [0.0, 0.5])
           if not (c[0] == 1 and c[4])]


@pytest.mark.parametrize("cls,nn_cls,extra", [(TPRNN, torch.nn.RNN, {}), (TPRNN, torch.nn.RNN, {"nonlinearity": "relu"}),
                                               (TPGRU, torch.nn.GRU, {})], ids=["rnn", "rnn-relu", "gru"])
@pytest.mark.parametrize("layers,bidirectional,bias,batch_first,dropout", CONFIGS)
def test_bp_stack_is_torch_nn_autograd(cls, nn_cls, extra, layers, bidirectional, bias, batch_first, dropout):
    """Same weights, same seed (hence the same dropout mask, drawn as torch.nn draws it): the same
    outputs and gradients for x, every h0 and every parameter."""
    torch.manual_seed(0)
    kw = dict(bias=bias, batch_first=batch_first, dropout=dropout, bidirectional=bidirectional, dtype=D64, **extra)
    theirs = nn_cls(d, p, layers, **kw)
    ours = cls(d, p, layers, **kw, rule="bp")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn((B, T, d) if batch_first else (T, B, d), dtype=D64)
    hx = 0.5 * torch.randn(layers * (1 + bidirectional), B, p, dtype=D64)
    results = []
    for m in (ours, theirs):
        torch.manual_seed(7)
        results.append(_grads(m, x, hx))
    (o1, n1, x1, h1, g1, *_), (o2, n2, x2, h2, g2, *_) = results
    where = f"{cls.__name__}{extra} L={layers} bi={bidirectional} bias={bias} bf={batch_first} dropout={dropout}"
    assert o1.shape == o2.shape and n1.shape == n2.shape
    for a, b, what in ((o1, o2, "output"), (n1, n2, "h_n"), (x1, x2, "x grad"), (h1, h2, "hx grad")):
        assert_rel(a, b, where=f"{where} {what}")
    assert g1.keys() == g2.keys()
    for k in g1:
        assert_rel(g1[k], g2[k], where=f"{where} {k}")


def _tp_case(cls, layers, bidirectional, bias, seed, **kw):
    torch.manual_seed(seed)
    kw.setdefault("through_time", False)  # the reference's eq. 3
    m = cls(d, p, layers, bias=bias, bidirectional=bidirectional, dtype=D64, **kw)
    with torch.no_grad():
        for w in m.parameters():
            w.mul_(1.5)
    x = torch.randn(T, B, d, dtype=D64)
    hx = 0.5 * torch.randn(layers * (1 + bidirectional), B, p, dtype=D64)
    return m, x, hx


@pytest.mark.parametrize("cls,cell,act", [(TPRNN, "rnn", "tanh"), (TPGRU, "gru", None)])
def test_dropout_mask_is_the_forwards_and_tp_inverts_it(cls, cell, act):
    """The backward uses the mask drawn in the forward (random numbers drawn in between change
    nothing), and TP hands down m ⊙ z·(1−q) (the reference, with the mask redrawn from the seed)."""
    layers, q = 3, 0.4
    m, x, hx = _tp_case(cls, layers, True, True, seed=6, dropout=q, target_step=0.3)
    torch.manual_seed(11)
    masks = [torch.empty(T, B, 2 * p, dtype=D64).bernoulli_(1 - q) for _ in range(layers - 1)] + [None]
    m.zero_grad()
    torch.manual_seed(11)
    xg, hg = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
    out, h_n = m(xg, hg)
    torch.rand(100)  # the global generator moves on before the backward
    g = torch.Generator().manual_seed(1)
    c, cn = torch.randn(out.shape, generator=g, dtype=D64), torch.randn(h_n.shape, generator=g, dtype=D64)
    ((out * c).sum() + (h_n * cn).sum()).backward()
    P = {k: w.detach() for k, w in m.named_parameters()}
    want = reference.stack.run(cell, "linearized", P, x, hx, c, cn, num_layers=layers, directions=2,
                               nonlinearity=act, reg=m.reg, target_step=m.target_step, tol=m.tol,
                               signal_below=m.signal_below, masks=masks, dropout=q)
    assert_rel(xg.grad, want["input"], where="dropout x")
    assert_rel(hg.grad, want["h0"], where="dropout h0")
    for k, w in m.named_parameters():
        assert_rel(w.grad, want[k], where=f"dropout {k}")
    # in eval mode no mask: the same as a module without dropout
    m.eval()
    plain = cls(d, p, layers, bidirectional=True, dtype=D64)
    plain.load_state_dict(m.state_dict())
    assert torch.equal(m(x, hx)[0], plain(x, hx)[0])


@pytest.mark.parametrize("cls,nn_cls", [(TPRNN, torch.nn.RNN), (TPGRU, torch.nn.GRU)], ids=["rnn", "gru"])
@pytest.mark.parametrize("layers,bidirectional,bias", list(itertools.product([1, 2, 3], [False, True], [True, False])))
def test_state_dicts_load_both_ways(cls, nn_cls, layers, bidirectional, bias):
    theirs = nn_cls(d, p, layers, bias=bias, bidirectional=bidirectional)
    ours = cls(d, p, layers, bias=bias, bidirectional=bidirectional)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    back = nn_cls(d, p, layers, bias=bias, bidirectional=bidirectional)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, d)
    for a, b in zip(ours(x), back(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a.shape == b.shape
    assert ours(x)[1].shape == (layers * (1 + bidirectional), B, p)


def test_learned_rule_is_refused_for_stacks():
    with pytest.raises(ValueError, match="rule='learned' needs num_layers=1 and bidirectional=False"):
        TPRNN(d, p, 2, rule="learned")
    layer = TPRNN(d, p, bidirectional=True)
    with pytest.raises(ValueError, match="rule='learned' needs num_layers=1"):
        layer.rule = "learned"


def test_diagnose_refuses_a_stack_clearly():
    from targetprop.diagnose import diagnose

    model = torch.nn.ModuleDict({"rnn": TPRNN(d, p, 2)})
    with pytest.raises(ValueError, match="diagnose needs a one-layer, one-direction TP layer; 'rnn' has num_layers=2"):
        diagnose(model, torch.randn(T, B, d), None, None, ["linearized"])


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_a_stack_keeps_the_scratch_and_the_saved_tensors_of_one_layer_per_direction(cls):
    """The backward's scratch is per direction (a layer's is dead before the one below starts), and a
    reverse direction's input is not saved a second time, reversed."""
    kept, saved = {}, {}
    for layers in (1, 3):
        torch.manual_seed(0)
        m = cls(d, p, layers, bidirectional=True, rule="linearized", dtype=D64)
        x = torch.randn(T, B, d, dtype=D64)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, h_n = m(x)
        (out.sum() + h_n.sum()).backward()
        kept[layers], saved[layers] = m.workspace.nbytes, sum(storages.values())
    assert kept[3] == kept[1] > 0
    per_step = 8 * T * B  # float64 bytes of one (T, B, 1) slice
    states = per_step * p * 2 * 3  # h_1..h_T of 3 layers x 2 directions
    inputs = per_step * (d + 2 * p * 2)  # x, and layers 1-2's (T, B, 2p) inputs, each once
    params = sum(w.nbytes for w in m.parameters()) + 8 * 6 * B * p  # weights and h0
    gates = 4 * states if cls is TPGRU else 0  # the GRU keeps [r, z, q, n] per step
    assert saved[3] <= states + inputs + params + gates + 8 * 6 * B * p


def test_stacked_errors_and_settings_are_named():
    m = TPRNN(d, p, 2, bidirectional=True, dtype=D64)
    for bad in (True, -0.2, 1.5, "0.1"):
        with pytest.raises(ValueError, match="dropout should be a number in range"):
            m.dropout = bad
    with pytest.raises(RuntimeError, match="hx must have shape"):  # as torch.nn raises it (also a ValueError)
        m(torch.randn(T, B, d, dtype=D64), torch.zeros(2, B, p, dtype=D64))
    with torch.no_grad():
        m.weight_hh_l1_reverse[0, 0] = float("nan")
    out, h_n = m(torch.randn(T, B, d, dtype=D64))
    with pytest.raises(RegularizedInverseError, match="weight_hh_l1_reverse contains NaN"):
        out.sum().backward()


def test_recording_sees_every_layer_and_direction_of_a_stack():
    from targetprop import engine

    m = TPRNN(d, p, 2, bidirectional=True, dtype=D64)
    with engine.recording() as records:
        out, _ = m(torch.randn(T, B, d, dtype=D64))
        out.sum().backward()
    assert [r[0].suffix for r in records] == ["l1", "l1_reverse", "l0", "l0_reverse"]
    assert all(r[2].shape == (T + 1, B, p) and r[2].abs().max() > 0 for r in records)
