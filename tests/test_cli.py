"""The ``targetprop train`` command end to end; bad input is a one-line error, exit 2."""
import json
import os
import platform
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import cli_fails as fails

from targetprop.training import checkpoint, rundir
from targetprop.cli import main
from targetprop.training.rundir import read_metrics

TINY = ["--length", "10", "--iterations", "20", "--eval-every", "10", "--test-size", "50",
        "--hidden-size", "8", "--quiet"]

# ---------------------------------------------------------------------------- train


def test_train_tiny_run_writes_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--rule", "linearized", "--lr", "0.1", "--target-step", "0.01", "--reg", "10",
                 "--seed", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "completed after 20 iterations" in printed and str(out) in printed
    saved = json.loads((out / "config.json").read_text())["config"]
    assert ((saved["length"], saved["rule"], saved["reg"], saved["target_step"], saved["seed"])
            == (10, "linearized", 10.0, 0.01, 1))
    assert read_metrics(out)["iteration"] == [0, 10, 20]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["run"] == {"checkpoint_every": 1000}
    env = recorded["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["device"] == "cpu"  # conftest: 1 thread
    assert env["python"] == platform.python_version() and env["cpu"] and isinstance(env["cpu_flags"], list)
    assert json.loads((out / "summary.json").read_text())["environment"] == env


def test_failed_and_diverged_runs_exit_non_zero(tmp_path, capsys):
    failed, diverged = str(tmp_path / "failed"), str(tmp_path / "diverged")
    assert main(["train", *TINY, "--lr", "1e6", "--reg", "1", "--tol", "1e-3", "--no-through-time", "--out", failed]) == 4
    assert "failed (RegularizedInverseError" in capsys.readouterr().out
    argv = ["train", *TINY, "--rule", "bp", "--lr", "1000", "--divergence-factor", "1", "--eval-every", "1"]
    assert main([*argv, "--out", diverged]) == 3
    assert ": diverged (the training loss" in capsys.readouterr().out
    assert main([*argv, "--out", diverged]) == 3  # the same command: reused, the same verdict
    assert capsys.readouterr().out.startswith(f"{diverged} already holds this run, diverged after 1 iterations")
    assert "exit codes: 0 completed" in main_help(["train", "--help"])


def main_help(argv) -> str:
    done = subprocess.run([sys.executable, "-m", "targetprop", *argv], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0
    return " ".join(done.stdout.split())


def test_booleans_are_strict(tmp_path, capsys):
    fails(["train", *TINY, "--layer-option", "check_finite=maybe", "--out", str(tmp_path / "a")], capsys,
          "layer_options: check_finite must be true or false, got 'maybe'")
    fails(["train", *TINY, "--layer-option", "check_finite=1", "--out", str(tmp_path / "a")], capsys,
          "check_finite must be true or false, got 1")
    assert main(["train", *TINY, "--layer-option", "check_finite=false", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["config"]["layer_options"] == {
        "check_finite": False}
    assert not (tmp_path / "a").exists()


def test_train_options_reach_the_config(tmp_path):
    out = tmp_path / "bp"
    assert main(["train", *TINY, "--rule", "bp", "--optimizer", "sgd", "--lr", "1e-3", "--momentum", "0.9",
                 "--nesterov", "--clip", "1.5", "--task-option", "test_seed=2", "--label", "BP",
                 "--stop-at-accuracy", "1.0", "--divergence-factor", "none", "--layer-option", "check_finite=false",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["momentum"] == 0.9 and saved["nesterov"] is True and saved["clip"] == 1.5
    assert saved["task_options"] == {"test_seed": 2} and saved["label"] == "BP" and saved["stop_at_accuracy"] == 1.0
    assert saved["divergence_factor"] is None and saved["layer_options"] == {"check_finite": False}


def test_python_dash_m_and_help():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "targetprop", "train", "--help"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0
    for option in ("--task", "--rule", "--target-step", "--reg", "--stop-at-accuracy", "--overwrite", "--quiet",
                   "--resume", "--checkpoint-every"):
        assert option in done.stdout


@pytest.mark.parametrize("argv,needles", [
    (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["train", "--task", "sorting"], ["invalid choice: 'sorting'"]),
    (["train", "--rule", "magic"], ["rule must be one of", "magic"]),
    (["train", "--optimizer", "lbfgs"], ["optimizer must be one of"]),
    (["train", "--lr-head", "0"], ["lr_head must be"]),
    (["train", "--lr-recurrent", "slow"], ["--lr-recurrent", "expected a number or 'none'"]),
    (["train", "--optimizer", "adam", "--momentum", "0.9"], ["momentum applies to optimizer"]),
    (["train", "--length", "0"], ["--length", "positive integer"]),
    (["train", "--length", "3"], ["length=3 is too short"]),
    (["train", "--lr", "-0.1"], ["lr must be"]),
    (["train", "--lr", "fast"], ["--lr", "invalid float value"]),
    (["train", "--target-step", "0"], ["target_step must be"]),
    (["train", "--nesterov"], ["nesterov needs a positive momentum"]),
    (["train", "--divergence-factor", "big"], ["expected a number or 'none'"]),
    (["train", "--task-option", "nokey"], ["KEY=VALUE"]),
    (["train", "--device", "cuda:99"], ["device 'cuda:99' is not usable here"]),
    (["train", "--device", "gpu"], ["device must be a torch device"]),
    (["train", "--checkpoint-every", "-1"], ["--checkpoint-every", "non-negative integer"]),
    (["train", "--task-option", "k=3"], ["does not take option", "k"]),
    (["plot"], ["required"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_input_is_a_one_line_error(argv, needles, capsys, tmp_path):
    fails(argv + ["--out", str(tmp_path / "never")] if argv[0] == "train" else argv, capsys, *needles)
    assert not (tmp_path / "never").exists()  # nothing half-written


def test_existing_run_with_other_settings_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    fails(["train", *TINY, "--lr", "0.5", "--out", out], capsys, "different settings", "lr: 0.1 → 0.5", "--overwrite")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["lr"] == 0.1
    assert main(["train", *TINY, "--lr", "0.5", "--out", out, "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["lr"] == 0.5


def test_ctrl_c_exits_130_with_valid_files(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "targetprop", "train", "--length", "10", "--hidden-size", "8",
                             "--iterations", "1000000", "--eval-every", "10", "--test-size", "20", "--quiet",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # a suite started in the background (`cmd &`) inherits an ignored SIGINT, which the run
                            # would rightly keep ignoring: give the child the default, as a terminal's would have
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # generous: on a fresh environment the child may first build the compiled loops (minutes on a loaded machine)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            metrics = out / "metrics.csv"
            if metrics.exists() and metrics.read_text().count("\n") >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "interrupted" in stdout
    rows = read_metrics(out)["iteration"]
    assert len(rows) >= 3 and rows == [10.0 * i for i in range(len(rows))]
    assert f"continue with: targetprop train --resume {out}" in stdout
    saved = [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))]
    assert saved[-1] == summary["iterations"]  # a checkpoint where Ctrl-C stopped it


def test_threads_default_to_one_for_small_steps_and_to_torchs_otherwise(tmp_path, monkeypatch):
    from targetprop.training import threads

    assert threads.choose(20, 100) == 1 and threads.choose(64, 100) == threads._TORCH_DEFAULT
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", 3)
    recorded = lambda run: json.loads((tmp_path / run / "config.json").read_text())["environment"]["threads"]  # noqa: E731
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["train", *TINY, "--out", str(tmp_path / "small")]) == 0  # 20 x 8² per step
        assert recorded("small") == 1
        assert main(["train", *TINY, "--hidden-size", "200", "--iterations", "2", "--eval-every", "2",
                     "--out", str(tmp_path / "large")]) == 0  # 20 x 200² ≥ 2^19
        assert recorded("large") == 3
        assert main(["train", *TINY, "--threads", "2", "--out", str(tmp_path / "given")]) == 0
        assert recorded("given") == 2
    finally:
        torch.set_num_threads(old)
        threads.set_automatic(False)


def test_inputs_that_used_to_crash_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    fails(["train", *TINY, "--out", str(tmp_path / "afile" / "sub")], capsys, "afile", "is a file, not a directory")
    for option in ("length=5", "seed=2", "batch_size=4"):
        fails(["train", *TINY, "--task-option", option, "--out", str(tmp_path / "r")], capsys,
              "task_options may not set", option.split("=")[0])


def test_an_ignored_sigint_stays_ignored_during_a_run():
    from targetprop.training.signals import SignalStop

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SignalStop():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("command", ["train", "diagnose", "compare", "reproduce", "tune", "plot", "table", "bench",
                                     "kernels"])
def test_every_commands_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and "--" in capsys.readouterr().out


# ---------------------------------------------------------------------------- output and help


def test_table_passes_over_the_files_of_a_comparison_folder(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["train", *TINY, "--rule", "bp", "--out", str(tmp_path / "demo" / name)]) == 0
    (tmp_path / "demo" / "comparison.md").write_text("| method |\n")
    capsys.readouterr()
    paths = sorted(str(p) for p in (tmp_path / "demo").iterdir())  # what runs/demo/* expands to
    assert main(["table", *paths]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 4 and rows[2].startswith(f"| {tmp_path / 'demo' / 'a'} |")
    fails(["table", str(tmp_path / "demo" / "comparison.md")], capsys, "no run among", "comparison.md")


def test_a_closed_stdout_ends_without_a_traceback(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--rule", "bp", "--out", str(run)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "targetprop", "table", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written, as `| head` after its lines
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == "", err


def test_a_broken_pipe_in_any_command_is_exit_141(monkeypatch, tmp_path):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise OSError("no file descriptor")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["diagnose", "--length", "10", "--hidden-size", "4", "--rules", "bp"]) == 141


def test_help_explains_diagnose_columns_and_what_resume_may_change(capsys):
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    text = capsys.readouterr().out
    for column in ("cosine with BP:", "norm ratio:", "horizon 1e-6:", "horizon zero:", "last step:", "last 10:"):
        assert column in text, column
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("only --iterations (not below the iterations done), --checkpoint-every, --diagnose-every and "
            "--threads may be given anew") in text


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "targetprop", "train", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == "", err  # argparse drops a help it cannot write; nothing else is said
