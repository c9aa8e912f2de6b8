"""The Triton recursions (``backend="triton"``, kernels/triton_rnn.py): each function against a
straightforward float64 loop of its spec, and whole layers against ``backend="torch"``.

Without a GPU these run in Triton's CPU interpreter: the ``triton`` fixture sets
``TRITON_INTERPRET=1`` for the test, which lets ``backend="triton"`` take CPU tensors. With a
CUDA device the same tests run the compiled kernels on it (float32; float64 is the interpreter's
only, and on CUDA falls back to the PyTorch path). Skipped, with the reason, where Triton is not
installed (it comes with the ``gpu`` extra; the Makefile's environment installs it).
"""
import copy
import types
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import assert_rel, needs, require
from problems import make_problem, run_layer
from targetprop import TPGRU, TPRNN, kernels

require("triton")
from targetprop.kernels import triton_rnn  # noqa: E402

D64 = torch.float64
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
#: dtypes the kernels run in on this machine's device
DTYPES = [torch.float32] if CUDA else [torch.float32, D64]
#: (T, B, p): one step of one row at the smallest width; odd B over two programs (16 + 1 rows) at a
#: width padded 45 -> 64; p = 100 padded to 128, B odd in one program
SHAPES = [(1, 1, 7), (30, 17, 45), (30, 3, 100)]
#: relative tolerance against the float64 spec, per dtype the kernel ran in
TOL = {torch.float32: 2e-5, D64: 1e-12}


@pytest.fixture
def triton(monkeypatch):
    """Kernels reachable on this machine's device: the interpreter's on CPU."""
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return triton_rnn


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=D64) * scale


def _on(dtype, *tensors):
    return [t.to(DEVICE, dtype).contiguous() for t in tensors]


def _spec_activation(code, u):
    return [torch.tanh, torch.sigmoid, lambda v: v, torch.relu][code](u)


# ---------------------------------------------------------------------------- each function


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,B,p", SHAPES)
@pytest.mark.parametrize("code", [0, 1, 2, 3], ids=["tanh", "sigmoid", "identity", "relu"])
def test_elman_forward(triton, dtype, T, B, p, code):
    gen = torch.Generator().manual_seed(1)
    u, h0, wt = _randn(gen, T, B, p), _randn(gen, B, p, scale=0.5), _randn(gen, p, p, scale=1.5 / p ** 0.5)
    expected, h = u.clone(), h0
    for t in range(T):
        h = expected[t] = _spec_activation(code, u[t] + h @ wt)
    out, h0_, wt_ = _on(dtype, u, h0, wt)
    triton.elman_forward_(out, h0_, wt_, code)
    assert_rel(out.cpu().double(), expected, tol=TOL[dtype], where=f"elman forward {code}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,B,p", SHAPES)
@pytest.mark.parametrize("divide", [False, True])
def test_scaled_recursion(triton, dtype, T, B, p, divide):
    gen = torch.Generator().manual_seed(2)
    lam, mat = _randn(gen, T + 1, B, p), _randn(gen, p, p, scale=1 / p ** 0.5)
    factor = torch.rand(T, B, p, generator=gen, dtype=D64) + (0.0 if divide else 0.2)
    floor = 0.3
    expected = lam.clone()
    for t in range(T, 0, -1):
        s = expected[t] / factor[t - 1].clamp_min(floor) if divide else expected[t] * factor[t - 1]
        expected[t - 1] += s @ mat
    lam_, factor_, mat_ = _on(dtype, lam, factor, mat)
    triton.scaled_recursion_(lam_, factor_, mat_, divide, floor)
    assert_rel(lam_.cpu().double(), expected, tol=TOL[dtype], where=f"scaled recursion divide={divide}")


