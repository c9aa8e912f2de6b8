"""TPLSTM's compiled loops (kernels/kernels.cpp: the forward keeping the gates, BP's adjoint
recursion, the TP rule's recursion) against the pure-PyTorch path, backend="torch": float64 to
1e-12 for every rule and layer shape, every instruction set, long sequences, threads; float32 to
its rounding; the backends the LSTM supports."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import assert_rel
from problems import use_backend
from targetprop import TPLSTM, kernels
from targetprop.cells import lstm

D64 = torch.float64


def _layer(layers=1, bidirectional=False, bias=True, d=3, p=13, seed=0, scale=1.5, dtype=D64, **options):
    """A batch-first TPLSTM with weights ~ N(0, scale²/fan_in) (gates far from ½, some derivatives
    floored by the TP rule)."""
    g = torch.Generator().manual_seed(seed)
    layer = TPLSTM(d, p, layers, bias=bias, batch_first=True, bidirectional=bidirectional, dtype=dtype,
                   reg=0.7, target_step=0.05, tol=0.02, **options)
    with torch.no_grad():
        for w in layer.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=D64) * scale / w.shape[-1] ** 0.5)
    return layer


def _data(layer, B, T, seed=1, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    states = layer.num_layers * layer.directions
    x = torch.randn(B, T, layer.input_size, generator=g, dtype=D64)
    h = 0.3 * torch.randn(states, B, layer.hidden_size, generator=g, dtype=D64)
    c = 0.5 * torch.randn(states, B, layer.hidden_size, generator=g, dtype=D64)
    return tuple(t.to(dtype) for t in (x, h, c))


def _run(layer, x, h, c, lengths=None):
    """One backward of ⟨C, out⟩ + ⟨Cn, h_n⟩ + ⟨Cc, c_n⟩: {what: tensor} of the outputs, the input
    and initial states' gradients and every parameter's direction."""
    layer.zero_grad(set_to_none=True)
    xg, hg, cg = (t.clone().requires_grad_(True) for t in (x, h, c))
    inp = xg if lengths is None else pack_padded_sequence(xg, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = layer(inp, (hg, cg))
    out = out if lengths is None else out.data
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=g, dtype=D64).to(t.dtype) for t in (out, h_n, c_n)]
    sum((t * w).sum() for t, w in zip((out, h_n, c_n), weights)).backward()
    result = {"output": out, "h_n": h_n, "c_n": c_n, "x grad": xg.grad, "h_0 grad": hg.grad, "c_0 grad": cg.grad}
    return result | {k: w.grad for k, w in layer.named_parameters()}


def _backends(layer, data, lengths=None):
    """{backend: _run} for "torch" and "cpp" on the same layer and data."""
    results = {}
    for backend in ("torch", "cpp"):
        use_backend(layer, backend)
        results[backend] = _run(layer, *data, lengths)
    return results


def _assert_agree(results, tol, where):
    want, got = results["torch"], results["cpp"]
    assert list(got) == list(want)
    for k in want:
        assert_rel(got[k], want[k], tol=tol, where=f"{where} {k}")


# bp has no through-time variant: (rule, through_time) rows
RULES = [("bp", False), ("linearized", False), ("linearized", True)]
SHAPES = list(itertools.product([1, 2], [False, True], [True, False], [False, True]))  # layers, bi, bias, packed


@pytest.mark.parametrize("rule,through_time", RULES)
@pytest.mark.parametrize("layers,bidirectional,bias,packed", SHAPES)
def test_compiled_loops_equal_pure_pytorch_in_float64(rule, through_time, layers, bidirectional, bias, packed):
    """B = 9 (two 4-row blocks and a single row), p = 13 (4p = 52: every vector width's column
    tail), the signal at every layer's h_n and c_n and the top layer's outputs."""
    layer = _layer(layers, bidirectional, bias, seed=3 + layers, rule=rule, through_time=through_time)
    lengths = torch.tensor([7, 2, 5, 7, 1, 6, 3, 7, 4]) if packed else None
    results = _backends(layer, _data(layer, B=9, T=7), lengths)
    _assert_agree(results, 1e-12, f"lstm {rule} tt={through_time} L={layers} bi={bidirectional} bias={bias} "
                                  f"packed={packed}")


def _isas():
    names = ["base", "avx2", "avx512"]
    return names[: names.index(kernels.load(required=True).widest_isa()) + 1]


@pytest.mark.parametrize("rule,through_time", RULES)
def test_every_instruction_set_equals_pure_pytorch(rule, through_time):
    use_backend(None, "cpp")
    module = kernels.load(required=True)
    layer = _layer(p=37, seed=5, rule=rule, through_time=through_time)
    data = _data(layer, B=6, T=30)
    try:
        for isa in _isas():
            module.set_isa(isa)
            _assert_agree(_backends(layer, data), 1e-12, f"lstm {isa} {rule} tt={through_time}")
    finally:
        module.set_isa(module.widest_isa())


@pytest.mark.parametrize("rule,through_time", RULES)
def test_long_sequences_whose_displacements_underflow(rule, through_time):
    """T = 300 with the loss on the last steps only (the displacements reach exactly zero far
    back: the loops skip such steps), p = 45."""
    layer = _layer(d=2, p=45, seed=6, scale=0.8, rule=rule, through_time=through_time)
    layer.reg = 10.0
    x, h, c = _data(layer, B=5, T=300)
    results = {}
    for backend in ("torch", "cpp"):
        use_backend(layer, backend)
        layer.zero_grad(set_to_none=True)
        out, (h_n, c_n) = layer(x, (h, c))
        (out[:, -10:].sum() + h_n.sum()).backward()
        results[backend] = {"output": out, "c_n": c_n} | {k: w.grad for k, w in layer.named_parameters()}
    _assert_agree(results, 1e-12, f"lstm T=300 {rule} tt={through_time}")
    assert results["cpp"]["weight_hh_l0"].abs().sum() > 0


@pytest.mark.parametrize("rule,through_time", RULES)
def test_float32_compiled_loops_are_within_rounding_of_float64(rule, through_time):
    """float32 runs of both paths against the float64 one: each within float32's rounding, amplified
    by the recursion (T = 40)."""
    results = {}
    for dtype, backend in ((D64, "torch"), (torch.float32, "torch"), (torch.float32, "cpp")):
        layer = _layer(p=20, seed=7, scale=1.0, dtype=dtype, rule=rule, through_time=through_time)
        use_backend(layer, backend)
        results[dtype, backend] = _run(layer, *_data(layer, B=5, T=40, dtype=dtype))
    want = results[D64, "torch"]
    for k in want:
        err32 = assert_rel(results[torch.float32, "torch"][k], want[k], tol=1e-4, where=f"f32 torch {k}")
        err = assert_rel(results[torch.float32, "cpp"][k], want[k], tol=1e-4, where=f"f32 cpp {k}")
        assert err <= 10 * err32 + 1e-6, f"{k}: compiled float32 error {err:.1e}, PyTorch's {err32:.1e}"


def test_threads_agree():
    """Rows are split across threads once: the forward is bit-identical on 1 and 2 threads and the
    directions agree to rounding (BLAS sums the products after the recursions per thread count)."""
    layer = _layer(d=2, p=100, seed=8, rule="linearized")
    use_backend(layer, "cpp")
    data = _data(layer, B=9, T=120)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(layer, *data)
        torch.set_num_threads(2)
        two = _run(layer, *data)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one["output"], two["output"]) and torch.equal(one["c_n"], two["c_n"])
    for k in one:
        assert_rel(two[k], one[k], tol=1e-12, where=f"lstm {k} on 1 vs 2 threads")


def test_auto_selects_the_compiled_loops_and_the_forward_without_backward_agrees():
    """backend="auto" on CPU float64 is the compiled path (bit-identical to "cpp"); under no_grad
    the compiled forward gives the native path's outputs and states."""
    layer = _layer(2, True, seed=9)
    data = _data(layer, B=4, T=6)
    use_backend(layer, "cpp")
    cpp = _run(layer, *data)
    layer.backend = "auto"
    auto = _run(layer, *data)
    for k in cpp:
        assert torch.equal(auto[k], cpp[k]), k
    with torch.no_grad():
        outs = {}
        for backend in ("torch", "cpp"):
            layer.backend = backend
            out, (h_n, c_n) = layer(data[0], data[1:])
            outs[backend] = {"output": out, "h_n": h_n, "c_n": c_n}
    _assert_agree(outs, 1e-12, "no-grad forward")


