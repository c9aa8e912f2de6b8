"""Fused recurrences in Triton: the kernel module of ``backend="triton"`` (CUDA tensors).

The same four in-place functions, with the same semantics, as the compiled CPU loops
(``kernels/kernels.cpp``), which the cells call without knowing which module they hold:

* ``elman_forward_(out, h0, wt, activation_code)``: over ``out`` (T, B, p) holding the input
  projections, ``h_t = a(out_t + h_{t-1} @ wt)``; codes tanh 0, sigmoid 1, identity 2, relu 3;
* ``scaled_recursion_(lam, factor, mat, divide, floor)``: ``lam`` (T+1, B, p); for t = T..1,
  ``lam[t-1] += (lam[t] * factor[t-1]) @ mat``, or ``(lam[t] / max(factor[t-1], floor)) @ mat``;
* ``gru_forward_(gi, h0, wt, bias, out, gates)``: the GRU forward, writing the hidden states and
  every step's gates ``[r, z, q, n]`` (T, B, 4, p);
* ``gru_recursion_(lam, gates, h0, out, mat, linearized, floor, adjoints)``:
  ``lam[t-1] += z⊙lam[t] + s(lam[t]) @ mat`` (mat (3p, p)), writing the pre-activation adjoints
  ``[c_r, c_z, c_n, (1−n²)(1−z)]⊙lam[t]`` into ``adjoints`` unless it is empty.

Each is **one launch over all T steps**: a program owns :data:`BLOCK_B` batch rows (the batch is
split across programs, rows being independent through every recursion), loads the recurrent
matrix (p×p, or the GRU's three p×p blocks) once, before the loop over time (Triton keeps it in
shared memory: read in the compiled kernels' IR, ``ttg.local_alloc`` hoisted out of the loop), and
carries its rows' state from step to step in registers; each step is one ``tl.dot`` per
matrix block plus elementwise work. Hidden sizes are padded to the next power of two ≥ 16 (what
``tl.dot`` needs on a GPU) and masked: padded rows of the matrix are zero and padded columns of
the state are held at zero, so they add nothing.

Covered: float32, hidden sizes 1..:data:`MAX_WIDTH` whose matrices fit the device's shared
memory (:func:`fits`: every width for the Elman cell; for the GRU every width on an H100/H200, up
to 64 on an A100), any T and B (B = 0 or T = 0 launch nothing). float64 runs in Triton's CPU
interpreter only (``tl.dot`` in float64 has not been run on a GPU here):
:func:`targetprop.kernels.select_kernels` falls back to the PyTorch path, with one warning, for
float64 CUDA tensors and for layers that are too wide. Products run at IEEE float32
precision (no TF32), so the results match the other backends to float32 rounding.

The kernels are built per mode: Triton's JIT for CUDA tensors, Triton's interpreter
(``TRITON_INTERPRET=1``, numpy underneath, slow) for CPU tensors, which is how the tests run
them on machines without a GPU.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

#: batch rows per program: ``tl.dot`` needs at least 16 rows on a GPU
BLOCK_B = 16
#: widest hidden size handled: the matrices stay in shared memory, at most 227 KiB per block on
#: current GPUs; an Elman layer at p = 256 would need 256 KiB (a GRU at p = 128 needs 216 KiB, which
#: :func:`fits` checks against the device); wider layers fall back
MAX_WIDTH = 128
#: dtypes the kernels accept: compiled for the GPU, and under the interpreter
GPU_DTYPES = (torch.float32,)
INTERPRETER_DTYPES = (torch.float32, torch.float64)
ACTIVATION_CODES = {"tanh": 0, "sigmoid": 1, "identity": 2, "relu": 3}


def padded(p: int) -> int:
    """The block width for hidden size ``p``: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(p))


def shared_bytes(blocks: int, P: int, itemsize: int = 4) -> int:
    """Shared memory a kernel holding ``blocks`` P×P matrices needs: Triton keeps the matrices
    there (loaded once, before the loop over time), plus at most three BLOCK_B×P staging buffers
    (measured on the compiled kernels for sm_80 and sm_90: tests/test_triton.py checks it)."""
    return blocks * P * P * itemsize + 3 * BLOCK_B * P * itemsize


def fits(device: torch.device, blocks: int, p: int) -> bool:
    """Whether the kernels for ``blocks`` matrix blocks of width ``p`` fit the device's shared memory
    (a GRU at p = 128 needs 216 KiB: an H100/H200 has 227 KiB per block, an A100 163 KiB)."""
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block
    return shared_bytes(blocks, padded(p)) <= limit