def _gru_spec(gi, h0, wt, bias):
    """(out, gates) of the GRU forward spec (kernels/kernels.cpp, gru_forward_)."""
    T, B, p = gi.shape[0], gi.shape[1], h0.shape[1]
    b = bias if bias.numel() else torch.zeros(3 * p, dtype=gi.dtype)
    out, gates, h = gi.new_empty(T, B, p), gi.new_empty(T, B, 4, p), h0
    for t in range(T):
        hw = h @ wt + b
        r = torch.sigmoid(gi[t, :, :p] + hw[:, :p])
        z = torch.sigmoid(gi[t, :, p:2 * p] + hw[:, p:2 * p])
        q = hw[:, 2 * p:]
        n = torch.tanh(gi[t, :, 2 * p:] + r * q)
        h = out[t] = n + z * (h - n)
        gates[t] = torch.stack([r, z, q, n], 1)
    return out, gates


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,B,p", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_gru_forward(triton, dtype, T, B, p, bias):
    gen = torch.Generator().manual_seed(3)
    gi, h0 = _randn(gen, T, B, 3 * p), _randn(gen, B, p, scale=0.5)
    wt, b = _randn(gen, p, 3 * p, scale=1.5 / p ** 0.5), _randn(gen, 3 * p) if bias else torch.empty(0, dtype=D64)
    out_expected, gates_expected = _gru_spec(gi, h0, wt, b)
    gi_, h0_, wt_, b_ = _on(dtype, gi, h0, wt, b)
    out = torch.full((T, B, p), float("nan"), dtype=dtype, device=DEVICE)
    gates = torch.full((T, B, 4, p), float("nan"), dtype=dtype, device=DEVICE)
    triton.gru_forward_(gi_, h0_, wt_, b_, out, gates)
    assert_rel(out.cpu().double(), out_expected, tol=TOL[dtype], where="gru forward out")
    assert_rel(gates.cpu().double(), gates_expected, tol=TOL[dtype], where="gru forward gates")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,B,p", SHAPES)
@pytest.mark.parametrize("linearized", [False, True])
@pytest.mark.parametrize("emit", [False, True], ids=["no-adjoints", "adjoints"])
def test_gru_recursion(triton, dtype, T, B, p, linearized, emit):
    gen = torch.Generator().manual_seed(4)
    gi, h0 = _randn(gen, T, B, 3 * p), _randn(gen, B, p, scale=0.5)
    out, gates = _gru_spec(gi, h0, _randn(gen, p, 3 * p, scale=1.5 / p ** 0.5), _randn(gen, 3 * p))
    # a contractive matrix, so that the divided (linearized) scales do not blow up over 30 steps
    lam, mat, floor = _randn(gen, T + 1, B, p), _randn(gen, 3 * p, p, scale=0.05 / p ** 0.5), 0.1 * 0.9
    expected, adj_expected = lam.clone(), torch.empty(T, B, 4, p, dtype=D64)
    h_prev = torch.cat([h0[None], out[:-1]])
    for t in range(T, 0, -1):
        r, z, q, n = gates[t - 1].unbind(1)
        l, h = expected[t], h_prev[t - 1]
        dn, dr, dz = (1 - n * n) * (1 - z), r * (1 - r), z * (1 - z)
        b = [dr * q * dn * l, dz * (h - n) * l, r * dn * l]
        adj_expected[t - 1] = torch.stack(b + [dn * l], 1)
        if linearized:
            b[0], b[1] = q * dn * l / dr.clamp_min(floor), (h - n) * l / dz.clamp_min(floor)
        expected[t - 1] += z * l + torch.cat(b, 1) @ mat
    lam_, gates_, h0_, out_, mat_ = _on(dtype, lam, gates, h0, out, mat)
    adjoints = torch.full((T, B, 4, p) if emit else (0,), float("nan"), dtype=dtype, device=DEVICE)
    triton.gru_recursion_(lam_, gates_, h0_, out_, mat_, linearized, floor, adjoints)
    where = f"gru recursion linearized={linearized}"
    assert_rel(lam_.cpu().double(), expected, tol=TOL[dtype], where=where)
    if emit:
        assert_rel(adjoints.cpu().double(), adj_expected, tol=TOL[dtype], where=where + " adjoints")
    else:
        assert adjoints.numel() == 0


