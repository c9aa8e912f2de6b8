"""The optimizers and their parameter groups: per-group step sizes (``lr_recurrent``, ``lr_head``)
reach torch.optim as param groups, step each part at its own size, survive a resume, are recorded
and described; RMSprop builds with torch's alpha and the run's momentum; a run folder written
before the group settings existed is still the same run."""
import json

import pytest
import torch

from targetprop.cli import main
from targetprop.training import checkpoint, rundir
from targetprop.training.build import param_groups
from targetprop.training.config import TrainConfig
from targetprop.training.trainer import Trainer

# TP settings passed explicitly: the layer's defaults may change.
TP = dict(rule="linearized", lr=0.1, target_step=1e-2, reg=10.0, tol=1e-6)
SMALL = dict(task="temporal-order", length=10, hidden_size=8, test_size=50, eval_every=10, iterations=20,
             stop_at_accuracy=None)


def config(**values) -> TrainConfig:
    return TrainConfig(**{**SMALL, "rule": "bp", **values})


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_without_group_settings_one_group_holds_every_parameter():
    trainer = Trainer(config(lr=0.05))
    (group,) = trainer.optimizer.param_groups
    assert group["lr"] == 0.05 and ids(group["params"]) == ids(trainer.model.parameters())


def test_each_part_is_its_own_group_at_its_own_step_size():
    trainer = Trainer(config(lr=0.05, lr_recurrent=1e-3))
    rnn, head = trainer.optimizer.param_groups
    assert (rnn["name"], rnn["lr"]) == ("lr_recurrent", 1e-3)
    assert (head["name"], head["lr"]) == ("lr_head", 0.05)  # unset: lr
    assert ids(rnn["params"]) == ids(trainer.model.rnn.parameters())
    assert ids(head["params"]) == ids(trainer.model.head.parameters())
    assert len(param_groups(config(lr_head=2.0), trainer.model)) == 2


@pytest.mark.parametrize("method", [dict(rule="bp"), TP], ids=["bp", "tp"])
def test_a_step_moves_each_part_by_its_own_step_size(method):
    trainer = Trainer(config(**{**method, "lr": 0.5, "lr_recurrent": 1e-3, "lr_head": 1e-2}))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.step(0)
    for name, p in trainer.model.named_parameters():
        lr = 1e-2 if name.startswith("head.") else 1e-3
        torch.testing.assert_close(p.detach(), before[name] - lr * p.grad, rtol=0, atol=1e-7)


def test_rmsprop_builds_with_torchs_alpha_and_the_runs_momentum():
    opt = Trainer(config(optimizer="rmsprop", lr=1e-3, momentum=0.9)).optimizer
    assert type(opt) is torch.optim.RMSprop
    assert (opt.defaults["lr"], opt.defaults["momentum"], opt.defaults["alpha"]) == (1e-3, 0.9, 0.99)
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["centered"] is False
    grouped = Trainer(config(optimizer="rmsprop", lr=1e-3, lr_head=1e-4)).optimizer
    assert [g["lr"] for g in grouped.param_groups] == [1e-3, 1e-4]
    assert all(g["momentum"] == 0.0 for g in grouped.param_groups)


@pytest.mark.parametrize("values, match", [
    ({"lr_recurrent": 0.0}, "lr_recurrent must be"),
    ({"lr_head": -1e-3}, "lr_head must be"),
    ({"lr_head": "fast"}, "lr_head"),
    ({"optimizer": "rmsprop", "nesterov": True, "momentum": 0.9}, "nesterov applies to optimizer 'sgd', not 'rmsprop'"),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum applies to optimizer 'sgd' and 'rmsprop', not 'adam'"),
])
def test_bad_values_are_refused_naming_the_setting(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**values)


@pytest.mark.parametrize("values, text", [
    (dict(lr=0.01, lr_recurrent=1e-3), "bp, sgd lr=0.01 lr_recurrent=0.001"),
    (dict(optimizer="rmsprop", lr=1e-3, lr_head=1e-2, momentum=0.9, clip=1.0),
     "bp, rmsprop lr=0.001 lr_head=0.01 momentum=0.9 clip=1"),
    (dict(lr=0.01, lr_recurrent=None, lr_head="none"), "bp, sgd lr=0.01"),
])
def test_the_description_names_the_group_step_sizes_that_are_set(values, text):
    assert TrainConfig(rule="bp", **values).describe() == text


def test_a_resumed_run_keeps_its_groups_and_ends_as_if_never_stopped(tmp_path):
    grouped = dict(lr=0.1, lr_recurrent=1e-2, lr_head=0.3, momentum=0.9)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    Trainer(config(**grouped, iterations=40)).run(whole, checkpoint_every=10)
    Trainer(config(**grouped, iterations=20)).run(parts, checkpoint_every=10)
    resumed = Trainer(config(**grouped, iterations=40))
    assert resumed.run(parts, resume=True, checkpoint_every=10)["iterations"] == 40
    assert [(g["name"], g["lr"]) for g in resumed.optimizer.param_groups] == [("lr_recurrent", 1e-2),
                                                                              ("lr_head", 0.3)]
    a, b = (checkpoint.latest(rundir.checkpoint_dir(r)).payload for r in (whole, parts))
    assert [g["lr"] for g in b["optimizer"]["param_groups"]] == [1e-2, 0.3]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert rundir.read_metrics(whole)["train_loss"] == rundir.read_metrics(parts)["train_loss"]


def test_a_run_recorded_without_the_group_settings_is_the_same_run(tmp_path):
    out = tmp_path / "run"
    cfg = config(iterations=5, eval_every=5)
    Trainer(cfg).run(out)
    saved = json.loads(rundir.config_path(out).read_text())
    assert saved["config"]["lr_recurrent"] is None and saved["config"]["lr_head"] is None
    for key in ("lr_recurrent", "lr_head"):  # as an older version wrote it
        del saved["config"][key]
    rundir.config_path(out).write_text(json.dumps(saved))
    assert rundir.decide(out, cfg.to_dict()).state == "finished"
    assert TrainConfig.from_dict(rundir.read_config(out)) == cfg
    changed = config(iterations=5, eval_every=5, lr_head=0.5).to_dict()
    with pytest.raises(ValueError, match="differs in lr_head: None → 0.5"):
        rundir.decide(out, changed)


def test_the_command_line_records_the_group_step_sizes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--rule", "bp", "--length", "10", "--hidden-size", "8", "--test-size", "50",
                 "--iterations", "4", "--eval-every", "2", "--optimizer", "rmsprop", "--lr", "1e-3",
                 "--lr-recurrent", "1e-4", "--lr-head", "none", "--out", str(out), "--quiet"]) == 0
    saved = rundir.read_config(out)
    assert (saved["optimizer"], saved["lr"], saved["lr_recurrent"], saved["lr_head"]) == ("rmsprop", 1e-3, 1e-4, None)
    assert "rmsprop lr=0.001 lr_recurrent=0.0001" in capsys.readouterr().out


def test_settings_files_take_the_group_step_sizes(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('rule = "bp"\nlr_head = 1e-2\nlr_recurrent = "none"\n')
    assert main(["train", "--config", str(path), "--length", "10", "--hidden-size", "8", "--test-size", "50",
                 "--iterations", "2", "--eval-every", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    saved = rundir.read_config(tmp_path / "run")
    assert (saved["lr_head"], saved["lr_recurrent"]) == (1e-2, None)
    path.write_text("lr_head = 0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path)])
    assert exit_info.value.code == 2
