"""Checkpoints and resuming: a run stopped (Ctrl-C, SIGTERM, SIGKILL) and resumed ends
bit-identical to an uninterrupted run on the CPU, with the same metrics rows; only the iteration
budget may change; a corrupt newest checkpoint is reported and the previous one used."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import cli_fails
import torch

from targetprop.training import checkpoint, rundir
from targetprop.cli import main
from targetprop.training.trainer import Trainer, TrainConfig
from targetprop.training.rundir import read_metrics
from targetprop.training.build import build_task

SMALL = dict(task="temporal-order", length=10, hidden_size=8, test_size=50, eval_every=7, iterations=60,
             task_options={"train_eval_size": 100})
METHODS = {
    "tp-momentum": dict(rule="linearized", lr=0.1, reg=10.0, momentum=0.9),
    "bp-adam": dict(rule="bp", optimizer="adam", lr=1e-2),
    "learned": dict(rule="learned", lr=0.1, momentum=0.9, layer_options={"inverse_noise": 0.1}),  # global RNG
    "gru": dict(cell="gru", rule="linearized", lr=0.1, reg=1.0),
}
CLOCKS = {"time", "wall_time"}


def config(method="tp-momentum", **overrides) -> TrainConfig:
    return TrainConfig(**{**SMALL, **METHODS[method], **overrides})


class StopAt:
    """The config's task, but ``action()`` runs when the batch of ``iteration`` is asked for."""

    def __init__(self, config, iteration, action):
        self._task, self.at, self.action = build_task(config), iteration, action

    def __getattr__(self, name):
        return getattr(self._task, name)

    def train_batch(self, iteration):
        if iteration == self.at:
            self.action()
        return self._task.train_batch(iteration)


def ctrl_c():
    raise KeyboardInterrupt


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def final_state(run) -> dict:
    return checkpoint.latest(rundir.checkpoint_dir(run)).payload


def rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in CLOCKS} for r in csv.DictReader(f)]


