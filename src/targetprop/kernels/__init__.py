"""The compiled CPU loops (``kernels/kernels.cpp``), built on first use, with a pure-PyTorch fallback.

``load()`` compiles the extension with ``torch.utils.cpp_extension`` (needs a C++ compiler and
``ninja``; about a minute, once per environment and source version; cached in PyTorch's extension
directory, ``$TORCH_EXTENSIONS_DIR`` if set) and returns it, or returns None, with one warning,
when it cannot be built. Layers choose per call with their ``backend`` argument: ``"auto"`` (compiled where it applies: CPU
tensors, float32/float64), ``"cpp"`` (compiled or an error) or ``"torch"`` (never compiled).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import logging
import os
import sys
import sysconfig
import warnings

import torch
from torch import Tensor

from .. import fpmode

BACKENDS = ("auto", "cpp", "torch")
#: widest hidden size for which backend="auto" picks the compiled loops, for every cell: they hold
#: a 4-row block's outputs in registers and stream the (gates·p)×p matrix from cache. Measured
#: (docs/BENCHMARKS.md, "Compiled loops or BLAS"): faster than one BLAS product per step for every
#: p ≤ 512 and B ≤ 512 timed; wider matrices outgrow L2 and are left to BLAS (not measured).
MAX_COMPILED_WIDTH = 512
_SOURCE = os.path.join(os.path.dirname(__file__), "kernels.cpp")


class KernelUnavailableError(RuntimeError):
    """``backend="cpp"`` was asked for but the compiled loops could not be built."""


#: compiler flags; part of the build's identity
_CFLAGS = ["-O3"]


def _name() -> str:
    """The build's folder name, keyed by everything that changes the binary: the source, the
    flags, and the environment it links against (torch's version and location, the Python ABI).
    Each environment gets its own build, so environments sharing a cache never rebuild each
    other's (PyTorch's build folder records one environment's include paths and rebuilds when
    another asks)."""
    digest = hashlib.sha1()
    with open(_SOURCE, "rb") as f:
        digest.update(f.read())
    for part in (torch.__version__, os.path.dirname(torch.__file__), sys.implementation.cache_tag,
                 sysconfig.get_config_var("EXT_SUFFIX") or "", " ".join(_CFLAGS)):
        digest.update(part.encode() + b"\0")
    return f"targetprop_kernels_{digest.hexdigest()[:12]}"


def _build_root() -> str:
    from torch.utils import cpp_extension

    return os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()


_log = logging.getLogger(__name__)


@functools.cache
def _build():
    """(module, None) or (None, reason). PyTorch's builder holds a lock file in the build folder,
    so processes starting together wait for one build instead of racing."""
    try:
        from torch.utils import cpp_extension

        name = _name()
        root = _build_root()
        if not glob.glob(os.path.join(root, "**", name, "*.so"), recursive=True):
            # a warning so that it shows without any logging set up (the wait is long the first time)
            _log.warning("targetprop: building the fused CPU kernels %s under %s (once per environment, "
                         "about a minute)...", name, root)
        module = cpp_extension.load(name=name, sources=[_SOURCE], extra_cflags=_CFLAGS, verbose=False)
        module.set_flush_enabled(fpmode.flush_denormals_enabled())
        return module, None
    except Exception as exc:  # any build failure means: use the fallback, and say why once
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"


def sync_flush_setting() -> None:
    """Pass :func:`targetprop.fpmode.set_flush_denormals`'s setting to the compiled loops, if built."""
    if _build.cache_info().currsize:
        module, _ = _build()
        if module is not None:
            module.set_flush_enabled(fpmode.flush_denormals_enabled())


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


def select_kernels(backend: str, x: Tensor, w_hh: Tensor):
    """The one kernel choice of every cell: the compiled module where it applies and pays
    (hidden size ``w_hh.shape[-1]`` ≤ :data:`MAX_COMPILED_WIDTH` for ``"auto"``), else None."""
    if backend == "auto" and w_hh.shape[-1] > MAX_COMPILED_WIDTH:
        return None
    return select(backend, x, w_hh)
