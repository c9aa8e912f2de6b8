"""The trained network: a TP layer read out by a linear head at its last state, orthogonal init."""
import pytest
import torch

from helpers import assert_rel
from targetprop.init import orthogonal_
from targetprop.training.models import MODELS, SequenceModel


def test_sequence_model_shapes_and_orthogonal_init():
    model = SequenceModel("rnn", 6, 16, 4, generator=torch.Generator().manual_seed(0), rule="bp")
    assert model(torch.randn(5, 9, 6)).shape == (5, 4)
    w = model.rnn.weight_hh_l0.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-5, rtol=0)
    h = model.head.weight.detach()  # (4, 16): orthonormal rows
    torch.testing.assert_close(h @ h.T, torch.eye(4), atol=1e-5, rtol=0)
    assert model.rnn.bias_hh_l0.abs().sum() == 0 and model.head.bias.abs().sum() == 0
    same = SequenceModel("rnn", 6, 16, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same.rnn.weight_ih_l0, model.rnn.weight_ih_l0)
    assert "rnn" in MODELS
    expected = orthogonal_(torch.empty(16, 6), torch.Generator().manual_seed(0))
    assert torch.equal(model.rnn.weight_ih_l0.detach(), expected)  # first draw: W_ih


def test_sequence_model_output_is_head_of_last_state():
    model = SequenceModel("rnn", 2, 8, 1, init="default", rule="linearized", reg=3.0, dtype=torch.float64)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    _, h_n = model.rnn(x)
    torch.testing.assert_close(model(x), model.head(h_n[0]))
    assert model.rnn.reg == 3.0 and model.head.weight.dtype == torch.float64



@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_stacked_bidirectional_model_reads_both_directions_of_the_last_layer(cell):
    model = SequenceModel(cell, 2, 6, 3, num_layers=2, bidirectional=True, rule="bp", dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    assert model.head.weight.shape == (3, 12)
    x = torch.randn(4, 7, 2, dtype=torch.float64)
    out, h_n = model.rnn(x)
    if cell == "lstm":  # (h_n, c_n): the head reads h_n
        h_n, c_n = h_n
        assert c_n.shape == h_n.shape and not torch.equal(c_n, h_n)
    assert h_n.shape == (4, 4, 6)
    torch.testing.assert_close(h_n[-2], out[:, -1, :6], rtol=0, atol=0)  # forward: its state at step T
    torch.testing.assert_close(h_n[-1], out[:, 0, 6:], rtol=0, atol=0)  # reverse: its state at step 1
    torch.testing.assert_close(model(x), model.head(torch.cat([h_n[2], h_n[3]], -1)), rtol=0, atol=0)

@pytest.mark.parametrize("kwargs,match", [({"cell": "transformer"}, "unknown cell"), ({"init": "xavier"}, "init"),
                                          ({"rule": "nope"}, "rule"),
                                          ({"proj_size": 2}, "'rnn' layer \\(TPRNN\\) does not take option\\(s\\) proj_size"),
                                          ({"batch_first": False}, "the model sets batch_first"),
                                          ({"num_layers": 0}, "num_layers")])
def test_sequence_model_bad_arguments(kwargs, match):
    args = {"cell": "rnn", **kwargs}
    cell = args.pop("cell")
    with pytest.raises(ValueError, match=match):
        SequenceModel(cell, 2, 4, 1, **args)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_lstm_model_with_bp_has_torch_nn_lstms_gradients(bidirectional):
    """The trainer's model as build_model makes it (--cell lstm --rule bp, float64) against the same
    network written with torch.nn.LSTM and the same weights: the same outputs and gradients."""
    from targetprop.training.build import build_model, build_task
    from targetprop.training.config import TrainConfig

    config = TrainConfig(task="temporal-order", length=9, batch_size=5, hidden_size=7, cell="lstm", rule="bp",
                         dtype="float64", layer_options={"num_layers": 2, "bidirectional": bidirectional})
    task = build_task(config)
    ours = build_model(config, task)
    assert type(ours.rnn).__name__ == "TPLSTM" and ours.rnn.rule == "bp"
    rnn = torch.nn.LSTM(task.input_size, 7, 2, batch_first=True, bidirectional=bidirectional, dtype=torch.float64)
    rnn.load_state_dict(ours.rnn.state_dict())
    head = torch.nn.Linear(ours.head.in_features, task.output_size, dtype=torch.float64)
    head.load_state_dict(ours.head.state_dict())
    x, y = task.train_batch(0)
    x = x.to(torch.float64)
    h_n = rnn(x)[1][0]
    theirs = head(torch.cat([h_n[-2], h_n[-1]], -1) if bidirectional else h_n[-1])
    assert_rel(ours(x), theirs, where="lstm model output")
    for model in (ours, (rnn, head)):
        out = model(x) if model is ours else theirs
        torch.nn.functional.cross_entropy(out, y).backward()
    grads = dict(rnn.named_parameters()) | {f"head.{k}": v for k, v in head.named_parameters()}
    for name, w in ours.named_parameters():
        assert_rel(w.grad, grads[name.removeprefix("rnn.")].grad, where=f"lstm model {name}")