def test_functions_check_their_arguments(triton):
    out, h0 = torch.zeros(2, 3, 4, device=DEVICE), torch.zeros(3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="wt has shape"):
        triton.elman_forward_(out, h0, torch.zeros(4, 5, device=DEVICE), 0)
    with pytest.raises(ValueError, match="unknown activation code 7"):
        triton.elman_forward_(out, h0, torch.zeros(4, 4, device=DEVICE), 7)
    with pytest.raises(ValueError, match="must be contiguous"):
        triton.elman_forward_(out.transpose(0, 1), h0, torch.zeros(4, 4, device=DEVICE), 0)
    with pytest.raises(ValueError, match="float64"):
        triton.scaled_recursion_(torch.zeros(3, 3, 4, device=DEVICE), torch.zeros(2, 3, 4, device=DEVICE),
                                 torch.zeros(4, 4, device=DEVICE, dtype=D64), False, 0.0)
    empty = torch.zeros(0, 3, 4, device=DEVICE)  # T = 0: nothing to do, nothing launched
    triton.elman_forward_(empty, h0, torch.zeros(4, 4, device=DEVICE), 0)


def test_padding_widths():
    assert [triton_rnn.padded(p) for p in (1, 7, 16, 17, 45, 100, 128)] == [16, 16, 16, 32, 64, 128, 128]


# ---------------------------------------------------------------------------- the choice


def test_selection(monkeypatch):
    x, w = torch.zeros(2, 3, 1), torch.zeros(4, 4)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(kernels.KernelUnavailableError, match="runs on CUDA tensors.*TRITON_INTERPRET=1"):
        kernels.select_kernels("triton", x, w)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.select_kernels("triton", x, w) is triton_rnn
    assert kernels.select_kernels("triton", x.double(), w.double()) is triton_rnn  # the interpreter runs float64
    wide = torch.zeros(triton_rnn.MAX_WIDTH + 1, triton_rnn.MAX_WIDTH + 1)
    with pytest.warns(RuntimeWarning, match="hidden size <= 128.*pure-PyTorch path"):
        assert kernels.select_kernels("triton", x, wide) is None
    compiled = types.SimpleNamespace(set_flush_enabled=lambda on: None)  # the compiled CPU loops, not built here
    monkeypatch.setattr(kernels, "_build", lambda: (compiled, None))
    assert kernels.select_kernels("auto", x, w) is compiled  # auto never picks Triton
    if CUDA:
        assert kernels.select_kernels("auto", x.cuda(), w.cuda()) is None  # CUDA: today's PyTorch path


