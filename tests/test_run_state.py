"""The loop's own state (RunState) and what a run records about itself: clocks that leave out the
kernels' first build, the world size, LF-only logs after a continued run, tol's bounds."""
import json
import math
import time

import pytest
import torch
from helpers import cli_fails

from targetprop import hyperparams
from targetprop.cli import main
from targetprop.training import config as settings, loop
from targetprop.training.config import TrainConfig
from targetprop.training.distributed import World
from targetprop.training.state import RunState
from targetprop.training.trainer import Trainer

TINY = ["--length", "10", "--iterations", "20", "--eval-every", "10", "--test-size", "50",
        "--hidden-size", "8", "--quiet"]
SMALL = dict(task="temporal-order", length=10, hidden_size=8, test_size=50, eval_every=10, iterations=20,
             rule="bp", optimizer="adam", lr=1e-2)


def test_run_state_steps_points_and_best():
    state = RunState(checkpoint_every=4, diagnose_every=0)
    for loss in (1.0, 3.0):
        state.add_step(torch.tensor(loss, dtype=torch.float64), 0.5)
    assert (state.iteration, state.train_time, state.loss_count) == (2, 1.0, 2)
    assert state.take_batch_losses(World()) == (2.0, 2) and state.loss_count == 0 and state.loss_sum.item() == 0
    assert math.isnan(state.take_batch_losses(World())[0])
    state.record({"test_accuracy": 0.5})
    state.record({"test_accuracy": 0.25})
    assert state.best == (0.5, 2) and state.rows == 2 and state.reached_at is None
    state.iteration = 8
    state.record({"test_accuracy": 1.0})
    assert state.best == (1.0, 8) and state.reached_at == 8
    assert state.at_checkpoint() and not state.at_diagnosis() and state.at_evaluation(3, 8)
    assert not state.at_evaluation(3, 9)


def test_run_state_round_trips_through_its_state_dict():
    state = RunState(iteration=5, initial_loss=1.25, best=(0.75, 3), rows=2, last={"test_accuracy": 0.5})
    state.add_step(torch.tensor(2.0, dtype=torch.float64), 0.25)
    state.start_clock()
    saved = state.state_dict()
    assert set(saved) == {"iteration", "initial_loss", "reached_at", "best", "train_time", "wall_time", "rows",
                          "last", "loss_sum", "loss_count", "finished", "stopped_early"}
    back = RunState(checkpoint_every=7)
    back.load_state_dict(saved)
    assert (back.iteration, back.initial_loss, back.best, back.rows, back.last) == (6, 1.25, (0.75, 3), 2,
                                                                                      {"test_accuracy": 0.5})
    assert back.loss_sum.item() == 2.0 and back.loss_count == 1 and back.train_time == 0.25
    assert back.checkpoint_every == 7  # the cadence is the session's, not the checkpoint's
    assert back.elapsed() == saved["wall_time"]  # no clock started yet: the earlier sessions' time


@pytest.mark.parametrize("name,value", [("checkpoint_every", -1), ("diagnose_every", 1.5), ("checkpoint_every", True)])
def test_a_bad_cadence_is_a_value_error(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a non-negative integer"):
        RunState(**{name: value})


def test_wall_time_leaves_out_the_kernels_first_build(tmp_path, monkeypatch):
    calls, load = [], loop.kernels.load

    def slow_first_build(required=False):  # the first call builds, as on a fresh machine; then cached
        if not calls:
            time.sleep(2.0)
        calls.append(time.perf_counter())
        return load(required)

    monkeypatch.setattr(loop.kernels, "load", slow_first_build)
    summary = Trainer(TrainConfig(**SMALL)).run(tmp_path / "r")
    assert calls and summary["status"] == "completed"
    assert summary["wall_time"] < 2.0, summary["wall_time"]
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert float(rows[1].split(",")[2]) < 2.0  # the first row's wall_time too


def test_a_run_records_its_world_size(tmp_path):
    assert main(["train", *TINY, "--rule", "bp", "--out", str(tmp_path / "r")]) == 0
    config_env = json.loads((tmp_path / "r" / "config.json").read_text())["environment"]
    summary_env = json.loads((tmp_path / "r" / "summary.json").read_text())["environment"]
    assert config_env["world_size"] == 1 and summary_env["world_size"] == 1


def test_a_continued_run_writes_lf_line_ends_only(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--rule", "bp", "--eval-every", "5", "--checkpoint-every", "10",
                 "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--iterations", "40", "--quiet"]) == 0
    data = (out / "metrics.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 1 + 9  # header, iterations 0, 5, …, 40


def test_tol_has_the_layers_bounds_everywhere(tmp_path, capsys):
    assert settings.settings()["tol"][0].bounds == hyperparams.TOL.bounds == (0.0, 0.5, True, True)
    assert settings.settings()["reg"][1] == hyperparams.REG.default
    with pytest.raises(ValueError, match=r"tol must be a real number in \(0, 0.5\), got 0.5"):
        TrainConfig(tol=0.5)
    cli_fails(["train", *TINY, "--tol", "0.5", "--out", str(tmp_path / "r")], capsys, "tol")
    assert not (tmp_path / "r").exists()
    assert Trainer(TrainConfig(**{**SMALL, "rule": "linearized"}, tol=0.4999)).model.rnn.tol == 0.4999
