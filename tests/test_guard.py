"""The NaN/inf guard: each check on its own (at once on the CPU, deferred as on CUDA), then in the
trainer: a bad mini-batch, a bad direction, a NaN loss and a failed Cholesky stop the run with a
message naming the iteration, and the last good checkpoint is kept (none is written after it)."""
import math

import pytest
import torch

from targetprop.training import checkpoint, rundir
from targetprop.training.guard import FiniteGuard, NonFinite, direction_norm
from targetprop.tasks.synthetic import TemporalOrder
from targetprop.training.trainer import Trainer, TrainConfig
from targetprop.training.rundir import read_metrics

CPU = torch.device("cpu")
TP = dict(rule="linearized", lr=0.1, target_step=1e-2, reg=10.0, momentum=0.9)
SMALL = dict(task="temporal-order", length=10, hidden_size=8, test_size=50, eval_every=10)
NAN = torch.tensor(math.nan)


# ---------------------------------------------------------------------------- the checks


def test_immediate_checks_raise_at_the_bad_step():
    guard = FiniteGuard(CPU, deferred=False)
    guard.check_loss(0, torch.tensor(1.5))
    guard.check_direction(0, torch.tensor(3.0))
    with pytest.raises(NonFinite, match="mini-batch loss of iteration 3 holds NaN or inf") as err:
        guard.check_loss(3, NAN)
    assert (err.value.what, err.value.iteration) == ("loss", 3)
    with pytest.raises(NonFinite, match=r"direction \(the parameters' .grad after backward\) of iteration 4"
                       ) as err:
        guard.check_direction(4, torch.tensor(math.inf))
    assert err.value.what == "direction" and isinstance(err.value, FloatingPointError)
    guard.flush()  # nothing deferred


def test_batch_check():
    guard = FiniteGuard(CPU, deferred=True)  # a batch is checked at once in either mode
    x, labels = torch.zeros(2, 5, 3), torch.tensor([0, 1])
    guard.check_batch(0, x, labels)
    bad = x.clone()
    bad[1, 4, 2] = math.inf
    with pytest.raises(NonFinite, match="mini-batch of iteration 8 holds NaN or inf"):
        guard.check_batch(8, bad, labels)
    with pytest.raises(NonFinite, match="iteration 9"):
        guard.check_batch(9, x, torch.tensor([[0.5], [math.nan]]))  # regression targets too


def test_deferred_checks_report_the_first_bad_step_at_flush():
    guard = FiniteGuard(CPU, deferred=True)
    for i in range(5):
        guard.check_loss(i, torch.tensor(1.0))
        guard.check_direction(i, torch.tensor(2.0))
    guard.flush()
    guard.check_direction(7, NAN)  # no exception yet: the step does not wait
    guard.check_loss(9, NAN)
    with pytest.raises(NonFinite, match=r"direction .* of iteration 7 holds NaN or inf \(found at a later check") as err:
        guard.flush()
    assert (err.value.what, err.value.iteration) == ("direction", 7)
    loss_first = FiniteGuard(CPU, deferred=True)
    loss_first.check_loss(2, torch.tensor(-math.inf))
    loss_first.check_direction(2, NAN)
    with pytest.raises(NonFinite, match="loss of iteration 2") as err:
        loss_first.flush()
    assert err.value.what == "loss"


def test_loss_check_can_be_off():
    guard = FiniteGuard(CPU, deferred=False, check_loss=False)  # as under DDP
    guard.check_loss(1, NAN)
    with pytest.raises(NonFinite):
        guard.check_direction(1, NAN)


def test_direction_norm_is_the_norm_of_all_grads():
    a, b, c = (torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True),
               torch.randn(2, requires_grad=True))
    (a.sum() * 2 + (b ** 2).sum()).backward()  # c gets no grad
    expected = torch.cat([a.grad.flatten(), b.grad]).norm()
    assert torch.allclose(direction_norm([a, b, c]), expected, rtol=1e-6)
    b.grad[2] = math.nan
    assert not torch.isfinite(direction_norm([a, b]))
    assert direction_norm([c]).item() == 0.0


# ---------------------------------------------------------------------------- in the trainer


class BadBatchTask(TemporalOrder):
    """Temporal order whose batch of iteration ``bad`` holds a NaN."""

    def __init__(self, bad: int, **kwargs):
        super().__init__(10, test_size=50, **kwargs)
        self.bad = bad

    def train_batch(self, iteration):
        x, y = super().train_batch(iteration)
        if iteration == self.bad:
            x = x.clone()
            x[3, 4, 1] = math.nan
        return x, y


