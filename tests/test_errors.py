"""Errors on the training side: only a user's bad input is exit code 2; a bug keeps its own type
and traceback while its run still ends ``failed`` with its checkpoints; the library logs, never prints."""
import ast
import logging
from pathlib import Path

import pytest
import torch
from helpers import cli_fails as fails

import targetprop.training
from targetprop.cli import main
from targetprop.training import checkpoint, rundir, trainer as trainer_module
from targetprop.training.models import SequenceModel
from targetprop.training.trainer import Trainer, TrainConfig

TINY = ["--length", "10", "--iterations", "8", "--eval-every", "2", "--test-size", "20", "--hidden-size", "4",
        "--quiet", "--checkpoint-every", "3"]


class Bug(Exception):
    """An error no input explains."""


def break_forward(monkeypatch, error: Exception, after: int):
    """Make the model's training forward raise ``error`` once it has run ``after`` times."""
    forward, calls = SequenceModel.forward, []

    def broken(self, x):
        if self.training:
            calls.append(1)
            if len(calls) > after:
                raise error
        return forward(self, x)

    monkeypatch.setattr(SequenceModel, "forward", broken)


@pytest.mark.parametrize("error", [Bug("index 7 past the end"), ValueError("a bug that looks like input")],
                         ids=["own-type", "value-error"])
def test_a_bug_in_the_model_keeps_its_type_and_the_run_ends_failed(error, tmp_path, monkeypatch):
    out = tmp_path / "run"
    break_forward(monkeypatch, error, after=4)  # iteration 4 fails; the checkpoint of iteration 3 is written
    with pytest.raises(type(error), match=str(error)) as raised:
        main(["train", *TINY, "--out", str(out)])
    assert raised.value is error and raised.traceback[-1].name == "broken"  # its own traceback, to the bug
    summary = rundir.read_summary(out)
    assert summary["status"] == "failed" and summary["iterations"] == 4
    assert summary["message"] == f"{type(error).__name__}: {error}; the last good checkpoint, iteration 3, is kept"
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [3]
    assert rundir.read_metrics(out)["iteration"] == [0.0, 2.0, 4.0]


def test_a_model_building_runtime_error_is_not_called_an_unusable_device(monkeypatch):
    def build_model(config, task, processes=1):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(trainer_module, "build_model", build_model)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        Trainer(TrainConfig(length=10, test_size=20, hidden_size=4))
    assert type(raised.value) is RuntimeError  # not the ValueError "device ... is not usable here"


def test_an_unusable_device_is_bad_input(tmp_path, capsys):
    if torch.cuda.device_count() > 5:
        pytest.skip("this machine has a cuda:5")
    fails(["train", *TINY, "--device", "cuda:5", "--out", str(tmp_path / "never")], capsys,
          "device 'cuda:5' is not usable here")
    assert not (tmp_path / "never").exists()


def test_a_run_folder_without_a_usable_checkpoint_is_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    for _, path in checkpoint.listed(rundir.checkpoint_dir(out)):
        path.write_bytes(b"damaged")
    with pytest.warns(checkpoint.CheckpointWarning):
        fails(["train", "--resume", str(out), "--iterations", "12", "--quiet"], capsys, "no usable checkpoint")


def test_the_library_logs_and_never_prints(tmp_path, caplog):
    package = Path(targetprop.training.__file__).parent
    for path in package.glob("*.py"):
        calls = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"]
        assert not calls, f"{path.name} prints"
    with caplog.at_level(logging.INFO, logger="targetprop.training"):
        Trainer(TrainConfig(length=10, test_size=20, hidden_size=4, iterations=2, eval_every=2)).run(tmp_path / "r")
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("targetprop.training.loop", f"{tmp_path / 'r'}: completed after 2 iterations") in messages
    assert any(name == "targetprop.training.loop" and text.startswith("starting ") for name, text in messages)