def test_the_compiled_forward_keeps_the_same_gates():
    use_backend(None, "cpp")
    layer = _layer(seed=10)
    x, h, c = _data(layer, B=5, T=8)
    w = [t.detach() for t in layer.all_weights[0]]
    s0 = torch.cat([h[0], c[0]], -1)
    xt = x.transpose(0, 1).contiguous()
    out_t, gates_t = lstm.forward_for_backward(xt, s0, *w)
    out_c, gates_c = lstm.forward_for_backward(xt, s0, *w, kernels=kernels.load(required=True))
    assert gates_c.shape == (8, 5, 5, 13)
    assert_rel(out_c, out_t, tol=1e-14, where="compiled forward states")
    assert_rel(gates_c, gates_t, tol=1e-14, where="compiled forward gates")


def test_the_lstm_has_no_triton_backend():
    """A clear error at construction, and when the attribute is set later, naming the layer and the
    backends it has; the other cells keep theirs."""
    with pytest.raises(ValueError, match=r"TPLSTM supports backend 'auto', 'cpp', 'torch', got 'triton' "
                                         r"\(there are no triton kernels for the LSTM cell\)"):
        TPLSTM(2, 3, backend="triton")
    layer = TPLSTM(2, 3)
    with pytest.raises(ValueError, match="TPLSTM supports backend"):
        layer.backend = "triton"
    assert layer.backend == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        TPLSTM(2, 3, backend="cuda")
    assert lstm.BACKENDS == ("auto", "cpp", "torch")


@pytest.mark.parametrize("arg,shape,dtype,match", [
    ("gates", (4, 2, 4, 3), D64, "gates has shape"),
    ("lam", (4, 2, 6), D64, "lam has shape"),
    ("mat", (3, 12), D64, "mat has shape"),
    ("h0", (2, 6), torch.float32, "dtypes differ"),
])
def test_the_compiled_recursion_names_a_bad_argument(arg, shape, dtype, match):
    use_backend(None, "cpp")
    T, B, p = 4, 2, 3
    args = {"lam": (T + 1, B, 2 * p), "gates": (T, B, 5, p), "h0": (B, 2 * p), "out": (T, B, 2 * p), "mat": (4 * p, p)}
    tensors = {k: torch.zeros(v, dtype=D64) for k, v in args.items()}
    tensors[arg] = torch.zeros(shape, dtype=dtype)
    with pytest.raises(RuntimeError, match=f"lstm_recursion_: {match}"):
        kernels.load(required=True).lstm_recursion_(*tensors.values(), True, 0.1, 0.1, torch.zeros(0, dtype=D64))


def test_a_batch_wider_than_the_forwards_row_chunks():
    """B = 150: the compiled forward runs each step on chunks of 64 rows (and a rest of 22)."""
    layer = _layer(p=13, seed=11, rule="linearized")
    _assert_agree(_backends(layer, _data(layer, B=150, T=5)), 1e-12, "lstm B=150")