def assert_same_run(a, b) -> None:
    """Two run directories ended in the same state, bit for bit, with the same metrics rows."""
    sa, sb = final_state(a), final_state(b)
    assert sa["run"]["iteration"] == sb["run"]["iteration"]
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for i, state in sa["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["optimizer"]["state"][i][k]), (i, k)
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert rows(a) == rows(b) and len(rows(a)) > 3
    summary_a, summary_b = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert {k: v for k, v in summary_a.items() if "time" not in k} == {k: v for k, v in summary_b.items()
                                                                         if "time" not in k}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per method (built once)."""
    made = {}

    def run(method, **overrides):
        key = (method, tuple(sorted(overrides.items())))
        if key not in made:
            out = tmp_path_factory.mktemp("reference")
            Trainer(config(method, **overrides)).run(out, checkpoint_every=10)
            made[key] = out
        return made[key]

    return run


# ---------------------------------------------------------------------------- in one process


@pytest.mark.parametrize("method", list(METHODS))
def test_ctrl_c_then_resume_is_bit_identical(method, tmp_path, reference):
    out = tmp_path / "run"
    stopped = Trainer(config(method), task=StopAt(config(method), 36, ctrl_c)).run(out, checkpoint_every=10)
    assert stopped["status"] == "interrupted" and stopped["iterations"] == 36
    assert stopped["message"].endswith("the last good checkpoint, iteration 30, is kept")
    assert read_metrics(out)["iteration"] == [0, 7, 14, 21, 28, 35]  # 35: a row after the checkpoint
    assert final_state(out)["run"]["iteration"] == 30
    resumed = Trainer(config(method)).run(out, resume=True, checkpoint_every=10)
    assert resumed["status"] == "completed" and resumed["iterations"] == 60
    assert_same_run(out, reference(method))  # row 35 was cut and written again, once


def test_sigterm_saves_a_checkpoint_where_it_stops(tmp_path, reference):
    out = tmp_path / "run"
    trainer = Trainer(config(), task=StopAt(config(), 33, sigterm))
    stopped = trainer.run(out, checkpoint_every=10)
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"
    assert stopped["iterations"] == 34  # iteration 33 finished, then the loop stopped
    assert stopped["message"] == (f"stopped by SIGTERM at iteration 34; checkpoint saved, continue with: "
                                  f"targetprop train --resume {out}")
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [30, 34]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    Trainer(config()).run(out, resume=True, checkpoint_every=10)
    assert_same_run(out, reference("tp-momentum"))


def test_the_same_run_again_continues_it_then_reuses_it(tmp_path, reference):
    out = tmp_path / "run"
    Trainer(config(), task=StopAt(config(), 36, ctrl_c)).run(out, checkpoint_every=10)
    trainer = Trainer(config())  # no resume, no cadence given: continues, with the run's cadence
    summary = trainer.run(out)
    assert summary["status"] == "completed" and summary["iterations"] == 60
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [50, 60]
    assert_same_run(out, reference("tp-momentum"))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = Trainer(config())
    assert again.run(out) == summary  # finished: returned as it is, nothing touched
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_overwrite_starts_over_dropping_the_old_checkpoints(tmp_path, reference):
    out = tmp_path / "run"
    Trainer(config()).run(out, checkpoint_every=10)  # a finished run …
    Trainer(config(), task=StopAt(config(), 25, ctrl_c)).run(out, overwrite=True, checkpoint_every=10)  # … again
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [10, 20]  # not 50, 60
    Trainer(config()).run(out, resume=True)
    assert_same_run(out, reference("tp-momentum"))


def test_resume_keeps_the_checkpoint_cadence(tmp_path):
    out = tmp_path / "run"
    Trainer(config(), task=StopAt(config(), 23, ctrl_c)).run(out, checkpoint_every=7)
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [14, 21]
    assert json.loads((out / "config.json").read_text())["run"] == {"checkpoint_every": 7}
    seen = []
    real = checkpoint.save_in
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save_in", lambda folder, it, payload: seen.append(it) or real(folder, it, payload))
        Trainer(config()).run(out, resume=True)
    assert seen == [28, 35, 42, 49, 56, 60]  # every 7, then the end: not the default 1000
    assert json.loads((out / "config.json").read_text())["run"] == {"checkpoint_every": 7}
    Trainer(config(), task=StopAt(config(), 5, sigterm)).run(tmp_path / "b", checkpoint_every=0)  # saved at 6
    Trainer(config()).run(tmp_path / "b", resume=True, checkpoint_every=25)  # given: the new cadence
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(tmp_path / "b"))] == [50, 60]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["run"] == {"checkpoint_every": 25}


def test_resume_keeps_the_thread_count(tmp_path, capsys):
    out = tmp_path / "run"
    torch.set_num_threads(2)  # the conftest fixture restores one thread after the test
    Trainer(config(), task=StopAt(config(), 5, sigterm)).run(out, checkpoint_every=10)
    assert json.loads((out / "config.json").read_text())["environment"]["threads"] == 2
    torch.set_num_threads(1)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert torch.get_num_threads() == 2  # the run's own, restored
    assert json.loads((out / "summary.json").read_text())["environment"]["threads"] == 2
    assert main(["train", "--resume", str(out), "--quiet", "--threads", "1"]) == 0  # given: used
    assert torch.get_num_threads() == 1


def test_a_budget_below_the_iterations_done_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(config()).run(out, checkpoint_every=10)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(ValueError, match="has done 60 iterations, more than a budget of 20: give --iterations 60"):
        Trainer(config(iterations=20)).run(out, resume=True)
    cli_fails(["train", "--resume", str(out), "--iterations", "20", "--quiet"], capsys, "give --iterations 60 or more")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # config and summary agree
    with pytest.raises(ValueError, match=r"iterations: 60 → 20\); --resume OUT --iterations N changes"):
        Trainer(config(iterations=20)).run(out)  # the same command with another budget: refused, not restarted
    assert main(["train", "--resume", str(out), "--iterations", "60", "--quiet"]) == 0  # nothing to do
    saved = json.loads((out / "config.json").read_text())["config"]["iterations"]
    assert saved == json.loads((out / "summary.json").read_text())["iterations"] == 60


def test_a_larger_budget_continues_a_finished_run(tmp_path, reference):
    out = tmp_path / "run"
    Trainer(config(iterations=40, eval_every=10)).run(out, checkpoint_every=10)
    summary = Trainer(config(iterations=60, eval_every=10)).run(out, resume=True, checkpoint_every=10)
    assert summary["iterations"] == 60
    assert json.loads((out / "config.json").read_text())["config"]["iterations"] == 60
    assert_same_run(out, reference("tp-momentum", eval_every=10))


def test_a_finished_run_has_nothing_left_to_do(tmp_path):
    out = tmp_path / "run"
    first = Trainer(config(iterations=20)).run(out)
    before = rows(out)
    again = Trainer(config(iterations=20)).run(out, resume=True)
    assert again["iterations"] == 20 and again["final_test_loss"] == first["final_test_loss"]
    assert rows(out) == before
    early = tmp_path / "early"  # stopped by stop_at_accuracy: a larger budget does not restart it
    assert Trainer(config(stop_at_accuracy=0.01)).run(early)["iterations"] == 7
    assert Trainer(config(stop_at_accuracy=0.01, iterations=90)).run(early, resume=True)["iterations"] == 7


def test_other_settings_are_refused_with_the_differing_keys(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(config(iterations=10)).run(out)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(ValueError, match=r"cannot resume .* \(lr: 0.1 → 0.5, reg: 10.0 → 1.0\); only iterations"):
        Trainer(config(iterations=10, lr=0.5, reg=1.0)).run(out, resume=True)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(out), "--lr", "0.5", "--momentum", "0", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "lr: 0.1 → 0.5" in err and "momentum: 0.9 → 0.0" in err
    assert err.count("\n") == 1
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # nothing touched
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path / "nothing"), "--quiet"])
    assert "holds no run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(out), "--out", str(out), "--quiet"])
    assert "give neither --out nor --overwrite" in capsys.readouterr().err


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, reference):
    out = tmp_path / "run"
    Trainer(config(), task=StopAt(config(), 45, ctrl_c)).run(out, checkpoint_every=10)
    newest = rundir.checkpoint_dir(out) / "iteration-00000040.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    with pytest.warns(checkpoint.CheckpointWarning, match="iteration-00000040.pt: checksum mismatch"):
        Trainer(config()).run(out, resume=True, checkpoint_every=10)
    assert_same_run(out, reference("tp-momentum"))  # from iteration 30 instead


def test_no_usable_checkpoint(tmp_path, reference):
    out = tmp_path / "run"
    Trainer(config(), task=StopAt(config(), 25, ctrl_c)).run(out, checkpoint_every=10)
    for _, path in checkpoint.listed(rundir.checkpoint_dir(out)):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(checkpoint.CheckpointWarning), pytest.raises(ValueError, match="no usable checkpoint"):
        Trainer(config()).run(out, resume=True)
    corrupt = sorted(p.name for p in rundir.checkpoint_dir(out).iterdir())
    assert corrupt == ["iteration-00000010.pt.corrupt", "iteration-00000020.pt.corrupt"]
    for again in ({"resume": True}, {}):  # a second resume, and the same run again: refused, files kept
        with pytest.raises(ValueError, match="2 set aside as \\*.corrupt \\(kept for inspection\\); start the run "
                                             "over with --overwrite"):
            Trainer(config()).run(out, **again)
        assert sorted(p.name for p in rundir.checkpoint_dir(out).iterdir()) == corrupt
    Trainer(config()).run(out, overwrite=True, checkpoint_every=10)  # only --overwrite removes them
    assert [p.name for p in rundir.checkpoint_dir(out).iterdir() if p.suffix == ".corrupt"] == []
    assert_same_run(out, reference("tp-momentum"))
    fresh = tmp_path / "fresh"  # killed before its first checkpoint: starts from iteration 0
    Trainer(config(), task=StopAt(config(), 5, ctrl_c)).run(fresh, checkpoint_every=10)
    with pytest.warns(checkpoint.CheckpointWarning, match="no checkpoint yet"):
        Trainer(config()).run(fresh, resume=True, checkpoint_every=10)
    assert_same_run(fresh, reference("tp-momentum"))


# ---------------------------------------------------------------------------- real processes

CLI = ["--length", "10", "--hidden-size", "8", "--test-size", "50", "--task-option", "train_eval_size=100",
       "--rule", "learned", "--no-through-time", "--lr", "0.1", "--momentum", "0.9", "--iterations", "400", "--eval-every", "7",
       "--checkpoint-every", "10", "--quiet", "--threads", "1"]


def start(out) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "targetprop", "train", *CLI, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(proc, out, iteration: int) -> None:
    """Wait (at most 300 s: a loaded machine) until the run in ``out`` has a checkpoint at ``iteration`` or later."""
    deadline = time.monotonic() + 300
    folder = rundir.checkpoint_dir(out)
    while not any(i >= iteration for i, _ in checkpoint.listed(folder)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint at iteration {iteration} (exit code {proc.poll()}): {proc.stderr.read()}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "reference"
    assert main(["train", *CLI, "--out", str(out)]) == 0
    return out


def signal_after_checkpoint(out, iteration: int, sig) -> tuple:
    """Start a CLI run in ``out``, send ``sig`` once its checkpoint of ``iteration`` exists;
    return (process, its stdout)."""
    proc = start(out)
    try:
        wait_for_checkpoint(proc, out, iteration)
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc, stdout


def test_sigkill_then_resume_is_bit_identical(tmp_path, cli_reference, capsys):
    out = tmp_path / "run"
    proc, _ = signal_after_checkpoint(out, 100, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()  # it really died mid-run
    killed_at = final_state(out)["run"]["iteration"]
    assert 100 <= killed_at < 400
    assert main(["train", "--resume", str(out), "--quiet", "--threads", "1"]) == 0
    assert "completed after 400 iterations" in capsys.readouterr().out
    assert_same_run(out, cli_reference)
    print(f"killed with SIGKILL after the checkpoint of iteration {killed_at}; resumed run bit-identical")


def test_sigterm_exits_143_then_the_same_command_continues(tmp_path, cli_reference, capsys):
    out = tmp_path / "run"
    proc, stdout = signal_after_checkpoint(out, 50, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "stopped by SIGTERM" in stdout and f"--resume {out}" in stdout
    assert final_state(out)["run"]["iteration"] == summary["iterations"]  # saved where it stopped
    assert read_metrics(out)["iteration"][-1] <= summary["iterations"]
    capsys.readouterr()
    assert main(["train", *CLI, "--out", str(out)]) == 0  # a re-queued job: the same command
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"continuing the unfinished run in {out} from its checkpoint of iteration "
                          f"{summary['iterations']} (--overwrite starts it over)")
    assert "completed after 400 iterations" in printed[1]
    assert_same_run(out, cli_reference)
    assert main(["train", *CLI, "--out", str(out)]) == 0  # once more: finished, nothing to do
    assert capsys.readouterr().out.startswith(f"{out} already holds this run, completed after 400 iterations: "
                                              f"nothing to do (--overwrite runs it again)\n")
    assert_same_run(out, cli_reference)
