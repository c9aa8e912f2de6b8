"""A TP layer inside a user's own model: concurrent backward passes, non-finite directions, the
signal modules below receive, a batch of none, torch.compile and torch.func, and the learned
rule's reverse layer (trained only when training)."""
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from helpers import assert_rel
from targetprop import TPGRU, TPRNN, NonFiniteDirectionError, orthogonal_init_

D64 = torch.float64
CASES = [(TPRNN, {"rule": "linearized"}, 1), (TPRNN, {"rule": "bp"}, 1), (TPRNN, {"rule": "difference"}, 1),
         (TPRNN, {"rule": "direct"}, 2), (TPRNN, {"rule": "linearized", "through_time": True}, 2),
         (TPRNN, {"rule": "learned", "inverse_lr": 0.0}, 1), (TPGRU, {"rule": "linearized"}, 1),
         (TPGRU, {"rule": "bp"}, 2), (TPGRU, {"rule": "linearized", "bidirectional": True}, 2)]
IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-L{n}" for c, kw, n in CASES]


def _directions(layer, x):
    """(the parameters' directions, the input's gradient) of a quadratic loss on the output and h_n."""
    xg = x.clone().requires_grad_(True)
    out, h_n = layer(xg)
    grads = torch.autograd.grad((out ** 2).sum() + h_n.sum(), [*layer.parameters(), xg])
    return [g.clone() for g in grads]


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("cls,kwargs,layers", CASES, ids=IDS)
def test_concurrent_backward_passes_equal_sequential_ones(cls, kwargs, layers, threads):
    """Threads sharing one module (as nn.DataParallel replicas and threaded evaluation do), each
    with its own batch and shape, get exactly the directions of the same calls made one at a time."""
    torch.manual_seed(0)
    layer = cls(3, 16, layers, dtype=D64, **kwargs)
    batches = [torch.randn(20 + 7 * i, 2 + i, 3, dtype=D64) for i in range(threads)]
    sequential = [_directions(layer, x) for x in batches]
    for _ in range(3):
        results, errors = [None] * threads, []
        start = threading.Barrier(threads)

        def work(i):
            try:
                start.wait()
                for _ in range(3):
                    results[i] = _directions(layer, batches[i])
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert not errors, errors
        for got, want in zip(results, sequential):
            assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_a_non_finite_direction_is_an_error_naming_the_parameter_and_what_to_try(cls):
    """Saturating weights and inputs, a vanishing tol and a huge target step: the direction
    overflows, and the backward raises before any optimizer sees it."""
    torch.manual_seed(0)
    layer = cls(4, 32, tol=1e-300, target_step=1e300, dtype=D64)
    with torch.no_grad():
        for w in layer.parameters():
            w.mul_(30)
    x = 30 * torch.randn(40, 8, 4, dtype=D64)
    out, _ = layer(x)
    with pytest.raises(NonFiniteDirectionError, match="weight_hh_l0.*; try a larger reg.*tol=0.1.*check_finite=False") as info:
        (out.sum() * 1e300).backward()
    assert isinstance(info.value, FloatingPointError) and layer.weight_hh_l0.grad is None


def test_the_error_names_the_direction_and_off_lets_nan_through():
    torch.manual_seed(1)
    layer = TPRNN(2, 5, 2, bidirectional=True, dtype=D64)
    x = torch.randn(6, 3, 2, dtype=D64)
    out, _ = layer(x)
    with pytest.raises(NonFiniteDirectionError, match="weight_hh_l1_reverse|weight_ih_l1_reverse"):
        (out[..., 5:] * float("nan")).sum().backward()  # only the top reverse direction sees NaN first
    layer.check_finite = False
    layer.zero_grad()
    out, _ = layer(x)
    (out * float("nan")).sum().backward()
    assert torch.isnan(layer.weight_hh_l0.grad).any()


def test_a_finite_direction_is_untouched_by_the_check():
    torch.manual_seed(2)
    layer = TPRNN(2, 5, dtype=D64)
    x = torch.randn(6, 3, 2, dtype=D64)
    on = _directions(layer, x)
    layer.check_finite = False
    assert all(torch.equal(a, b) for a, b in zip(on, _directions(layer, x)))


@pytest.mark.parametrize("cls,kwargs", [(TPRNN, {}), (TPRNN, {"through_time": True}), (TPGRU, {}),
                                        (TPGRU, {"num_layers": 2, "bidirectional": True})])
