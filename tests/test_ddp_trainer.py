"""The trainer data-parallel (gloo on the CPU, over loopback): two processes, each on its half of
every batch, end with the parameters and the metrics of one process on the whole batch, for
``linearized`` and ``bp``; ``torchrun -m targetprop train`` does the same from the command line.
Every spawned process is bounded in time. Plus the pieces: sharding, the torchrun environment,
devices, batch sizes that do not split."""
import json
from pathlib import Path

import pytest
import torch

from processes import max_rel_diff, spawn, torchrun
from targetprop.training import checkpoint, distributed, rundir
from targetprop.cli import main
from targetprop.training.distributed import World
from targetprop.training.trainer import Trainer, TrainConfig
from targetprop.training.rundir import read_metrics

RULES = {"linearized": dict(rule="linearized", reg=1.0, target_step=0.1, lr=0.5, momentum=0.9),
         "bp": dict(rule="bp", lr=0.5, momentum=0.9)}
DDP = dict(task="temporal-order", length=10, hidden_size=8, batch_size=20, test_size=51, iterations=6,
           eval_every=3, dtype="float64", seed=3, task_options={"train_eval_size": 101})  # odd: uneven eval shards


def ddp_config(rule: str) -> TrainConfig:
    return TrainConfig(**DDP, **RULES[rule])


def _worker(rank, size, outs):
    world = World(rank, size, rank)
    for rule, out in outs.items():
        Trainer(ddp_config(rule), world=world).run(out, checkpoint_every=0)


def final_model(run) -> dict:
    return checkpoint.latest(rundir.checkpoint_dir(run)).payload["model"]


def assert_same_training(ddp_run, single_run, rule, how="spawned") -> float:
    """Parameters and metrics of the two runs agree to float64 rounding; returns the worst
    relative parameter difference."""
    worst = max_rel_diff(final_model(ddp_run), final_model(single_run))
    print(f"DDP trainer ({rule}, {how}): max relative parameter difference, 2 processes vs 1: {worst:.2e}")
    assert worst < 1e-12, worst
    a, b = read_metrics(ddp_run), read_metrics(single_run)
    assert a["iteration"] == b["iteration"] == [0, 3, 6]  # one row per point: only process 0 wrote
    assert a["test_accuracy"] == b["test_accuracy"] and a["train_accuracy"] == b["train_accuracy"]
    for column in ("batch_loss", "train_loss", "test_loss"):
        assert a[column][1:] == pytest.approx(b[column][1:], rel=1e-12, abs=0), column
    moved = (final_model(single_run)["rnn.weight_hh_l0"] - Trainer(ddp_config(rule)).model.rnn.weight_hh_l0).abs()
    assert moved.max() > 1e-3  # the recurrent weights really trained
    return worst


def test_two_processes_train_as_one_on_the_whole_batch(tmp_path):
    outs = {rule: tmp_path / f"ddp-{rule}" for rule in RULES}
    spawn(_worker, outs)
    for rule, out in outs.items():
        single = tmp_path / f"single-{rule}"
        Trainer(ddp_config(rule)).run(single, checkpoint_every=0)
        assert json.loads((out / "summary.json").read_text())["status"] == "completed"
        assert_same_training(out, single, rule)


def test_torchrun_command_line(tmp_path, capsys):
    """``torchrun --nproc-per-node 2 -m targetprop train …`` against ``targetprop train …``."""
    argv = ["--length", "10", "--hidden-size", "8", "--batch-size", "20", "--test-size", "51", "--iterations", "6",
            "--eval-every", "3", "--dtype", "float64", "--seed", "3", "--task-option", "train_eval_size=101",
            "--rule", "bp", "--lr", "0.5", "--momentum", "0.9", "--quiet", "--threads", "1"]
    code, stdout, stderr = torchrun(["-m", "targetprop"], ["train", *argv, "--out", str(tmp_path / "ddp")], {})
    assert code == 0, stderr
    assert stdout.count("completed after 6 iterations") == 1  # printed by process 0 only
    assert main(["train", *argv, "--out", str(tmp_path / "single")]) == 0
    assert_same_training(tmp_path / "ddp", tmp_path / "single", "bp", how="torchrun")