def newest(run) -> tuple[int, dict]:
    found = checkpoint.latest(rundir.checkpoint_dir(run))
    return found.payload["run"]["iteration"], found.payload


def nan_grad_at(trainer: Trainer, iteration: int) -> None:
    """Make ``head.bias``'s direction NaN in the backward of ``iteration``."""
    calls = [0]

    def hook(grad):
        calls[0] += 1
        return grad * math.nan if calls[0] == iteration + 1 else grad

    trainer.model.head.bias.register_hook(hook)


def test_nan_batch_fails_naming_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(TrainConfig(**SMALL, **TP, iterations=100), task=BadBatchTask(23))
    summary = trainer.run(tmp_path / "r", checkpoint_every=10)
    assert summary["status"] == "failed" and summary["iterations"] == 23
    assert summary["message"].startswith("the mini-batch of iteration 23 holds NaN or inf")
    assert summary["message"].endswith("the last good checkpoint, iteration 20, is kept")
    at, saved = newest(tmp_path / "r")
    assert at == 20 and all(torch.isfinite(v).all() for v in saved["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert read_metrics(tmp_path / "r")["iteration"] == [0, 10, 20]


def test_nan_direction_fails_before_the_step(tmp_path):
    trainer = Trainer(TrainConfig(**SMALL, **TP, iterations=100))
    nan_grad_at(trainer, 17)
    summary = trainer.run(tmp_path / "r", checkpoint_every=5)
    assert summary["status"] == "failed" and summary["iterations"] == 17
    assert "direction (the parameters' .grad after backward) of iteration 17 holds NaN or inf" in summary["message"]
    assert " in head.bias;" in summary["message"]  # which parameter
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was not taken
    assert newest(tmp_path / "r")[0] == 15


@pytest.mark.parametrize("bad,stopped", [(14, 15), (12, 13)], ids=["at-the-next-check", "by-a-later-error"])
def test_deferred_guard_names_the_first_bad_step_and_writes_no_bad_checkpoint(tmp_path, bad, stopped):
    trainer = Trainer(TrainConfig(**SMALL, **TP, iterations=100))
    trainer.guard = FiniteGuard(trainer.device, deferred=True)  # as on CUDA, here on the CPU
    nan_grad_at(trainer, bad)
    summary = trainer.run(tmp_path / "r", checkpoint_every=5)
    # bad=14: found at the checkpoint point 15; bad=12: the NaN weights make the layer's backward
    # raise at iteration 13 first (its own finite check), and the message names the cause,
    # iteration 12, not that error
    assert summary["status"] == "failed" and summary["iterations"] == stopped
    assert summary["message"].startswith(f"the training direction (the parameters' .grad after backward) of "
                                         f"iteration {bad} holds NaN or inf (found at a later check")
    assert not torch.isfinite(trainer.model.head.bias).all()  # the steps went on, but …
    at, saved = newest(tmp_path / "r")  # … no checkpoint holds them
    assert at == 10 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_nan_loss_is_diverged(tmp_path):
    trainer = Trainer(TrainConfig(**SMALL, **TP, iterations=100))
    original = trainer.step

    def step(iteration):
        if iteration == 5:
            with torch.no_grad():
                trainer.model.head.weight[0, 0] = math.nan
        return original(iteration)

    trainer.step = step
    summary = trainer.run(tmp_path / "r", checkpoint_every=4)
    assert summary["status"] == "diverged" and summary["iterations"] == 5
    assert summary["message"].startswith("the mini-batch loss of iteration 5 holds NaN or inf (loss is nan)")
    assert newest(tmp_path / "r")[0] == 4


def test_failed_cholesky_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(TrainConfig(**{**SMALL, "eval_every": 1}, **TP, iterations=100))
    original = trainer.step

    def step(iteration):  # weights that overflow W_hhᵀW_hh in float32
        if iteration == 7:
            with torch.no_grad():
                trainer.model.rnn.weight_hh_l0.mul_(1e30)
        return original(iteration)

    trainer.step = step
    summary = trainer.run(tmp_path / "r", checkpoint_every=3)
    assert summary["status"] == "failed" and summary["message"].startswith("RegularizedInverseError")
    assert summary["iterations"] == 7 and summary["message"].endswith("the last good checkpoint, iteration 6, is kept")
    at, saved = newest(tmp_path / "r")
    assert at == 6 and saved["model"]["rnn.weight_hh_l0"].abs().max() < 10
