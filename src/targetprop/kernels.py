"""The compiled CPU loops (``csrc/kernels.cpp``), built on first use, with a pure-PyTorch fallback.

``load()`` compiles the extension with ``torch.utils.cpp_extension`` (needs a C++ compiler and
``ninja``; about a minute, once per machine and source version; cached in PyTorch's extension
directory) and returns it, or returns None, with one warning, when it cannot be built. Layers
choose per call with their ``backend`` argument: ``"auto"`` (compiled where it applies: CPU
tensors, float32/float64), ``"cpp"`` (compiled or an error) or ``"torch"`` (never compiled).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import sys
import warnings

import torch
from torch import Tensor

BACKENDS = ("auto", "cpp", "torch")
_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "kernels.cpp")


class KernelUnavailableError(RuntimeError):
    """``backend="cpp"`` was asked for but the compiled loops could not be built."""


def _name() -> str:
    with open(_SOURCE, "rb") as f:
        digest = hashlib.sha1(f.read() + torch.__version__.encode()).hexdigest()[:10]
    return f"targetprop_kernels_{digest}"


@functools.cache
def _build():
    """(module, None) or (None, reason)."""
    try:
        from torch.utils import cpp_extension

        name = _name()
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        if not glob.glob(os.path.join(root, "**", name + ".so"), recursive=True):
            print("targetprop: building the fused CPU kernels (first use only, about a minute)...",
                  file=sys.stderr, flush=True)
        module = cpp_extension.load(name=name, sources=[_SOURCE], extra_cflags=["-O3"], verbose=False)
        return module, None
    except Exception as exc:  # any build failure means: use the fallback, and say why once
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"


def load(required: bool = False):
    """The compiled module, or None (warning once) if it cannot be built; raise if ``required``."""
    module, reason = _build()
    if module is None:
        if required:
            raise KernelUnavailableError(f"backend='cpp' but the compiled kernels could not be built ({reason})")
        # the default warning filter shows this once per call site
        warnings.warn(f"targetprop: compiled kernels unavailable, using the pure-PyTorch path ({reason})",
                      RuntimeWarning, stacklevel=3)
    return module


def select(backend: str, *tensors: Tensor):
    """The compiled module if ``backend`` allows it and it applies to ``tensors``, else None."""
    if backend == "torch":
        return None
    applies = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
    if backend == "cpp":
        if not applies:
            raise KernelUnavailableError("backend='cpp' needs float32/float64 CPU tensors")
        return load(required=True)
    return load() if applies else None
