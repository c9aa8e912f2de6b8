"""TPRNN / TPGRU as drop-ins for torch.nn.RNN / torch.nn.GRU: the same constructor (order, defaults,
validation), forward keywords, attributes and, with rule="bp", the same outputs and gradients; the
README's example runs; a backward asked to build a graph is refused."""
import pathlib
import re
import warnings

import pytest
import torch

from helpers import assert_rel
from targetprop import TPGRU, TPRNN

D64 = torch.float64
# (TP class, torch.nn class, extra constructor keywords for both)
PAIRS = [(TPRNN, torch.nn.RNN, {}), (TPRNN, torch.nn.RNN, {"nonlinearity": "relu"}), (TPGRU, torch.nn.GRU, {})]
PAIR_IDS = ["rnn-tanh", "rnn-relu", "gru"]


def _pair(tp_cls, nn_cls, kwargs, **more):
    """The torch.nn layer (nn's own init) and the TP layer with its weights, rule='bp'."""
    ref = nn_cls(3, 5, **kwargs, **more)
    layer = tp_cls(3, 5, **kwargs, **more, rule="bp")
    layer.load_state_dict(ref.state_dict())
    return layer, ref


@pytest.mark.parametrize("tp_cls,nn_cls,kwargs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("batch_first", [None, True, False])  # None: the default (time first)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_bp_layer_is_the_torch_nn_layer(tp_cls, nn_cls, kwargs, batch_first, batched, with_hx):
    """Same weights, same input: the same outputs, and in float64 the same gradients for the
    parameters, the input and hx."""
    torch.manual_seed(0)
    more = {} if batch_first is None else {"batch_first": batch_first}
    layer, ref = _pair(tp_cls, nn_cls, kwargs, **more, dtype=D64)
    T, B = 7, 4
    shape = ((B, T, 3) if batch_first else (T, B, 3)) if batched else (T, 3)
    x = torch.randn(shape, dtype=D64)
    hx = 0.5 * torch.randn((1, B, 5) if batched else (1, 5), dtype=D64)
    results = []
    for m in (layer, ref):
        m.zero_grad(set_to_none=True)
        xg, hg = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
        out, h_n = m(xg, hg if with_hx else None)
        c_out = torch.linspace(-1, 1, out.numel(), dtype=D64).reshape(out.shape)
        ((out * c_out).sum() + (h_n ** 2).sum()).backward()
        results.append((out, h_n, [w.grad for w in m.parameters()], xg.grad, hg.grad))
    (o1, n1, g1, x1, h1), (o2, n2, g2, x2, h2) = results
    assert o1.shape == o2.shape and n1.shape == n2.shape
    where = f"{nn_cls.__name__}{kwargs} batch_first={batch_first} batched={batched} hx={with_hx}"
    assert_rel(o1, o2, where=where + " output")
    assert_rel(n1, n2, where=where + " h_n")
    for a, b in zip(g1, g2, strict=True):
        assert_rel(a, b, where=where + " parameter grad")
    assert_rel(x1, x2, where=where + " input grad")
    if with_hx:
        assert_rel(h1, h2, where=where + " hx grad")


@pytest.mark.parametrize("tp_cls,nn_cls,kwargs", PAIRS, ids=PAIR_IDS)
def test_float32_outputs_match_torch_nn(tp_cls, nn_cls, kwargs):
    """The default dtype and the default layout, as a user would swap the layer in."""
    torch.manual_seed(1)
    layer, ref = _pair(tp_cls, nn_cls, kwargs)
    x = torch.randn(9, 2, 3)  # (T, B, d)
    for a, b in zip(layer(x), ref(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_forward_takes_torch_nn_keyword_names():
    torch.manual_seed(2)
    for layer, ref in (_pair(TPRNN, torch.nn.RNN, {}, dtype=D64), _pair(TPGRU, torch.nn.GRU, {}, dtype=D64)):
        x, h = torch.randn(6, 2, 3, dtype=D64), torch.randn(1, 2, 5, dtype=D64)
        out, h_n = layer(input=x, hx=h)
        rout, rh_n = ref(input=x, hx=h)
        assert_rel(out, rout, where="forward(input=, hx=)")
        assert_rel(h_n, rh_n, where="forward(input=, hx=) h_n")


def test_positional_arguments_mean_what_they_mean_in_torch_nn():
    args_gru = (3, 5, 1, False, True)  # num_layers, bias, batch_first
    args_rnn = (3, 5, 1, "relu", False, True, 0.0, False)  # num_layers, nonlinearity, bias, batch_first, …
    for tp, ref in ((TPGRU(*args_gru), torch.nn.GRU(*args_gru)), (TPRNN(*args_rnn), torch.nn.RNN(*args_rnn))):
        for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                     "mode"):
            assert getattr(tp, name) == getattr(ref, name), name
        assert set(tp.state_dict()) == set(ref.state_dict())
    gru = TPGRU(3, 5, 1, False)
    assert gru.bias is False and gru.bias_ih_l0 is None and gru.batch_first is False
    assert [n for n, _ in gru.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    assert TPRNN(3, 5, 1, "relu").nonlinearity == "relu"
    # the knobs of target propagation are keyword-only
    with pytest.raises(TypeError):
        TPRNN(3, 5, 1, "tanh", True, False, 0.0, False, None, None, "bp")
    with pytest.raises(TypeError):
        TPGRU(3, 5, 1, True, False, 0.0, False, None, None, "bp")


def test_defaults_are_torch_nn_defaults():
    for tp, ref in ((TPRNN(3, 5), torch.nn.RNN(3, 5)), (TPGRU(3, 5), torch.nn.GRU(3, 5))):
        for name in ("num_layers", "bias", "batch_first", "dropout", "bidirectional", "mode", "proj_size"):
            assert getattr(tp, name) == getattr(ref, name), name
        assert tp.weight_ih_l0.dtype == ref.weight_ih_l0.dtype


@pytest.mark.parametrize("tp_cls,nn_cls,kwargs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_attributes_that_torch_nn_users_read(tp_cls, nn_cls, kwargs, bias):
    layer, ref = tp_cls(3, 5, bias=bias, **kwargs), nn_cls(3, 5, bias=bias, **kwargs)
    assert layer.mode == ref.mode and layer.proj_size == ref.proj_size == 0
    assert (layer.num_layers, layer.bidirectional, layer.dropout) == (ref.num_layers, ref.bidirectional, ref.dropout)
    assert [[tuple(w.shape) for w in ws] for ws in layer.all_weights] == \
           [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
    assert all(w is getattr(layer, n) for ws, names in zip(layer.all_weights, layer._all_weights)
               for w, n in zip(ws, names))
    assert layer._all_weights == ref._all_weights
    assert layer.flatten_parameters() is None
    assert list(layer.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(layer.state_dict())  # strict, both ways
    layer.load_state_dict(ref.state_dict())
    assert repr(layer).startswith(type(layer).__name__ + "(3, 5")


def test_settings_are_checked_on_assignment_too():
    layer = TPGRU(3, 5)
    for name in ("batch_first", "through_time", "check_finite"):
        with pytest.raises(TypeError, match=f"{name} should be of type bool"):
            setattr(layer, name, 1)
    layer.batch_first = True
    assert layer(torch.randn(2, 6, 3))[0].shape == (2, 6, 5)


def test_mode_of_the_other_activations():
    layer = TPRNN(3, 5, nonlinearity="sigmoid")
    assert layer.mode == "RNN_SIGMOID"
    layer.nonlinearity = "relu"  # the mode follows the activation
    assert layer.mode == "RNN_RELU"


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
@pytest.mark.parametrize("kwargs,error,match", [
    ({"bias": 1}, TypeError, "bias should be of type bool"),
    ({"bias": "False"}, TypeError, "bias should be of type bool"),
    ({"batch_first": 1}, TypeError, "batch_first should be of type bool"),
    ({"bidirectional": 0}, TypeError, "bidirectional should be of type bool"),
    ({"input_size": 3.0}, TypeError, "input_size should be of type int"),
    ({"input_size": True}, TypeError, "input_size should be of type int"),
    ({"hidden_size": "5"}, TypeError, "hidden_size should be of type int"),
    ({"input_size": 0}, ValueError, "input_size must be greater than zero"),
    ({"hidden_size": -2}, ValueError, "hidden_size must be greater than zero"),
    ({"num_layers": 0}, ValueError, "num_layers must be greater than zero"),
    ({"num_layers": 1.0}, TypeError, "num_layers should be of type int"),
    ({"dropout": 1.5}, ValueError, "dropout should be a number in range"),
    ({"dropout": -0.1}, ValueError, "dropout should be a number in range"),
    ({"dropout": True}, ValueError, "dropout should be a number in range"),
    ({"dropout": "0.1"}, ValueError, "dropout should be a number in range"),
    ({"through_time": 1}, TypeError, "through_time should be of type bool"),
    ({"check_finite": "no"}, TypeError, "check_finite should be of type bool"),
])
def test_bad_arguments(cls, kwargs, error, match):
    args = {"input_size": 3, "hidden_size": 5, **kwargs}
    with pytest.raises(error, match=match) as info:
        cls(**args)
    assert isinstance(info.value, ValueError)  # a type error is also a ValueError, as the other checks


@pytest.mark.parametrize("kwargs,error", [({"bias": 1}, TypeError), ({"batch_first": 1}, TypeError),
                                          ({"input_size": 3.0}, TypeError), ({"hidden_size": 0}, ValueError),
                                          ({"num_layers": 0}, ValueError), ({"dropout": 1.5}, ValueError)])
def test_torch_nn_refuses_the_same_arguments_with_the_same_error_types(kwargs, error):
    args = {"input_size": 3, "hidden_size": 5, **kwargs}
    for cls in (torch.nn.RNN, TPRNN, torch.nn.GRU, TPGRU):
        with pytest.raises(error):
            cls(**args)


def test_nonlinearity_names():
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        TPRNN(3, 5, nonlinearity="gelu")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        TPRNN(3, 5, 1, 2)
    with pytest.raises(ValueError):
        torch.nn.RNN(3, 5, nonlinearity="gelu")
    with pytest.raises(TypeError):
        TPGRU(3, 5, nonlinearity="tanh")  # as torch.nn.GRU, no such argument


@pytest.mark.parametrize("cls", [TPRNN, TPGRU])
def test_dropout_with_one_layer_warns_and_changes_nothing(cls):
    """As torch.nn: dropout acts between stacked layers, so with one layer it is accepted, warned
    about and without effect, in training mode too."""
    torch.manual_seed(3)
    plain = cls(3, 5, rule="bp", dtype=D64)
    with pytest.warns(UserWarning, match="no effect"):
        dropped = cls(3, 5, dropout=0.5, rule="bp", dtype=D64)
    with pytest.warns(UserWarning):
        getattr(torch.nn, cls.__name__[2:])(3, 5, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    assert dropped.dropout == 0.5 and dropped.training
    x = torch.randn(5, 2, 3, dtype=D64)
    assert torch.equal(dropped(x)[0], plain(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(3, 5, dropout=0)
        cls(3, 5, dropout=0.0)
        cls(3, 5, 2, dropout=0.5)


@pytest.mark.parametrize("tp_cls,nn_cls,kwargs", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_stacked_bidirectional_unbatched_and_packed_inputs_give_torch_nn_shapes_and_values(tp_cls, nn_cls, kwargs,
                                                                                         batch_first):
    """Two layers, both directions, dropout in eval mode: an unbatched sequence (h_n (L·D, p)) and a
    PackedSequence (batch_first does not apply to it, as in torch.nn) give what torch.nn gives."""
    torch.manual_seed(4)
    layer, ref = _pair(tp_cls, nn_cls, kwargs, num_layers=2, bidirectional=True, dropout=0.3,
                       batch_first=batch_first, dtype=D64)
    layer.eval(), ref.eval()
    x = torch.randn(5, 3, dtype=D64)
    for a, b in zip(layer(x), ref(x), strict=True):
        assert a.shape == b.shape
        assert_rel(a, b, where="unbatched stacked")
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(n, 3, dtype=D64) for n in (4, 6, 2)], enforce_sorted=False)
    (o1, n1), (o2, n2) = layer(packed), ref(packed)
    assert isinstance(o1, torch.nn.utils.rnn.PackedSequence) and torch.equal(o1.batch_sizes, o2.batch_sizes)
    assert_rel(o1.data, o2.data, where="packed output")
    assert_rel(n1, n2, where="packed h_n")


def test_hx_shape_is_checked():
    layer = TPRNN(3, 5)
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 2, 5\)"):
        layer(torch.randn(4, 2, 3), torch.zeros(1, 4, 5))  # time first: B = 2
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 5\)"):
        layer(torch.randn(4, 3), torch.zeros(1, 1, 5))


def test_time_first_by_default():
    """The default layout is (T, B, d): B = 2 sequences of T = 6 steps here."""
    layer = TPRNN(3, 5)
    out, h_n = layer(torch.randn(6, 2, 3))
    assert out.shape == (6, 2, 5) and h_n.shape == (1, 2, 5)
    assert torch.equal(out[-1], h_n[0])


# ---------------------------------------------------------------- no silent second-order answers
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("cls,rule", [(TPRNN, "bp"), (TPRNN, "linearized"), (TPGRU, "bp"), (TPGRU, "linearized")])
@pytest.mark.parametrize("loss_kind", ["linear", "head"])
def test_create_graph_through_the_layer_is_a_clear_error(cls, rule, loss_kind):
    """A gradient penalty through a TP layer would need the layer's second derivatives, which its
    backward does not build: asking for them (create_graph=True) raises, whether or not the
    incoming gradient carries a graph (a loss linear in the outputs: it does not)."""
    torch.manual_seed(4)
    layer = cls(3, 5, rule=rule, dtype=D64)
    head = torch.nn.Linear(5, 1, dtype=D64)
    x = torch.randn(6, 2, 3, dtype=D64, requires_grad=True)
    out, h_n = layer(x)
    loss = out.sum() if loss_kind == "linear" else head(torch.tanh(h_n[-1])).pow(2).sum()
    with pytest.raises(RuntimeError, match="create_graph=True") as info:
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        (loss + (gx ** 2).sum()).backward()  # a gradient penalty (torch.nn: its second-order terms)
    assert "second-order terms" in str(info.value)
    out, h_n = layer(x)
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        h_n.pow(2).sum().backward(create_graph=True)
    # an ordinary backward still works, and create_graph away from the layer is not refused
    layer.zero_grad()
    out, h_n = layer(x)
    loss = head(h_n[-1]).pow(2).sum()
    (gw,) = torch.autograd.grad(loss, head.weight, create_graph=True)
    (loss + gw.pow(2).sum()).backward()
    assert layer.weight_hh_l0.grad is not None and torch.isfinite(layer.weight_hh_l0.grad).all()


# ---------------------------------------------------------------- the README's example
def test_readme_use_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    use = readme[readme.index("## Use"):]
    code = re.search(r"```python\n(.*?)```", use, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md (Use)", "exec"), scope)
    rnn, x = scope["rnn"], scope["x"]
    assert rnn.batch_first and scope["out"].shape == (x.shape[0], x.shape[1], 100)
    assert rnn.weight_hh_l0.grad is not None and scope["h_n"].shape == (1, x.shape[0], 100)