def test_a_module_below_gets_a_gradient_sized_signal_by_default(cls, kwargs):
    """A Linear below the layer: its gradient is within 0.1–10× of BP's at the same weights (the
    paper's scaling, signal_below='target', gives γ_h × that)."""
    torch.manual_seed(3)
    below = torch.nn.Linear(5, 6, dtype=D64)
    layer = orthogonal_init_(cls(6, 32, dtype=D64, **kwargs))
    head = torch.nn.Linear(32 * (2 if kwargs.get("bidirectional") else 1), 4, dtype=D64)
    x, y = torch.randn(30, 16, 5, dtype=D64), torch.randint(0, 4, (16,))

    def below_grad():
        below.zero_grad()
        out, _ = layer(torch.tanh(below(x)))
        torch.nn.functional.cross_entropy(head(out[-1]), y).backward()
        return below.weight.grad.norm().item()

    tp = below_grad()
    layer.rule = "bp"
    bp = below_grad()
    layer.rule, layer.signal_below = "linearized", "target"
    paper = below_grad()
    assert 0.1 < tp / bp < 10, (tp, bp)
    assert paper == pytest.approx(layer.target_step * tp, rel=1e-10)


@pytest.mark.parametrize("cls,nn_cls", [(TPRNN, torch.nn.RNN), (TPGRU, torch.nn.GRU)])
@pytest.mark.parametrize("batch_first", [True, False])
def test_a_batch_of_no_sequences_gives_empty_outputs_as_torch_nn(cls, nn_cls, batch_first):
    ours, theirs = cls(3, 4, 2, batch_first=batch_first, bidirectional=True), \
        nn_cls(3, 4, 2, batch_first=batch_first, bidirectional=True)
    x = torch.randn((0, 5, 3) if batch_first else (5, 0, 3))
    (o1, h1), (o2, h2) = ours(x), theirs(x)
    assert o1.shape == o2.shape and h1.shape == h2.shape
    (o1.sum() + h1.sum()).backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ours.parameters())


@pytest.mark.filterwarnings("error:Dynamo detected")  # no tracing into cached helpers or the kernel loader
@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_torch_compile_runs_the_layer_eagerly_and_equals_eager(cls):
    """The layer is a graph break (its loops are compiled code of their own): a compiled model
    gives the eager model's outputs and directions."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), cls(3, 8, batch_first=True))
    x = torch.randn(4, 7, 3)
    compiled = torch.compile(model, backend="eager")
    results = []
    for m in (model, compiled):
        model.zero_grad()
        out, h_n = m(x)
        (out.square().sum() + h_n.sum()).backward()
        results.append([out.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_torch_func_is_a_one_line_error():
    layer = TPRNN(3, 4)
    x = torch.randn(5, 2, 3)
    params = dict(layer.named_parameters())

    def loss(p):
        out, _ = torch.func.functional_call(layer, p, (x,))
        return out.sum()

    with pytest.raises(RuntimeError, match="do not support torch.func") as info:
        torch.func.grad(loss)(params)
    assert "\n" not in str(info.value)


def test_learned_trains_its_reverse_layer_only_in_training_mode_with_parameters_to_train():
    torch.manual_seed(5)
    layer = TPRNN(3, 6, rule="learned", inverse_lr=0.1)
    x = torch.randn(8, 4, 3, requires_grad=True)

    def reverse_layer_after_backward():
        before = layer.inverse_weight_hh_l0.clone()
        out, _ = layer(x)
        torch.autograd.grad(out.sum(), [x])
        return not torch.equal(before, layer.inverse_weight_hh_l0)

    assert reverse_layer_after_backward()  # training mode, parameters requiring grad: one step
    layer.eval()
    assert not reverse_layer_after_backward()  # eval mode (a saliency map)
    layer.train()
    layer.requires_grad_(False)
    assert not reverse_layer_after_backward()  # frozen parameters


def test_learned_layer_state_dicts_interchange_with_torch_nn():
    """torch.nn.RNN → TPRNN(rule='learned') loads strictly (the reverse layer keeps its values);
    the other way, the reverse layer's buffers are the only extra keys."""
    theirs, ours = torch.nn.RNN(3, 6), TPRNN(3, 6, rule="learned")
    v = ours.inverse_weight_hh_l0.clone()
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.weight_hh_l0, theirs.weight_hh_l0) and torch.equal(ours.inverse_weight_hh_l0, v)
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == sorted(
        ["inverse_weight_hh_l0", "inverse_bias_l0", "inverse_weight_hh_l0_momentum", "inverse_bias_l0_momentum"])


def test_packed_one_layer_tp_equals_the_padded_runs_one_sequence_at_a_time():
    """The one-layer, one-direction TP layer on a PackedSequence: each sequence's directions are
    those of its own run, summed (the engine's one path for every shape)."""
    torch.manual_seed(6)
    layer = TPRNN(3, 5, dtype=D64)
    seqs = [torch.randn(n, 3, dtype=D64) for n in (6, 3, 5)]
    layer.zero_grad()
    out, h_n = layer(pack_sequence(seqs, enforce_sorted=False))
    (out.data.square().sum() + h_n.sum()).backward()
    packed = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    for s in seqs:
        o, h = layer(s.unsqueeze(1))
        (o.square().sum() + h.sum()).backward()
    for a, p in zip(packed, layer.parameters()):
        assert_rel(a, p.grad, where="packed one-layer TP")
