"""Data-parallel training over several processes, on PyTorch's own distributed engine.

This module owns a process's place in a data-parallel run (:class:`World`), starting and ending
the process group from ``torchrun``'s environment (:func:`launch`), the device of each process
(:func:`resolve_device`), sharding batches, and the few collectives the trainer needs besides
DDP's own gradient all-reduce::

    torchrun --nproc-per-node 2 -m targetprop train --task temporal-order --length 60 ...

How it fits TP: the TP layers write their direction into ``.grad`` like autograd does, and
``DistributedDataParallel`` averages ``.grad`` over the processes during ``backward``. Each
process trains on an equal, disjoint shard of the batch of every iteration with a mean loss, so
the averaged direction, hence the update, is that of one process on the whole batch (up to
floating-point summation order; ``tests/test_ddp_trainer.py`` checks it for ``linearized`` and
``bp``). Every process evaluates its shard of the fixed evaluation sets and the sums are
all-reduced, so all processes take the same decisions (stop at accuracy, divergence); process
0 alone writes files and prints. A stop request (SIGINT/SIGTERM) is agreed on at every
iteration by an all-reduce of one integer over a gloo group, on the CPU (no device sync).

A lost process (killed, crashed, its machine gone) makes its peers' next collective fail:
:func:`lost_peer` tells such a failure from other errors and finds which ranks are gone, and the
trainer ends the run on every survivor as ``failed`` with those ranks named.

Backends: ``gloo`` on the CPU, ``nccl`` on CUDA (each process on ``cuda:LOCAL_RANK``). The
``learned`` rule keeps its reverse layer in buffers, which DDP broadcasts from process 0 at
every forward: under DDP the reverse layer is trained on process 0's shard only.
"""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` data-parallel processes (one process: the defaults).

    ``control`` is the process group for host-side agreement (a gloo group beside an nccl
    one; ``None``: the default group, itself gloo).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    control: Any = None

    @property
    def main(self) -> bool:
        """Process 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def check_batch_size(self, batch_size: int | None) -> None:
        """A ValueError unless every process can take an equal shard of a ``batch_size`` batch."""
        if self.distributed and batch_size is not None and batch_size % self.size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {self.size} processes "
                             f"(WORLD_SIZE): each process trains on an equal shard of every batch")

    def shard(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """This process's equal, disjoint slice (along dimension 0) of every tensor of ``batch``."""
        if not self.distributed:
            return batch
        n = batch[0].shape[0]
        self.check_batch_size(n)
        size = n // self.size
        return tuple(t[self.rank * size:(self.rank + 1) * size] for t in batch)

    def eval_shard(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """This process's slice of an evaluation batch (sizes may differ by one; sums are reduced)."""
        if not self.distributed:
            return batch
        return tuple(t.tensor_split(self.size)[self.rank] for t in batch)

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place (on its device); returns it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max(self, value: int) -> int:
        """The largest ``value`` over the processes (host-side, over the control group)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return int(t.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` when there are several processes, else itself."""
        if not self.distributed:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def environment() -> tuple[int, int, int] | None:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as set by ``torchrun``; None outside it; ValueError if bad."""
    present = [k for k in ENV if k in os.environ]
    if not present:
        return None
    if len(present) < len(ENV):
        missing = sorted(set(ENV) - set(present))
        raise ValueError(f"incomplete torchrun environment: {', '.join(missing)} not set (start with torchrun)")
    try:
        rank, size, local = (int(os.environ[k]) for k in ENV)
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: "
                         + ", ".join(f"{k}={os.environ[k]!r}" for k in ENV)) from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}")
    return rank, size, local


def resolve_device(name: str, world: World = World()) -> torch.device:
    """The torch device for the setting ``name``: ``auto`` is ``cuda`` if available else ``cpu``;
    with several processes, ``cuda`` is ``cuda:LOCAL_RANK`` (an explicit index is refused)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and world.distributed:
        if device.index is not None:
            raise ValueError(f"with several processes each uses cuda:LOCAL_RANK; give device 'cuda' "
                             f"(or 'auto'), not {name!r}")
        device = torch.device("cuda", world.local_rank)
    return device


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA index of ``device`` as a list (``[]`` for a CPU device; a bare ``cuda`` is the
    current device): the one way this package turns a device into the index torch's per-device
    calls take (``fork_rng``, ``get_device_name``)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def check_environment(device: str, batch_size: int | None = None) -> None:
    """A ValueError if ``torchrun``'s environment is unusable, or ``device`` or ``batch_size`` in it
    (what each process can check alone, before the process group waits for all of them)."""
    env = environment()
    if env is not None:
        world = World(*env)
        resolve_device(device, world)
        world.check_batch_size(batch_size)


@contextmanager
def launch(device: str) -> Iterator[World]:
    """The :class:`World` of this process: one process, or the process group that ``torchrun``'s
    environment describes (``gloo`` for a CPU ``device``, ``nccl`` for CUDA, plus a gloo group
    for host-side agreement), destroyed on exit."""
    env = environment()
    if env is None or env[1] == 1:
        yield World()
        return
    rank, size, local = env
    world = World(rank, size, local)
    cuda = resolve_device(device, world).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size, timeout=TIMEOUT)
    try:
        control = dist.new_group(backend="gloo", timeout=TIMEOUT) if cuda else None
        yield World(rank, size, local, control)
    finally:
        try:
            dist.destroy_process_group()
        except RuntimeError:  # a peer was lost: its connections are already broken
            pass


# ---------------------------------------------------------------------------- a lost process

LOST_WAIT_S = 3.0
_COMMUNICATION = ("gloo", "nccl", "NCCL", "Connection", "connection", "peer", "timed out", "Timeout")


def lost_peer(err: BaseException, world: World, wait_s: float = LOST_WAIT_S) -> list[int] | None:
    """When ``err`` is a failed collective of a data-parallel run (a peer died, or stopped
    answering): the ranks that are gone, found by every surviving process checking in through the
    process group's store for ``wait_s`` seconds (a rank that has not checked in by then counts as
    lost; where the store is gone with the process that held it, that is rank 0). None when
    ``err`` is something else (or the run has one process)."""
    if not world.distributed or not isinstance(err, RuntimeError):
        return None
    if not isinstance(err, dist.DistError) and not any(s in str(err) for s in _COMMUNICATION):
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        keys = [f"targetprop/alive/{rank}" for rank in range(world.size)]
        store.set(keys[world.rank], "1")
        deadline = time.monotonic() + wait_s
        while True:
            here = {rank for rank, key in enumerate(keys) if store.check([key])}
            if len(here) == world.size or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - no store to ask: it lived in process 0
        return [0] if world.rank else []
    return sorted(set(range(world.size)) - here)
