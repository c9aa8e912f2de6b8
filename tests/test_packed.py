"""PackedSequence in and out beyond the case table (tests/test_table.py checks every rule and cell
on packed input against the float64 reference, which runs each sequence alone and sums the
directions): rule="bp" equals torch.nn's autograd on packed input, sorted or not; the output keeps
the packing and h_n each sequence's last state; the learned rule's refusal; autocast."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers import assert_rel
from targetprop import TPGRU, TPRNN

D64 = torch.float64
T, d, p, LAYERS = 6, 3, 4, 2
LENGTHS = {"sorted": [6, 4, 4, 2], "unsorted": [4, 6, 2, 4]}


def _loss(out, h_n, seed=1):
    """A linear loss on the packed rows and h_n (fixed coefficients)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(out.data.shape, generator=g, dtype=D64)
    cn = torch.randn(h_n.shape, generator=g, dtype=D64)
    return (out.data * c).sum() + (h_n * cn).sum()


@pytest.mark.parametrize("cls,nn_cls", [(TPRNN, torch.nn.RNN), (TPGRU, torch.nn.GRU)], ids=["rnn", "gru"])
@pytest.mark.parametrize("order,enforce_sorted", [("sorted", True), ("sorted", False), ("unsorted", False)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_bp_on_packed_input_is_torch_nn(cls, nn_cls, order, enforce_sorted, bidirectional):
    """(torch.nn refuses unsorted lengths with enforce_sorted=True, so that case is not compared.)"""
    torch.manual_seed(0)
    theirs = nn_cls(d, p, LAYERS, bidirectional=bidirectional, dtype=D64)
    ours = cls(d, p, LAYERS, bidirectional=bidirectional, dtype=D64, rule="bp")
    ours.load_state_dict(theirs.state_dict())
    lengths = torch.tensor(LENGTHS[order])
    x = torch.randn(T, len(lengths), d, dtype=D64)
    hx = 0.5 * torch.randn(LAYERS * (1 + bidirectional), len(lengths), p, dtype=D64)
    results = []
    for m in (ours, theirs):
        xg, hg = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
        packed = pack_padded_sequence(xg, lengths, enforce_sorted=enforce_sorted)
        out, h_n = m(packed, hg)
        _loss(out, h_n).backward()
        results.append((out, h_n, xg.grad, hg.grad, [w.grad for w in m.parameters()]))
    (o1, n1, x1, h1, g1), (o2, n2, x2, h2, g2) = results
    assert torch.equal(o1.batch_sizes, o2.batch_sizes)
    for a, b in ((o1.sorted_indices, o2.sorted_indices), (o1.unsorted_indices, o2.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    where = f"{cls.__name__} {order} enforce={enforce_sorted} bi={bidirectional}"
    assert_rel(o1.data, o2.data, where=where + " output")
    assert_rel(n1, n2, where=where + " h_n")
    assert_rel(x1, x2, where=where + " x grad")
    assert_rel(h1, h2, where=where + " hx grad")
    for a, b in zip(g1, g2, strict=True):
        assert_rel(a, b, where=where + " parameter grad")


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_packed_output_and_last_states(cls):
    """The output keeps the input's packing; h_n holds each sequence's last valid state in the
    caller's order, the reverse direction's being its state after reading the sequence backwards."""
    torch.manual_seed(2)
    m = cls(d, p, 1, bidirectional=True, dtype=D64)
    lengths = torch.tensor(LENGTHS["unsorted"])
    x = torch.randn(T, 4, d, dtype=D64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = m(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    backwards = cls(d, p, dtype=D64)  # the reverse direction's weights in a one-direction layer
    backwards.load_state_dict({k[:-len("_reverse")]: v for k, v in m.state_dict().items() if k.endswith("_reverse")})
    padded, n = pad_packed_sequence(out)
    assert torch.equal(n, lengths)
    for b, k in enumerate(LENGTHS["unsorted"]):
        assert torch.equal(h_n[0, b], padded[k - 1, b, :p])  # forward: the last valid step
        assert torch.equal(h_n[1, b], padded[0, b, p:])  # reverse: ends at step 0
        rev = backwards(x[:k, b].flip(0))[0]  # the reverse direction = the sequence reversed
        assert_rel(padded[:k, b, p:], rev.flip(0), where="reverse direction")


def test_learned_rule_takes_padded_tensors_only():
    packed = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="rule='learned' takes padded tensors only"):
        TPRNN(3, 5, rule="learned")(packed)


def test_packed_input_under_autocast_runs_in_the_layers_dtype():
    """As for a tensor input: under torch.autocast the layer computes in its parameters' dtype."""
    torch.manual_seed(3)
    m = TPRNN(d, p, 2, bidirectional=True)
    theirs = torch.nn.RNN(d, p, 2, bidirectional=True)
    theirs.load_state_dict(m.state_dict())
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(n, d) for n in (4, 6, 2)], enforce_sorted=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = m(packed)
    assert out.data.dtype == torch.float32 and h_n.dtype == torch.float32
    torch.testing.assert_close(out.data, theirs(packed)[0].data, rtol=1e-5, atol=1e-6)