def _warps(blocks: int, P: int) -> int:
    """Warps per program: enough threads that ``blocks`` P×P matrices fit in registers (not measured)."""
    return max(4, min(16, triton.next_power_of_2(blocks * P * P // 2048)))


# ---------------------------------------------------------------------------------------------
# Kernel bodies: plain functions, turned into Triton kernels by _kernels() (one set per mode).
# They use only triton.language, so the interpreter and the compiler run the same source.


def _sigmoid(x):
    """1 / (1 + e^{−x}) (``tl.sigmoid`` is itself a jitted function, which the interpreter runs only
    when Triton was imported with ``TRITON_INTERPRET=1``; this uses built-ins only)."""
    return 1.0 / (1.0 + tl.exp(-x))


def _tanh(x):
    """tanh from exp (triton.language has no tanh the interpreter runs): (1 − e^{−2|x|}) / (1 + e^{−2|x|})
    with the sign restored, and its Taylor series below |x| = 0.1, where the quotient loses digits."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    # x − x³/3 + 2x⁵/15 − 17x⁷/315 + 62x⁹/2835 − 1382x¹¹/155925 + 21844x¹³/6081075
    poly = 21844.0 / 6081075.0
    poly = poly * x2 - 1382.0 / 155925.0
    poly = poly * x2 + 62.0 / 2835.0
    poly = poly * x2 - 17.0 / 315.0
    poly = poly * x2 + 2.0 / 15.0
    poly = poly * x2 - 1.0 / 3.0
    small = x + x * x2 * poly
    return tl.where(a < 0.1, small, tl.where(x < 0, -big, big))


def _elman_forward_kernel(out_ptr, h0_ptr, wt_ptr, T, B, p, ACT: tl.constexpr, P: tl.constexpr,
                          BB: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cols = tl.arange(0, P)
    cmask = cols < p
    mask = (rows < B)[:, None] & cmask[None, :]
    at = rows.to(tl.int64)[:, None] * p + cols[None, :]  # offsets of this block in a (B, p) slice
    w = tl.load(wt_ptr + cols[:, None] * p + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    h = tl.load(h0_ptr + at, mask=mask, other=0.0)
    step = B.to(tl.int64) * p
    for t in range(T):
        ptrs = out_ptr + t * step + at
        u = tl.load(ptrs, mask=mask, other=0.0) + tl.dot(h, w, input_precision=PRECISION)
        if ACT == 0:
            h = _tanh(u)
        elif ACT == 1:
            h = _sigmoid(u)
        elif ACT == 3:
            h = tl.maximum(u, 0.0)
        else:
            h = u
        h = tl.where(mask, h, 0.0)
        tl.store(ptrs, h, mask=mask)


def _scaled_recursion_kernel(lam_ptr, factor_ptr, mat_ptr, T, B, p, floor, DIVIDE: tl.constexpr,
                             P: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cols = tl.arange(0, P)
    cmask = cols < p
    mask = (rows < B)[:, None] & cmask[None, :]
    at = rows.to(tl.int64)[:, None] * p + cols[None, :]
    m = tl.load(mat_ptr + cols[:, None] * p + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    step = B.to(tl.int64) * p
    cur = tl.load(lam_ptr + T * step + at, mask=mask, other=0.0)  # λ_T, final
    for i in range(T):
        t = T - i  # t = T..1: λ_{t-1} += s(λ_t) @ mat
        f = tl.load(factor_ptr + (t - 1) * step + at, mask=mask, other=1.0)
        if DIVIDE:
            s = cur / tl.maximum(f, floor)
        else:
            s = cur * f
        s = tl.where(mask, s, 0.0)
        ptrs = lam_ptr + (t - 1) * step + at
        cur = tl.load(ptrs, mask=mask, other=0.0) + tl.dot(s, m, input_precision=PRECISION)
        tl.store(ptrs, cur, mask=mask)


def _gru_forward_kernel(gi_ptr, h0_ptr, wt_ptr, bias_ptr, out_ptr, gates_ptr, T, B, p, HAS_BIAS: tl.constexpr,
                        P: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cols = tl.arange(0, P)
    cmask = cols < p
    mask = (rows < B)[:, None] & cmask[None, :]
    r64 = rows.to(tl.int64)[:, None]
    at = r64 * p + cols[None, :]  # (B, p) slices: h0, out[t]
    at3 = r64 * (3 * p) + cols[None, :]  # (B, 3p) slices: gi[t], block k at + k p
    at4 = r64 * (4 * p) + cols[None, :]  # (B, 4, p) slices: gates[t], gate k at + k p
    # wt = W_hhᵀ (p, 3p): the r, z, n blocks are its column blocks
    wmask = cmask[:, None] & cmask[None, :]
    wofs = cols[:, None] * (3 * p) + cols[None, :]
    w_r = tl.load(wt_ptr + wofs, mask=wmask, other=0.0)
    w_z = tl.load(wt_ptr + p + wofs, mask=wmask, other=0.0)
    w_n = tl.load(wt_ptr + 2 * p + wofs, mask=wmask, other=0.0)
    if HAS_BIAS:
        b_r = tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
        b_z = tl.load(bias_ptr + p + cols, mask=cmask, other=0.0)[None, :]
        b_n = tl.load(bias_ptr + 2 * p + cols, mask=cmask, other=0.0)[None, :]
    h = tl.load(h0_ptr + at, mask=mask, other=0.0)
    Bp = B.to(tl.int64) * p
    for t in range(T):
        x = gi_ptr + t * 3 * Bp + at3
        g = gates_ptr + t * 4 * Bp + at4
        pre_r = tl.load(x, mask=mask, other=0.0) + tl.dot(h, w_r, input_precision=PRECISION)
        pre_z = tl.load(x + p, mask=mask, other=0.0) + tl.dot(h, w_z, input_precision=PRECISION)
        q = tl.dot(h, w_n, input_precision=PRECISION)
        if HAS_BIAS:
            pre_r += b_r
            pre_z += b_z
            q += b_n
        r = _sigmoid(pre_r)
        z = _sigmoid(pre_z)
        n = _tanh(tl.load(x + 2 * p, mask=mask, other=0.0) + r * q)
        h = tl.where(mask, n + z * (h - n), 0.0)
        tl.store(g, r, mask=mask)
        tl.store(g + p, z, mask=mask)
        tl.store(g + 2 * p, q, mask=mask)
        tl.store(g + 3 * p, n, mask=mask)
        tl.store(out_ptr + t * Bp + at, h, mask=mask)


def _gru_recursion_kernel(lam_ptr, gates_ptr, h0_ptr, out_ptr, mat_ptr, adj_ptr, T, B, p, floor,
                          LINEARIZED: tl.constexpr, EMIT: tl.constexpr, P: tl.constexpr, BB: tl.constexpr,
                          PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cols = tl.arange(0, P)
    cmask = cols < p
    mask = (rows < B)[:, None] & cmask[None, :]
    r64 = rows.to(tl.int64)[:, None]
    at = r64 * p + cols[None, :]
    at4 = r64 * (4 * p) + cols[None, :]
    # mat (3p, p): the r, z, n blocks are its row blocks
    mmask = cmask[:, None] & cmask[None, :]
    mofs = cols[:, None] * p + cols[None, :]
    m_r = tl.load(mat_ptr + mofs, mask=mmask, other=0.0)
    m_z = tl.load(mat_ptr + p * p + mofs, mask=mmask, other=0.0)
    m_n = tl.load(mat_ptr + 2 * p * p + mofs, mask=mmask, other=0.0)
    Bp = B.to(tl.int64) * p
    lam_t = tl.load(lam_ptr + T * Bp + at, mask=mask, other=0.0)  # λ_T, final
    for i in range(T):
        t = T - i  # t = T..1
        g = gates_ptr + (t - 1) * 4 * Bp + at4
        r = tl.load(g, mask=mask, other=0.0)
        z = tl.load(g + p, mask=mask, other=0.0)
        q = tl.load(g + 2 * p, mask=mask, other=0.0)
        n = tl.load(g + 3 * p, mask=mask, other=0.0)
        if t > 1:
            h = tl.load(out_ptr + (t - 2) * Bp + at, mask=mask, other=0.0)
        else:
            h = tl.load(h0_ptr + at, mask=mask, other=0.0)
        dn = (1.0 - n * n) * (1.0 - z)
        dr = r * (1.0 - r)
        dz = z * (1.0 - z)
        b_r = dr * q * dn * lam_t
        b_z = dz * (h - n) * lam_t
        b_n = r * dn * lam_t
        if EMIT:
            a = adj_ptr + (t - 1) * 4 * Bp + at4
            tl.store(a, b_r, mask=mask)
            tl.store(a + p, b_z, mask=mask)
            tl.store(a + 2 * p, b_n, mask=mask)
            tl.store(a + 3 * p, dn * lam_t, mask=mask)
        if LINEARIZED:
            s_r = tl.where(mask, q * dn * lam_t / tl.maximum(dr, floor), 0.0)
            s_z = tl.where(mask, (h - n) * lam_t / tl.maximum(dz, floor), 0.0)
        else:
            s_r = b_r
            s_z = b_z
        ptrs = lam_ptr + (t - 1) * Bp + at
        acc = tl.load(ptrs, mask=mask, other=0.0) + z * lam_t
        acc += tl.dot(s_r, m_r, input_precision=PRECISION)
        acc += tl.dot(s_z, m_z, input_precision=PRECISION)
        acc += tl.dot(b_n, m_n, input_precision=PRECISION)
        lam_t = tl.where(mask, acc, 0.0)
        tl.store(ptrs, lam_t, mask=mask)


_SCALARS = ("T", "B", "p", "floor")
_BODIES = {"elman_forward": _elman_forward_kernel, "scaled_recursion": _scaled_recursion_kernel,
           "gru_forward": _gru_forward_kernel, "gru_recursion": _gru_recursion_kernel}


@functools.cache
def _kernels(interpreted: bool) -> dict:
    """The kernels of one mode: the interpreter's (CPU tensors) or the JIT compiler's (CUDA).
    The helpers (``_tanh``, ``_sigmoid``) are looked up by name from the kernels' globals at run or compile
    time, so it is bound in the same mode as the kernels."""
    if interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        wrap = InterpretedFunction
    else:
        wrap = triton.jit
    helpers = {"_tanh": wrap(_tanh), "_sigmoid": wrap(_sigmoid)}
    out = {}
    for name, body in _BODIES.items():
        # a fresh function over a namespace holding this mode's helper, so modes never mix
        namespace = dict(body.__globals__, **helpers)
        fn = type(body)(body.__code__, namespace, body.__name__, body.__defaults__, body.__closure__)
        fn.__module__, fn.__qualname__, fn.__doc__ = body.__module__, body.__qualname__, body.__doc__
        fn.__annotations__ = dict(body.__annotations__)
        # sizes and scalars are never specialized (Triton makes an int argument equal to 1 a constant)
        out[name] = wrap(fn, do_not_specialize=[a for a in _SCALARS if a in fn.__code__.co_varnames])
    return out


#: ``"ieee"``: full float32 products (matches the other backends to rounding); ``"tf32"`` would
#: use the tensor cores at TF32 precision (not tested here)
PRECISION = "ieee"


def launch_options(name: str, P: int) -> dict:
    """Compiler options of kernel ``name`` at padded width ``P``: warps, multiply-adds fused (Triton
    3.9's default, said explicitly), and for the GRU's kernels
    no software pipelining of the per-step loads (its staging buffers would take 64 KiB more
    shared memory than the three matrices leave at P = 128)."""
    blocks = 3 if name.startswith("gru") else 1
    return {"num_warps": _warps(blocks, P), "enable_fp_fusion": True, **({"num_stages": 1} if blocks == 3 else {})}


def _launch(name: str, like: Tensor, B: int, *args, P: int, **constexprs) -> None:
    interpreted = like.device.type != "cuda"
    kernel = _kernels(interpreted)[name]
    grid = (triton.cdiv(B, BLOCK_B),)
    if interpreted:
        kernel[grid](*args, P=P, BB=BLOCK_B, PRECISION=PRECISION, **constexprs)
        return
    with torch.cuda.device(like.device):
        kernel[grid](*args, P=P, BB=BLOCK_B, PRECISION=PRECISION, **constexprs, **launch_options(name, P))


def _check(name: str, *tensors: tuple[str, Tensor]) -> None:
    dtype, device = tensors[0][1].dtype, tensors[0][1].device
    for what, t in tensors:
        if not t.is_contiguous():
            raise ValueError(f"{name}: {what} must be contiguous")
        if t.dtype != dtype or t.device != device:
            raise ValueError(f"{name}: {what} is {t.dtype} on {t.device}, the others {dtype} on {device}")
    allowed = GPU_DTYPES if device.type == "cuda" else INTERPRETER_DTYPES
    if dtype not in allowed:
        raise ValueError(f"{name}: {dtype} is not covered on {device.type} (covered: {allowed})")


def _shape(name: str, what: str, t: Tensor, *shape: int) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: {what} has shape {tuple(t.shape)}, expected {shape}")


def elman_forward_(out: Tensor, h0: Tensor, wt: Tensor, activation: int) -> None:
    """``out`` (T, B, p) holding ``x_t W_ihᵀ + b``, overwritten by h_1..h_T; ``wt = W_hhᵀ``."""
    T, B, p = out.shape
    _check("elman_forward_", ("out", out), ("h0", h0), ("wt", wt))
    _shape("elman_forward_", "h0", h0, B, p)
    _shape("elman_forward_", "wt", wt, p, p)
    if activation not in (0, 1, 2, 3):
        raise ValueError(f"elman_forward_: unknown activation code {activation}")
    if T and B and p:
        P = padded(p)
        _launch("elman_forward", out, B, out, h0, wt, T, B, p, ACT=activation, P=P)


def scaled_recursion_(lam: Tensor, factor: Tensor, mat: Tensor, divide: bool, floor: float) -> None:
    """For t = T..1: ``lam[t-1] += (lam[t] * factor[t-1]) @ mat`` (or ``/ max(factor[t-1], floor)``)."""
    T, B, p = factor.shape
    _check("scaled_recursion_", ("lam", lam), ("factor", factor), ("mat", mat))
    _shape("scaled_recursion_", "lam", lam, T + 1, B, p)
    _shape("scaled_recursion_", "mat", mat, p, p)
    if T and B and p:
        P = padded(p)
        _launch("scaled_recursion", lam, B, lam, factor, mat, T, B, p, float(floor), DIVIDE=bool(divide), P=P)


def gru_forward_(gi: Tensor, h0: Tensor, wt: Tensor, bias: Tensor, out: Tensor, gates: Tensor) -> None:
    """GRU forward: ``gi`` (T, B, 3p) = x W_ihᵀ + b_ih, ``wt = W_hhᵀ`` (p, 3p), ``bias`` b_hh (3p)
    or empty; writes ``out`` (T, B, p) and ``gates`` (T, B, 4, p) = [r, z, q, n] per step."""
    T, B, p = out.shape
    has_bias = bias.numel() > 0
    _check("gru_forward_", ("gi", gi), ("h0", h0), ("wt", wt), ("out", out), ("gates", gates),
           *((("bias", bias),) if has_bias else ()))
    _shape("gru_forward_", "gi", gi, T, B, 3 * p)
    _shape("gru_forward_", "h0", h0, B, p)
    _shape("gru_forward_", "wt", wt, p, 3 * p)
    _shape("gru_forward_", "gates", gates, T, B, 4, p)
    if has_bias:
        _shape("gru_forward_", "bias", bias, 3 * p)
    if T and B and p:
        P = padded(p)
        _launch("gru_forward", out, B, gi, h0, wt, bias if has_bias else gi, out, gates, T, B, p, HAS_BIAS=has_bias,
                P=P)


def gru_recursion_(lam: Tensor, gates: Tensor, h0: Tensor, out: Tensor, mat: Tensor, linearized: bool, floor: float,
                   adjoints: Tensor) -> None:
    """For t = T..1: ``lam[t-1] += z⊙lam[t] + s(lam[t]) @ mat`` (``mat`` (3p, p)); BP's scales, or
    the linearized rule's (gate derivatives floored at ``floor`` and divided); the pre-activation
    adjoints into ``adjoints`` (T, B, 4, p) unless it is empty."""
    T, B, p = out.shape
    emit = adjoints.numel() > 0
    _check("gru_recursion_", ("lam", lam), ("gates", gates), ("h0", h0), ("out", out), ("mat", mat),
           *((("adjoints", adjoints),) if emit else ()))
    _shape("gru_recursion_", "lam", lam, T + 1, B, p)
    _shape("gru_recursion_", "gates", gates, T, B, 4, p)
    _shape("gru_recursion_", "h0", h0, B, p)
    _shape("gru_recursion_", "mat", mat, 3 * p, p)
    if emit:
        _shape("gru_recursion_", "adjoints", adjoints, T, B, 4, p)
    if T and B and p:
        P = padded(p)
        _launch("gru_recursion", lam, B, lam, gates, h0, out, mat, adjoints if emit else lam, T, B, p, float(floor),
                LINEARIZED=bool(linearized), EMIT=emit, P=P)
