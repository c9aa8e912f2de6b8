"""The trainer: it learns temporal order at T=10 with TP and BP, writes its run files, detects
divergence and failures, survives Ctrl-C, and refuses bad settings before writing anything."""
import csv
import json
import math

import pytest
import torch

import targetprop
from targetprop.tasks.synthetic import TemporalOrder
from targetprop.training.trainer import Trainer, TrainConfig
from targetprop.training.outcome import Diverged
from targetprop.training.rundir import METRICS, read_metrics
from targetprop.training.state import RunState

# T=10 temporal order: the authors' T=60 TP settings reach 100% within 300-600
# iterations on seeds 0-5; BP with Adam within 100. Budgets leave a wide margin.
TP = dict(rule="linearized", lr=0.1, target_step=1e-2, reg=10.0)
BP = dict(rule="bp", optimizer="adam", lr=1e-2)
SMALL = dict(task="temporal-order", length=10, test_size=300, eval_every=50, stop_at_accuracy=1.0)


def config(*methods, **overrides) -> TrainConfig:
    """A small temporal-order config that runs its full budget (no early stop) unless told."""
    values = {**SMALL, "stop_at_accuracy": None}
    for m in methods:
        values.update(m)
    return TrainConfig(**{**values, **overrides})


def files(folder) -> dict:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method,budget", [(TP, 1500), ({**TP, "through_time": True}, 1000), (BP, 500)],
                         ids=["tp", "tp-through-time", "bp-adam"])
def test_reaches_100_percent_on_temporal_order_T10(method, budget, tmp_path):
    cfg = TrainConfig(**SMALL, **method, iterations=budget, seed=1)
    summary = Trainer(cfg).run(tmp_path / "run")
    assert summary["status"] == "completed", summary
    assert summary["final_test_accuracy"] == 1.0
    assert summary["iteration_to_100"] is not None and summary["iterations"] == summary["iteration_to_100"]
    assert summary["iterations"] < budget  # stopped early
    metrics = read_metrics(tmp_path / "run")
    assert metrics["iteration"][-1] == summary["iterations"] and metrics["test_accuracy"][-1] == 1.0
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]


def test_run_files(tmp_path):
    cfg = config(BP, iterations=120, seed=2, label="mine")
    summary = Trainer(cfg).run(tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["version"] == targetprop.__version__
    assert saved["config"] == cfg.to_dict() and TrainConfig.from_dict(saved["config"]) == cfg
    with open(tmp_path / "r" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(METRICS)
    assert [int(r["iteration"]) for r in rows] == [0, 50, 100, 120]  # the last iteration is logged too
    assert rows[0]["batch_loss"] == "" and float(rows[1]["batch_loss"]) > 0
    times = [float(r["wall_time"]) for r in rows]
    assert times == sorted(times) and float(rows[0]["time"]) == 0.0
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    assert summary["status"] == "completed" and summary["iterations"] == 120 and summary["label"] == "mine"
    assert summary["final_test_accuracy"] == float(rows[-1]["test_accuracy"])
    accuracies = [float(r["test_accuracy"]) for r in rows]
    assert summary["best_test_accuracy"] == max(accuracies)
    assert summary["best_at"] == int(rows[accuracies.index(max(accuracies))]["iteration"])
    assert summary["wall_time"] >= summary["train_time"] > 0


def test_same_settings_give_the_same_run():
    cfg = config(TP, iterations=30, eval_every=10, seed=4)
    a, b = Trainer(cfg), Trainer(cfg)
    a.run(), b.run()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    c = Trainer(config(TP, iterations=30, seed=5))
    c.run()
    assert not torch.equal(c.model.rnn.weight_hh_l0, a.model.rnn.weight_hh_l0)


def test_adding_task_with_mse(tmp_path):
    cfg = TrainConfig(task="adding", length=10, test_size=200, iterations=20, eval_every=10,
                      task_options={"criterion": "absolute"}, **BP)
    trainer = Trainer(cfg)
    assert trainer.task.criterion == "absolute" and trainer.model.head.out_features == 1
    summary = trainer.run()
    assert summary["status"] == "completed" and 0 <= summary["final_test_accuracy"] <= 1
    assert summary["final_train_loss"] < 1.0


# ---------------------------------------------------------------------------- divergence and failures


def test_exploding_loss_is_diverged(tmp_path):
    cfg = config(rule="bp", lr=50.0, momentum=0.9, iterations=200,
                      eval_every=10, seed=0)
    summary = Trainer(cfg).run(tmp_path / "d")
    assert summary["status"] == "diverged"
    assert "times its initial value" in summary["message"] or "nan" in summary["message"].lower()
    assert summary["iterations"] < 200
    rows = read_metrics(tmp_path / "d")
    assert rows["iteration"][-1] <= summary["iterations"] and len(rows["iteration"]) >= 2


def test_divergence_rules():
    state = RunState(iteration=7)
    state.check_divergence(1.4, 2.0)  # the first value sets the reference
    state.check_divergence(2.79, 2.0)
    with pytest.raises(Diverged, match="loss 2.81 at iteration 7 exceeds 2 times its initial value 1.4"):
        state.check_divergence(2.81, 2.0)
    with pytest.raises(Diverged, match="the training loss is nan at iteration 7"):
        state.check_divergence(math.nan, 2.0)
    patient = RunState()
    patient.check_divergence(1.0, None)
    patient.check_divergence(1e6, None)  # no factor: only NaN/inf stop the run
    with pytest.raises(Diverged, match="the training loss is inf"):
        patient.check_divergence(math.inf, None)
    strict = RunState()
    strict.check_divergence(1.0, 1.5)
    with pytest.raises(Diverged, match="exceeds 1.5 times"):
        strict.check_divergence(1.51, 1.5)


def test_nan_weights_stop_as_diverged(tmp_path):
    trainer = Trainer(config(BP, iterations=10))
    with torch.no_grad():
        trainer.model.head.weight.fill_(math.nan)
    summary = trainer.run(tmp_path / "n")
    assert summary["status"] == "diverged" and summary["final_test_loss"] is None  # NaN written as null
    assert json.loads((tmp_path / "n" / "summary.json").read_text())["status"] == "diverged"


def test_failed_inverse_stops_cleanly(tmp_path):
    trainer = Trainer(config(TP, iterations=100, eval_every=1))
    original = trainer.step

    def step(iteration):  # weights that overflow W_hhᵀW_hh in float32 after 3 iterations
        if iteration == 3:
            with torch.no_grad():
                trainer.model.rnn.weight_hh_l0.mul_(1e30)
        return original(iteration)

    trainer.step = step
    summary = trainer.run(tmp_path / "f")
    assert summary["status"] == "failed" and summary["message"].startswith("RegularizedInverseError")
    assert summary["iterations"] == 3
    assert read_metrics(tmp_path / "f")["iteration"] == [0, 1, 2, 3]


class InterruptedTask(TemporalOrder):
    def train_batch(self, iteration):
        if iteration == 25:
            raise KeyboardInterrupt
        return super().train_batch(iteration)


def test_ctrl_c_leaves_valid_files(tmp_path):
    cfg = config(BP, iterations=100, eval_every=10)
    summary = Trainer(cfg, task=InterruptedTask(10, test_size=300)).run(tmp_path / "i")
    assert summary["status"] == "interrupted" and summary["iterations"] == 25
    assert read_metrics(tmp_path / "i")["iteration"] == [0, 10, 20]
    assert json.loads((tmp_path / "i" / "summary.json").read_text())["status"] == "interrupted"


# ---------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("values, text", [
    ({"rule": "bp", "lr": 0.01}, "bp, sgd lr=0.01"),
    ({"cell": "gru", "rule": "bp", "lr": 0.01, "momentum": 0.9, "nesterov": True, "clip": 1.0},
     "gru bp, sgd lr=0.01 nesterov=0.9 clip=1"),
    ({"cell": "gru", "rule": "linearized", "through_time": True, "target_step": 0.01, "reg": 1.0, "lr": 0.1},
     "gru linearized through time γh=0.01 r=1, sgd lr=0.1"),
])
def test_method_description_names_the_cell_rule_and_optimizer(values, text):
    assert TrainConfig(**values).method() == text


