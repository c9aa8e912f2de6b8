"""The conditions a run ran under: threads, versions, CPU, device.

Results depend on more than their settings: the number of intra-op threads changes the order
of floating-point sums (so a run's iteration counts move with it), and so can the torch
version and the CPU's vector extensions. :func:`describe` records them as plain JSON values;
the trainer writes them into each run's ``config.json`` and ``summary.json``.
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from .distributed import cuda_devices

CPUINFO = Path("/proc/cpuinfo")
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                "amx_tile", "asimd", "sve")


def describe(device: str | torch.device = "cpu", world_size: int = 1) -> dict:
    """The conditions of a run on ``device`` in ``world_size`` processes, as plain JSON values::

        {"threads": 2, "torch": "2.13.0+cpu", "python": "3.11.9", "platform": "Linux-…",
         "cpu": "AMD EPYC …", "cpu_flags": ["avx", "avx2", "fma"], "device": "cpu", "world_size": 1}

    ``threads`` is torch's intra-op thread count now; ``cpu_flags`` the vector extensions of
    :data:`VECTOR_FLAGS` the CPU reports (empty where ``/proc/cpuinfo`` is not readable);
    ``device`` the device's name (for CUDA, with the GPU's name and CUDA version); ``world_size``
    the number of data-parallel processes (``torchrun``'s ``WORLD_SIZE``; 1 without it).
    """
    device = torch.device(device)
    name = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(cuda_devices(device)[0])}, CUDA {torch.version.cuda})"
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "device": name,
        "world_size": world_size,
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``, else the platform's)."""
    value = _cpuinfo_field("model name")
    return value or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions of :data:`VECTOR_FLAGS` in ``/proc/cpuinfo``'s flags (x86) or
    features (ARM), in that order; empty where the file is not readable."""
    present = set((_cpuinfo_field("flags") or _cpuinfo_field("Features")).split())
    return [flag for flag in VECTOR_FLAGS if flag in present]


def _cpuinfo_field(key: str) -> str:
    """The value of the first ``key : value`` line of ``/proc/cpuinfo`` ('' if none)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return ""
