"""The trainer on a CUDA device (skipped, with the reason, where there is none): ``auto`` picks
it, everything lives there, the checks are deferred, the trainer's own step never waits for the
device, a NaN is still caught and named, and an interrupted run resumes to the same parameters."""
import math

import pytest
import torch

from helpers import needs, require
from targetprop.training import checkpoint, rundir
from targetprop.training.trainer import Trainer, TrainConfig

pytestmark = needs("cuda")

SMALL = dict(task="temporal-order", length=10, hidden_size=16, test_size=50, eval_every=7, iterations=40,
             device="cuda", task_options={"train_eval_size": 100})
TP = dict(rule="linearized", lr=0.1, reg=10.0, momentum=0.9)
BP = dict(rule="bp", optimizer="adam", lr=1e-2)


def test_auto_puts_everything_on_the_device(tmp_path):
    trainer = Trainer(TrainConfig(**{**SMALL, "device": "auto"}, **TP))
    assert trainer.device.type == "cuda" and trainer.guard.deferred
    summary = trainer.run(tmp_path / "r", checkpoint_every=10)
    assert summary["status"] == "completed" and summary["iterations"] == 40
    assert all(p.is_cuda for p in trainer.model.parameters())
    assert all(v.is_cuda for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    saved = checkpoint.latest(rundir.checkpoint_dir(tmp_path / "r")).payload
    assert "cuda" in saved["rng"] and saved["run"]["iteration"] == 40


def test_the_trainers_step_does_not_wait_for_the_device():
    """With BP and the layer's own input check off, nothing in a step synchronizes with the host
    (TP rules add the layer's documented syncs: its input check and the inverse's status)."""
    trainer = Trainer(TrainConfig(**SMALL, **BP, layer_options={"check_finite": False}))
    trainer.step(0)  # warm-up: handles, pinned-memory pool
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    total = torch.zeros((), dtype=torch.float64, device=trainer.device)
    try:
        for i in range(1, 4):
            total += trainer.step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(total.item())


def test_a_nan_direction_is_named_at_the_next_check(tmp_path):
    trainer = Trainer(TrainConfig(**SMALL, **TP))
    calls = [0]

    def hook(grad):
        calls[0] += 1
        return grad * math.nan if calls[0] == 13 else grad  # iteration 12

    trainer.model.head.bias.register_hook(hook)
    summary = trainer.run(tmp_path / "r", checkpoint_every=5)
    assert summary["status"] == "failed" and "of iteration 12 holds NaN or inf" in summary["message"]
    saved = checkpoint.latest(rundir.checkpoint_dir(tmp_path / "r")).payload
    assert saved["run"]["iteration"] == 10 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_resume_on_the_device(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    Trainer(TrainConfig(**SMALL, **TP)).run(whole, checkpoint_every=10)
    config = TrainConfig(**SMALL, **TP)
    trainer = Trainer(config)
    original = trainer.step

    def step(iteration):
        if iteration == 25:
            raise KeyboardInterrupt
        return original(iteration)

    trainer.step = step
    assert trainer.run(part, checkpoint_every=10)["status"] == "interrupted"
    Trainer(config).run(part, resume=True, checkpoint_every=10)
    a, b = (checkpoint.latest(rundir.checkpoint_dir(r)).payload["model"] for r in (whole, part))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"CUDA resume: max parameter difference to the uninterrupted run {worst:.2e}")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell, rule", [("rnn", "linearized"), ("rnn", "difference"), ("gru", "bp"),
                                        ("gru", "linearized")])
def test_layer_directions_on_the_device_equal_the_cpu_ones(cell, rule):
    """float64: the PyTorch path on the device against the CPU (compiled) path, every rule's kind."""
    from targetprop import TPGRU, TPRNN

    torch.manual_seed(0)
    layer = (TPGRU if cell == "gru" else TPRNN)(3, 24, batch_first=True, dtype=torch.float64, rule=rule, reg=1.0,
                                                 target_step=0.05)
    x, c = torch.randn(4, 30, 3, dtype=torch.float64), torch.randn(4, 30, 24, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        layer.to(device).zero_grad()
        (layer(x.to(device))[0] * c.to(device)).sum().backward()
        grads.append([p.grad.cpu() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_autocast_on_the_device(dtype):
    """A half-precision layer on CUDA trains (float32 inside, results cast back), and under
    torch.autocast the layer runs in float32: the directions equal the float32 layer's closely."""
    from targetprop import TPGRU, TPRNN, orthogonal_init_

    for cls in (TPRNN, TPGRU):
        torch.manual_seed(0)
        full = orthogonal_init_(cls(3, 16, batch_first=True, reg=1.0)).cuda()
        half = cls(3, 16, batch_first=True, reg=1.0).cuda().to(dtype)
        half.load_state_dict({k: v.to(dtype) for k, v in full.state_dict().items()})
        x = torch.randn(4, 30, 3, device="cuda").to(dtype)
        out, h_n = half(x)
        assert out.dtype == dtype
        h_n.float().sum().backward()
        full(x.float())[1].sum().backward()
        for (k, a), b in zip(half.named_parameters(), full.parameters()):
            assert a.grad.dtype == dtype
            assert (a.grad.float() - b.grad).norm() <= 3e-2 * b.grad.norm(), k
        with torch.autocast("cuda", dtype=dtype):
            assert full(x)[0].dtype == torch.float32


@pytest.mark.parametrize("cls", ["rnn", "gru"])
@pytest.mark.parametrize("through_time", [False, True])
@pytest.mark.parametrize("B", [16, 512])
def test_triton_on_the_device_at_the_benchmark_shapes(cls, through_time, B):
    """backend="triton" (the compiled Triton recursions) against the layer's PyTorch path on the
    device, float32, T = 784, p = 100 (two of the GPU check's shapes), a loss on h_n."""
    require("triton")
    from targetprop import TPGRU, TPRNN, orthogonal_init_

    torch.manual_seed(0)
    layer = orthogonal_init_((TPGRU if cls == "gru" else TPRNN)(1, 100, reg=1.0, through_time=through_time)).cuda()
    x, c = torch.randn(784, B, 1, device="cuda"), torch.randn(B, 100, device="cuda")
    grads = []
    for backend in ("torch", "triton"):
        layer.backend = backend
        layer.zero_grad()
        out, h_n = layer(x)
        (h_n[0] * c).sum().backward()
        grads.append([out.detach()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        assert (b - a).norm() <= 1e-4 * a.norm() + 1e-12
