"""Running a test's code in two processes of one gloo group (CPU, over loopback), bounded in
time: spawned workers (:func:`spawn`) and the command line under torchrun (:func:`torchrun`).
The one harness of the distributed tests."""
from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from targetprop.training.distributed import ENV

LIMIT_S = 150  # the longest a group of processes may run before the test fails
SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank: int, world: int, port: int, fn, args: tuple) -> None:
    """A spawned process: join the group on one thread, run ``fn(rank, world, *args)``, leave it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, *args, world: int = 2, limit_s: float = LIMIT_S) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned processes of one gloo group; fail the
    test (after killing them) if they do not finish within ``limit_s``. ``fn`` must be a
    module-level function (it is pickled by name)."""
    ctx = mp.start_processes(_in_group, args=(world, free_port(), fn, args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + limit_s
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"the {world} processes did not finish within {limit_s:.0f} s")


def torchrun(script: list[str], argv: list[str], extra_env: dict | None = None,
             limit_s: float = LIMIT_S) -> tuple[int, str, str]:
    """``torchrun --standalone --nproc-per-node 2 SCRIPT… ARGV`` with this checkout's sources first
    on the path: exit code, stdout, stderr (the test fails if it runs past ``limit_s``)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV}  # this process's own torchrun settings, if any
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([SRC, env.get("PYTHONPATH", "")]), **(extra_env or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *script, *argv]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"torchrun did not finish within {limit_s:.0f} s")
    return proc.returncode, stdout, stderr


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest ``max|a − b| / max|b|`` over the tensors of two state dicts (``b``'s keys)."""
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)).item() for k in b)