def test_without_triton_installed_the_choice_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_triton(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "triton" or name.startswith("triton.") or (level and "triton_rnn" in (fromlist or ())):
            raise ImportError("No module named 'triton'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(builtins, "__import__", no_triton)
    with pytest.raises(kernels.KernelUnavailableError, match=r"needs Triton.*targetprop\[gpu\]"):
        kernels.select_kernels("triton", torch.zeros(2, 3, 1), torch.zeros(4, 4))


@needs("cuda")
def test_float64_on_cuda_falls_back_with_a_warning():
    x = torch.zeros(2, 3, 1, device="cuda", dtype=D64)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch path"):
        assert kernels.select_kernels("triton", x, torch.zeros(4, 4, device="cuda", dtype=D64)) is None


# ---------------------------------------------------------------------------- whole layers


def _layer_results(layer, x, h0, C, Cn, backend, dtype):
    layer = layer.to(DEVICE, dtype)
    layer.backend = backend
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernels cover these layers
        g, gx, gh, out, hn = run_layer(layer, *(t.to(DEVICE, dtype) for t in (x, h0, C, Cn)))
    return {**{k: v.cpu().double() for k, v in g.items()}, "input": gx.cpu().double(), "h0": gh.cpu().double(),
            "out": out.detach().cpu().double(), "h_n": hn.detach().cpu().double()}


def _assert_layers_agree(make, dtype, where, tol=None):
    """``backend="triton"`` in ``dtype`` against ``backend="torch"`` in float64 on the same layer."""
    reference = _layer_results(make(), *make.inputs, "torch", D64)
    ours = _layer_results(make(), *make.inputs, "triton", dtype)
    assert reference.keys() == ours.keys()
    for k in reference:
        assert_rel(ours[k], reference[k], tol=tol or (1e-10 if dtype == D64 else 1e-4), where=f"{where} {k}")


class _Problem:
    """A fresh copy of one seeded layer per call (``.inputs``: x, h0, C, Cn)."""

    def __init__(self, **kwargs):
        self.layer, *self.inputs = make_problem(**kwargs)

    def __call__(self):
        return copy.deepcopy(self.layer)


ELMAN_CASES = [("tanh", "bp", False), ("tanh", "linearized", False), ("tanh", "linearized", True),
               ("sigmoid", "linearized", False), ("identity", "linearized", True), ("relu", "linearized", False),
               ("relu", "bp", False), ("tanh", "difference", True), ("tanh", "direct", False)]
#: rules whose own steps differ by float32 rounding far more than any kernel does (a⁻¹ of nearby
#: values: the PyTorch path in float32 is 0.5-16% off its float64 self here); checked in float64
FLOAT64_ONLY = {"difference", "direct"}


@pytest.mark.parametrize("act,rule,through_time,dtype", [
    pytest.param(*case, dtype, id=f"{'-'.join(map(str, case))}-{dtype}") for case in ELMAN_CASES for dtype in DTYPES
    if dtype == D64 or case[1] not in FLOAT64_ONLY])
def test_tprnn_triton_equals_torch(triton, act, rule, through_time, dtype):
    """Every Elman rule runs the fused forward; bp, linearized and through-time the fused recursion."""
    make = _Problem(nonlinearity=act, B=5, T=30, d=3, p=45, seed=11, scale=0.9)
    make.layer.rule, make.layer.through_time, make.layer.reg = rule, through_time, 1.0
    # float64: the rules of FLOAT64_ONLY amplify the last bits of a (ours: tanh from exp) ~1e4-fold
    tol = 1e-8 if rule in FLOAT64_ONLY else None
    _assert_layers_agree(make, dtype, f"TPRNN {act} {rule} tt={through_time} {dtype}", tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule,through_time", [("bp", False), ("linearized", False), ("linearized", True)])
@pytest.mark.parametrize("B,p", [(1, 7), (3, 100)])
def test_tpgru_triton_equals_torch(triton, dtype, rule, through_time, B, p):
    make = _Problem(cell="gru", B=B, T=30, d=3, p=p, seed=12, scale=0.9)
    make.layer.rule, make.layer.through_time, make.layer.reg = rule, through_time, 1.0
    _assert_layers_agree(make, dtype, f"TPGRU B={B} p={p} {rule} tt={through_time} {dtype}")


@pytest.mark.parametrize("cls", [TPRNN, TPGRU], ids=["rnn", "gru"])
@pytest.mark.parametrize("through_time", [False, True])
def test_stacked_bidirectional_packed_layer(triton, cls, through_time):
    """Two bidirectional layers on a packed batch of unsorted lengths (each sequence reversed at its
    own end), float32 on the device against the float64 PyTorch path."""
    gen = torch.Generator().manual_seed(13)
    T, B, d, p = 12, 5, 3, 9
    ref = cls(d, p, 2, bidirectional=True, dtype=D64, reg=1.0, through_time=through_time, backend="torch")
    ours = cls(d, p, 2, bidirectional=True, reg=1.0, through_time=through_time, backend="triton").to(DEVICE)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x, lengths = torch.randn(T, B, d, generator=gen, dtype=D64), torch.tensor([7, 12, 3, 9, 12])
    results = []
    for m, dtype in ((ref, D64), (ours, torch.float32)):
        xg = x.to(DEVICE, dtype, copy=True).requires_grad_(True)
        out, h_n = m(pack_padded_sequence(xg, lengths, enforce_sorted=False))
        c = torch.randn(out.data.shape, generator=torch.Generator().manual_seed(14), dtype=D64).to(DEVICE, dtype)
        ((out.data * c).sum() + h_n.sum()).backward()
        results.append([out.data, h_n, xg.grad] + [w.grad for w in m.parameters()])
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert_rel(b.detach().cpu().double(), a.detach(), tol=1e-4, where=f"{cls.__name__} stack tensor {i}")


# ---------------------------------------------------------------------------- compiled for a GPU, without one

#: every branch of each kernel (its constexpr flags), compiled at the smallest width
VARIANTS = [("elman_forward", {"ACT": a}) for a in range(4)] + [
    ("scaled_recursion", {"DIVIDE": d}) for d in (False, True)] + [
    ("gru_forward", {"HAS_BIAS": b}) for b in (False, True)] + [
    ("gru_recursion", {"LINEARIZED": lin, "EMIT": e}) for lin in (False, True) for e in (False, True)]
#: the variant of each kernel that keeps the most on chip
LARGEST = {"elman_forward": {"ACT": 0}, "scaled_recursion": {"DIVIDE": True}, "gru_forward": {"HAS_BIAS": True},
           "gru_recursion": {"LINEARIZED": True, "EMIT": True}}


def _compile_for_gpu(name, flags, P, capability=90):
    """Triton's compiler, for an NVIDIA target, without a device (its own ptxas): the kernel as
    the launcher compiles it (float32 pointers, i32 sizes, the launch options)."""
    import triton as tt
    from triton.backends.compiler import GPUTarget

    fn = triton_rnn._kernels(False)[name]
    scalars = {"T": "i32", "B": "i32", "p": "i32", "floor": "fp32"}
    signature = {a: scalars.get(a, "*fp32" if a.endswith("_ptr") else "constexpr") for a in fn.arg_names}
    constexprs = dict(flags, P=P, BB=triton_rnn.BLOCK_B, PRECISION=triton_rnn.PRECISION)
    return tt.compile(tt.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                      target=GPUTarget("cuda", capability, 32), options=triton_rnn.launch_options(name, P))


@pytest.mark.parametrize("name,flags", VARIANTS, ids=[f"{n}-{'-'.join(map(str, f.values()))}" for n, f in VARIANTS])
def test_every_kernel_compiles_for_a_gpu(name, flags):
    """Catches what the interpreter cannot: the compiled mode's typing and lowering (to sm_90 PTX
    and a cubin) of every branch."""
    kernel = _compile_for_gpu(name, flags, 16)
    assert kernel.asm["cubin"] and ".local" not in kernel.asm["ptx"]  # nothing spilled to local memory


@pytest.mark.parametrize("name", list(LARGEST))
@pytest.mark.parametrize("capability", [80, 90])
def test_the_matrices_stay_in_shared_memory_within_the_bound_the_choice_assumes(name, capability):
    """At p = 100 (padded to 128): the kernel's shared memory is at least its matrices (held for the
    whole loop) and at most ``shared_bytes``, the bound ``select_kernels`` checks against the device;
    no register spills."""
    P, blocks = 128, 3 if name.startswith("gru") else 1
    kernel = _compile_for_gpu(name, LARGEST[name], P, capability)
    assert blocks * P * P * 4 <= kernel.metadata.shared <= triton_rnn.shared_bytes(blocks, P)
    assert "local_alloc" in kernel.asm["ttgir"] and ".local" not in kernel.asm["ptx"]