def test_a_lost_process_fails_the_run_naming_it_and_the_same_command_continues(tmp_path):
    """Rank 1 dies (SIGKILL) at step 12: rank 0 ends with one targetprop error line and exit code 4,
    a ``failed`` summary naming rank 1, the checkpoint of iteration 10 kept; run again, the same
    command continues from it and ends as one uninterrupted process would."""
    out = tmp_path / "ddp"
    argv = ["train", "--length", "10", "--hidden-size", "8", "--batch-size", "20", "--test-size", "51",
            "--iterations", "30", "--eval-every", "5", "--dtype", "float64", "--seed", "3", "--rule", "bp",
            "--lr", "0.5", "--checkpoint-every", "5", "--quiet", "--threads", "1", "--out", str(out)]
    code, stdout, stderr = torchrun([str(Path(__file__).with_name("lost_rank.py"))], argv,
                                     {"LOST_RANK": "1", "LOST_AT": "12"})
    assert code != 0 and stdout == ""
    errors = [line for line in stderr.splitlines() if line.startswith("targetprop train: error:")]
    assert len(errors) == 1 and errors[0].startswith("targetprop train: error: lost process(es) 1 of 2 at iteration 12 ("), \
        stderr
    assert errors[0].endswith("; the last checkpoint, iteration 10, is kept; the same command continues the run")
    assert "exitcode  : 4" in stderr, stderr  # torchrun's report of rank 0: targetprop's code for a failed run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["lost_ranks"] == [1] and summary["iterations"] == 12
    assert summary["message"] == errors[0].removeprefix("targetprop train: error: ")
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [5, 10]
    code, stdout, stderr = torchrun(["-m", "targetprop"], argv, {})
    assert code == 0, stderr
    assert stdout.splitlines()[0] == (f"continuing the unfinished run in {out} from its checkpoint of iteration 10 "
                                      f"(--overwrite starts it over)")
    assert "completed after 30 iterations" in stdout
    assert main([*argv[:-1], str(tmp_path / "single")]) == 0
    worst = max_rel_diff(final_model(out), final_model(tmp_path / "single"))
    assert worst < 1e-7, worst  # float64 sums in another order, over 30 steps (1e-12 after 6, above)


# ---------------------------------------------------------------------------- the pieces


def test_shards_are_disjoint_and_cover_the_batch():
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    parts = [World(r, 3).shard((x, y)) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert all(p[0].shape[0] == 2 for p in parts)
    assert World().shard((x, y))[0] is x
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4 processes"):
        World(1, 4).shard((x, y))
    uneven = [World(r, 4).eval_shard((x, y))[1].tolist() for r in range(4)]
    assert uneven == [[0, 1], [2, 3], [4], [5]]


def test_batch_size_must_split_evenly(monkeypatch, capsys, tmp_path):
    with pytest.raises(ValueError, match="batch_size 20 is not divisible by the 3 processes"):
        Trainer(TrainConfig(**DDP, **RULES["bp"]), world=World(0, 3))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit) as exc:  # refused before the process group waits for the others
        main(["train", "--length", "10", "--batch-size", "5", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "batch_size 5 is not divisible by the 2 processes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--length", "10", "--device", "cuda:1", "--out", str(tmp_path / "x")])
    assert "each uses cuda:LOCAL_RANK" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2, 1)),
    ({"RANK": "1"}, "incomplete torchrun environment: LOCAL_RANK, WORLD_SIZE not set"),
    ({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be integers"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "inconsistent torchrun environment"),
])
def test_torchrun_environment(monkeypatch, env, expected):
    for k in distributed.ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            distributed.environment()
    else:
        assert distributed.environment() == expected


def test_devices():
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.resolve_device("auto").type == auto
    assert distributed.resolve_device("cpu", World(1, 2, 1)) == torch.device("cpu")
    assert distributed.resolve_device("cuda", World(1, 2, 1)) == torch.device("cuda", 1)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="not 'cuda:0'"):
        distributed.resolve_device("cuda:0", World(0, 2))
    assert TrainConfig(device="auto").device == "auto"  # kept as written: the run stays portable
    assert Trainer(TrainConfig(**DDP, **RULES["bp"], device="auto")).device.type == auto
