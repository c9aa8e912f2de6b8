"""The kernel modules the cells call: the compiled CPU loops (``kernels/kernels.cpp``, built on
first use) and the Triton recursions for CUDA (``kernels/triton_rnn.py``), with a pure-PyTorch
fallback.

``load()`` compiles the C++ extension with ``torch.utils.cpp_extension`` (needs a C++ compiler and
``ninja``, found next to the running interpreter or in the ``ninja`` package when no ``ninja`` is
on ``PATH``; about a minute, once per environment and source version; cached in PyTorch's
extension directory, ``$TORCH_EXTENSIONS_DIR`` if set; ``targetprop kernels build`` does it ahead
of time) and returns it, or returns None, with one warning, when it cannot be built. Layers
choose per call with their ``backend`` argument: ``"auto"`` (compiled where it applies: CPU
tensors, float32/float64; CUDA tensors run the pure-PyTorch path), ``"cpp"`` (compiled or an
error), ``"torch"`` (never compiled) or ``"triton"`` (the Triton module for CUDA tensors, opt-in:
no GPU run has measured it yet; CPU tensors reach it only through Triton's interpreter,
``TRITON_INTERPRET=1``; needs the ``targetprop[gpu]`` extra). The compiled loops cover the Elman,
GRU and LSTM cells; the Triton module the Elman and GRU cells (a cell lists the backends it has
in its ``BACKENDS``, checked by the layer).
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import sys
import sysconfig
import time
import warnings

import torch
from torch import Tensor

from .. import fpmode

BACKENDS = ("auto", "cpp", "torch", "triton")
#: widest hidden size for which backend="auto" picks the compiled loops, for every cell: they hold
#: a 4-row block's outputs in registers and stream the (gates·p)×p matrix from cache. Measured
#: (docs/BENCHMARKS.md, "Compiled loops or BLAS"): faster than one BLAS product per step for every
#: p ≤ 512 and B ≤ 512 timed; wider matrices outgrow L2 and are left to BLAS (not measured).
MAX_COMPILED_WIDTH = 512
_SOURCE = os.path.join(os.path.dirname(__file__), "kernels.cpp")


class KernelUnavailableError(RuntimeError):
    """``backend="cpp"`` or ``"triton"`` was asked for but that module cannot run here."""


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


def _ninja_dirs() -> list[str]:
    """Folders that may hold this environment's ``ninja``: the running interpreter's own (a
    virtual environment's ``bin``, also when it is not activated) and the ``ninja`` package's."""
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        dirs.append(getattr(ninja, "BIN_DIR", ""))
    except ImportError:
        pass
    return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]


@contextlib.contextmanager
def _ninja_on_path():
    """``PATH`` with :func:`_ninja_dirs` appended for the duration of a build (PyTorch's builder
    runs ``ninja`` from ``PATH``), restored after."""
    old = os.environ.get("PATH")
    parts = (old or os.defpath).split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(parts + [d for d in _ninja_dirs() if d not in parts])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


#: a build lock older than this is a killed build's (a build takes about a minute)
STALE_LOCK_SECONDS = 900


def _clear_stale_lock(name: str) -> None:
    """Remove the build folder's lock file if it is older than :data:`STALE_LOCK_SECONDS`: PyTorch's
    builder waits for it without end, and a build killed midway (a timeout, Ctrl-C) leaves it."""
    from torch.utils import cpp_extension

    try:
        folder = cpp_extension._get_build_directory(name, verbose=False)
    except Exception:  # a private helper of PyTorch's: without it, leave the lock to PyTorch
        return
    lock = os.path.join(folder, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return
    if age > STALE_LOCK_SECONDS:
        _log.warning("targetprop: removing the stale build lock %s (%.0f s old: a build that was stopped)", lock, age)
        with contextlib.suppress(OSError):
            os.remove(lock)


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
        _clear_stale_lock(name)
        with _ninja_on_path():
            module = cpp_extension.load(name=name, sources=[_SOURCE], extra_cflags=_CFLAGS, verbose=False)
        module.set_flush_enabled(fpmode.flush_denormals_enabled())
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
    else:  # the loops keep their own copy of targetprop.fpmode's setting: passed at every use
        module.set_flush_enabled(fpmode.flush_denormals_enabled())
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
    (hidden size ``w_hh.shape[-1]`` ≤ :data:`MAX_COMPILED_WIDTH` for ``"auto"``), the Triton
    module for ``"triton"`` (:func:`select_triton`), else None."""
    if backend == "triton":
        return select_triton(x, w_hh)
    if backend == "auto" and w_hh.shape[-1] > MAX_COMPILED_WIDTH:
        return None
    return select(backend, x, w_hh)


def triton_interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read at each call)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def select_triton(x: Tensor, w_hh: Tensor):
    """``backend="triton"``: the Triton module (:mod:`targetprop.kernels.triton_rnn`) for CUDA
    tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).

    A KernelUnavailableError when Triton is not installed or the tensors are elsewhere; None (the
    pure-PyTorch path) with one warning where the kernels do not cover the layer: a dtype other
    than float32 on CUDA (float64 runs in the interpreter only), a hidden size above
    ``triton_rnn.MAX_WIDTH``, matrices larger than the device's shared memory (``triton_rnn.fits``)."""
    device = x.device.type
    if device != "cuda" and not (device == "cpu" and triton_interpreter_enabled()):
        raise KernelUnavailableError(
            f"backend='triton' runs on CUDA tensors, got {device} tensors (CPU tensors run through "
            "Triton's interpreter when TRITON_INTERPRET=1 is set: slow, for tests)")
    try:
        from . import triton_rnn
    except ImportError as exc:
        raise KernelUnavailableError(f"backend='triton' needs Triton, which could not be imported ({exc}); "
                                     "install it with: pip install 'targetprop[gpu]'") from exc
    allowed = triton_rnn.GPU_DTYPES if device == "cuda" else triton_rnn.INTERPRETER_DTYPES
    p = w_hh.shape[-1]
    blocks = w_hh.shape[0] // max(p, 1)  # matrix blocks: 1 for the Elman cell, 3 for the GRU
    if x.dtype not in allowed or w_hh.dtype not in allowed or p > triton_rnn.MAX_WIDTH:
        why = (f"covers {', '.join(str(d) for d in allowed)} {device} tensors with hidden size <= "
               f"{triton_rnn.MAX_WIDTH}; this layer ({x.dtype}, hidden size {p})")
    elif device == "cuda" and not triton_rnn.fits(x.device, blocks, p):
        why = (f"needs {triton_rnn.shared_bytes(blocks, triton_rnn.padded(p)) // 1024} KiB of shared memory at "
               f"hidden size {p}, more than {torch.cuda.get_device_name(x.device)} has per block; this layer")
    else:
        return triton_rnn
    # the default warning filter shows this once per call site and message
    warnings.warn(f"targetprop: backend='triton' {why} runs the pure-PyTorch path", RuntimeWarning, stacklevel=3)
    return None
