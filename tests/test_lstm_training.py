"""`--cell lstm` through the command line and the trainer: a short run, a run stopped and resumed
bit-identical to an uninterrupted one, and diagnose on an LSTM run."""
import json
import math

import pytest
import torch

from targetprop import TPLSTM, forget_bias_
from targetprop.cli import main
from targetprop.training import checkpoint, rundir
from targetprop.training.rundir import read_metrics
from targetprop.training.trainer import TrainConfig, Trainer
from test_resume import StopAt, assert_same_run, ctrl_c

COMMON = ["--task", "temporal-order", "--length", "10", "--hidden-size", "8", "--test-size", "50", "--cell", "lstm"]


def test_train_with_the_lstm_completes_with_a_finite_loss(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--iterations", "20", "--eval-every", "10", "--quiet", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 20
    metrics = read_metrics(run)
    assert metrics["iteration"] == [0, 10, 20]
    assert all(math.isfinite(v) for k in ("train_loss", "test_loss") for v in metrics[k])
    assert json.loads((run / "config.json").read_text())["config"]["cell"] == "lstm"
    model = checkpoint.latest(rundir.checkpoint_dir(run)).payload["model"]
    assert model["rnn.weight_hh_l0"].shape == (32, 8)  # four gates of 8 units
    assert torch.isfinite(model["rnn.weight_hh_l0"]).all()


def test_an_lstm_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path):
    config = TrainConfig(task="temporal-order", length=10, hidden_size=8, test_size=50, eval_every=7, iterations=40,
                         cell="lstm", rule="linearized", reg=1.0, lr=0.1, momentum=0.9,
                         task_options={"train_eval_size": 100})
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    Trainer(config).run(whole, checkpoint_every=10)
    stopped = Trainer(config, task=StopAt(config, 26, ctrl_c)).run(parts, checkpoint_every=10)
    assert stopped["status"] == "interrupted" and stopped["iterations"] == 26
    resumed = Trainer(config).run(parts, resume=True, checkpoint_every=10)
    assert resumed["status"] == "completed" and resumed["iterations"] == 40
    assert_same_run(parts, whole)


def test_diagnose_reads_an_lstm_run(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "d.json"
    assert main(["train", *COMMON, "--iterations", "5", "--eval-every", "5", "--quiet", "--out", str(run)]) == 0
    assert main(["diagnose", "--run", str(run), "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["cosine_with_bp"]) == {"linearized", "linearized-through-time", "bp"}
    for rule, cosines in saved["cosine_with_bp"].items():
        assert set(cosines) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
        assert all(math.isfinite(c) and -1 <= c <= 1 for c in cosines.values()), rule
    assert all(abs(c - 1) < 1e-6 for c in saved["cosine_with_bp"]["bp"].values())
    assert len(saved["bp_adjoint_norm"]) == 10 and all(math.isfinite(d) for d in saved["bp_adjoint_norm"])


def test_the_trainers_lstm_starts_its_forget_gates_at_bias_1_and_other_cells_refuse_it():
    p = 8
    config = TrainConfig(task="temporal-order", length=10, hidden_size=p, cell="lstm")
    assert config.forget_bias == 1.0 and config.to_dict()["forget_bias"] == 1.0  # recorded in config.json
    rnn = Trainer(config).model.rnn
    assert rnn.bias_ih_l0[p:2 * p].tolist() == [1.0] * p and rnn.bias_hh_l0[p:2 * p].tolist() == [0.0] * p
    others = torch.cat([rnn.bias_ih_l0[:p], rnn.bias_ih_l0[2 * p:], rnn.bias_hh_l0])
    assert others.abs().max().item() == 0.0  # the orthogonal init's zero biases elsewhere
    zero = Trainer(TrainConfig(task="temporal-order", length=10, hidden_size=p, cell="lstm", forget_bias=0.0))
    assert zero.model.rnn.bias_ih_l0.abs().max().item() == 0.0  # the paper's zero biases
    assert TrainConfig(cell="rnn").forget_bias is None and "forget_bias" in TrainConfig(cell="gru").to_dict()
    with pytest.raises(ValueError, match="forget_bias applies to cell 'lstm', not 'gru'"):
        TrainConfig(cell="gru", forget_bias=1.0)


def test_forget_bias_sets_every_layer_and_direction_of_ours_and_torch_nns_lstm():
    for layer in (torch.nn.LSTM(3, 5, 2, bidirectional=True), TPLSTM(3, 5, 2, bidirectional=True)):
        assert forget_bias_(layer, 2.5) is layer
        names = [n for n, _ in layer.named_parameters() if n.startswith("bias_")]
        assert len(names) == 8
        for name, b in layer.named_parameters():
            if name.startswith("bias_"):
                want = 2.5 if name.startswith("bias_ih") else 0.0
                assert b[5:10].tolist() == [want] * 5, name
    with pytest.raises(ValueError, match="4 × hidden_size"):
        forget_bias_(torch.nn.GRU(3, 5))
    with pytest.raises(ValueError, match="bias=False"):
        forget_bias_(torch.nn.LSTM(3, 5, bias=False))