def test_optimizers_are_torch_optim():
    opt = Trainer(TrainConfig(**SMALL, rule="bp", lr=1e-5, momentum=0.9, nesterov=True)).optimizer
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 1e-5
    assert type(Trainer(TrainConfig(**SMALL, **BP)).optimizer) is torch.optim.Adam


def test_layer_options_reach_the_layer():
    trainer = Trainer(config(TP, nonlinearity="sigmoid", layer_options={"check_finite": False}))
    assert trainer.model.rnn.nonlinearity == "sigmoid" and trainer.model.rnn.check_finite is False
    assert Trainer(config(TP)).model.rnn.nonlinearity == "tanh"  # the cell's own default


def test_clip_bounds_the_direction():
    trainer = Trainer(TrainConfig(**SMALL, **TP, clip=1e-3))
    trainer.step(0)
    total = torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm()
    assert total <= 1e-3 * (1 + 1e-5)


# ---------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("values,match", [
    ({"task": "sorting"}, "task must be one of"),
    ({"length": 0}, "length"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1}, "lr"),
    ({"target_step": 0}, "target_step"),
    ({"reg": -1.0}, "reg"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"nesterov": True}, "nesterov needs a positive momentum"),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum applies"),
    ({"iterations": 0}, "iterations"),
    ({"stop_at_accuracy": 1.5}, "stop_at_accuracy"),
    ({"divergence_factor": 0.5}, "divergence_factor"),
    ({"dtype": "float16"}, "dtype"),
    ({"device": "gpu"}, "device"),
    ({"through_time": "yes"}, "through_time"),
    ({"layer_options": [1]}, "layer_options"),
    ({"layer_options": {"tol": 0.1, "hidden_size": 3}}, "layer_options may not set hidden_size, tol"),
    ({"bogus": 1, "other": 2}, "unknown setting\\(s\\): bogus, other"),
])
def test_bad_config(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize("values,match", [({"rule": "backprop"}, "rule must be one of"),
                                          ({"nonlinearity": "gelu"}, "gelu"),
                                          ({"task_options": {"k": 2}}, "does not take option"),
                                          ({"layer_options": {"proj_size": 2}}, "does not take option.*proj_size"),
                                          ({"layer_options": {"num_layers": 0}}, "num_layers")])
def test_bad_settings_found_when_building(values, match):
    with pytest.raises(ValueError, match=match):
        Trainer(TrainConfig.from_dict({**SMALL, **values}))


def test_run_directory_rules(tmp_path):
    cfg = config(BP, iterations=5, eval_every=5)
    out = tmp_path / "run"
    Trainer(cfg).run(out)
    before = files(out)
    other = config(BP, iterations=6, eval_every=5)
    with pytest.raises(ValueError, match="different settings.*iterations: 5 → 6.*--overwrite"):
        Trainer(other).run(out)
    assert files(out) == before  # nothing touched
    assert Trainer(other).run(out, overwrite=True)["iterations"] == 6
    assert Trainer(other).run(out)["iterations"] == 6  # same settings: starts over
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no run"):
        Trainer(cfg).run(tmp_path / "busy")
    with pytest.raises(ValueError, match="not a directory"):
        Trainer(cfg).run(tmp_path / "busy" / "notes.txt")
