"""The compiled loops against the pure-PyTorch path, and the automatic fallback."""
import warnings

import pytest
import torch

from helpers import assert_rel, needs, require
from problems import make_gru, make_problem, run_layer
from targetprop import TPRNN, kernels


@needs("cpp")
def test_compiled_kernels_build_and_are_selected_automatically():
    module = kernels.load(required=True)
    assert kernels.select("auto", torch.zeros(1)) is module
    assert kernels.select("torch", torch.zeros(1)) is None
    assert kernels.select("auto", torch.zeros(1, dtype=torch.float16)) is None  # not applicable


@needs("cpp")
@pytest.mark.parametrize("rule", ["bp", "linearized"])
@pytest.mark.parametrize("through_time", [False, True])
def test_compiled_equals_pure_pytorch_on_long_sequences(rule, through_time):
    """T = 300 (displacements underflow far back: exercises the zero-skip), p = 45, both dtypes."""
    layer, x, h0, C, Cn = make_problem("tanh", B=5, T=300, d=3, p=45, seed=21, scale=0.5)
    layer.rule, layer.through_time, layer.reg = rule, through_time, 10.0
    C[:, :-10].zero_()  # losses only near the end, so displacements reach exactly zero far back
    results = {}
    for backend in ("torch", "cpp"):
        layer.backend = backend
        results[backend] = run_layer(layer, x, h0, C, Cn)
    (g1, x1, h1, o1, _), (g2, x2, h2, o2, _) = results["torch"], results["cpp"]
    assert_rel(o2, o1, where="compiled forward")
    for k in g1:
        assert_rel(g2[k], g1[k], where=f"compiled vs torch {rule} tt={through_time} {k}")
    assert_rel(x2, x1)
    assert_rel(h2, h1)


@needs("cpp")
@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_compiled_threads_agree(cell):
    """Rows are independent through the forward and the backward recursions: split across two
    threads (T·p² large enough for several rows per chunk), the forward is bit-identical and the
    directions agree to rounding (BLAS sums the stacked products per thread count)."""
    layer, x, h0, C, Cn = make_problem("tanh" if cell == "rnn" else None, B=9, T=120, d=2, p=100, seed=22,
                                       cell=cell, backend="cpp")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        r1 = run_layer(layer, x, h0, C, Cn)
        torch.set_num_threads(2)
        r2 = run_layer(layer, x, h0, C, Cn)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(r1[3], r2[3])  # the forward: our loops only, bit-identical
    for k in r1[0]:  # the directions: BLAS products after the recursion, summed per thread count
        assert_rel(r2[0][k], r1[0][k], tol=1e-12, where=f"{cell} {k} on 1 vs 2 threads")
    assert_rel(r2[1], r1[1], tol=1e-12)


def test_fallback_when_the_build_fails(monkeypatch):
    monkeypatch.setattr(kernels, "_build", lambda: (None, "OSError: no compiler"))
    layer, x, h0, C, Cn = make_problem("tanh", T=6, seed=23)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch path"):
        g_auto = run_layer(layer, x, h0, C, Cn)[0]
    layer.backend = "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g_torch = run_layer(layer, x, h0, C, Cn)[0]
    for k in g_auto:
        assert torch.equal(g_auto[k], g_torch[k])
    layer.backend = "cpp"
    with pytest.raises(kernels.KernelUnavailableError, match="no compiler"):
        run_layer(layer, x, h0, C, Cn)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        TPRNN(2, 3, backend="cuda")


@needs("cpp")
def test_auto_uses_compiled_loops_only_where_they_pay():
    x = torch.zeros(2, 3, 1)
    wide = torch.zeros(kernels.MAX_COMPILED_WIDTH + 1, kernels.MAX_COMPILED_WIDTH + 1)
    narrow = torch.zeros(kernels.MAX_COMPILED_WIDTH, kernels.MAX_COMPILED_WIDTH)
    assert kernels.select_kernels("auto", x, wide) is None
    assert kernels.select_kernels("auto", x, narrow) is kernels.load()
    assert kernels.select_kernels("cpp", x, wide) is kernels.load()  # asked for explicitly


def _isas():
    module = kernels.load(required=True)
    names = ["base", "avx2", "avx512"]
    return names[: names.index(module.widest_isa()) + 1]


@pytest.fixture(params=["base", "avx2", "avx512"])
def isa(request):
    """Each instruction set's build of the loops that this CPU can run (others skipped)."""
    require("cpp")
    module = kernels.load(required=True)
    if request.param not in _isas():
        pytest.skip(f"this CPU has no {request.param} (widest: {module.widest_isa()})")
    module.set_isa(request.param)
    yield request.param
    module.set_isa(module.widest_isa())


def _assert_backends_agree(results, where):
    """The compiled loops' forward, directions, input and h0 gradients equal pure PyTorch's."""
    (g1, x1, h1, o1, _), (g2, x2, h2, o2, _) = results["torch"], results["cpp"]
    assert_rel(o2, o1, where=f"{where} forward")
    for k in g1:
        assert_rel(g2[k], g1[k], where=f"{where} {k}")
    assert_rel(x2, x1, where=f"{where} input")
    assert_rel(h2, h1, where=f"{where} h0")


@pytest.mark.parametrize("rule", ["bp", "linearized"])
@pytest.mark.parametrize("B,p", [(9, 45), (4, 100), (1, 7)])
def test_every_instruction_set_equals_pure_pytorch(isa, rule, B, p):
    """B = 9: two 4-row blocks and a single row; p = 45 and 100: every vector width's column tail."""
    layer, x, h0, C, Cn = make_problem("tanh", B=B, T=40, d=3, p=p, seed=24, scale=0.9)
    layer.rule, layer.reg = rule, 1.0
    results = {}
    for backend in ("torch", "cpp"):
        layer.backend = backend
        results[backend] = run_layer(layer, x, h0, C, Cn)
    _assert_backends_agree(results, f"{isa} {rule}")


@pytest.mark.parametrize("rule", ["bp", "linearized"])
def test_every_instruction_set_equals_pure_pytorch_gru(isa, rule):
    results = {}
    for backend in ("torch", "cpp"):
        layer, x, h0, C, Cn = make_gru(B=6, T=30, p=37, seed=25, backend=backend)
        layer.rule = rule
        results[backend] = run_layer(layer, x, h0, C, Cn)
    _assert_backends_agree(results, f"{isa} gru {rule}")


@needs("cpp")
def test_set_isa_refuses_an_unknown_instruction_set():
    module = kernels.load(required=True)
    with pytest.raises(RuntimeError, match="not available"):
        module.set_isa("sse9")
    assert module.isa() == module.widest_isa()


def test_each_environment_and_source_has_its_own_build_folder(monkeypatch, tmp_path):
    """The build's name keys everything that changes the binary, so two environments sharing
    one extension cache (two virtualenvs, say) each keep their own build instead of rebuilding
    each other's."""
    name = kernels._name()
    assert name == kernels._name() and name.startswith("targetprop_kernels_")
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "other-venv" / "torch" / "__init__.py"))
    other_env = kernels._name()
    monkeypatch.undo()
    source = tmp_path / "kernels.cpp"
    source.write_bytes(open(kernels._SOURCE, "rb").read() + b"\n// edited\n")
    monkeypatch.setattr(kernels, "_SOURCE", str(source))
    assert len({name, other_env, kernels._name()}) == 3


def _path_without_ninja(tmp_path) -> str:
    """A PATH holding every program of this one (the compiler, the linker) but no ``ninja`` and
    not the running interpreter's folder: a venv's python run directly, not activated."""
    import os
    import sys

    tools = tmp_path / "bin"
    tools.mkdir()
    skip = {os.path.realpath(os.path.dirname(sys.executable))}
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isdir(folder) or os.path.realpath(folder) in skip:
            continue
        for name in os.listdir(folder):
            target, link = os.path.join(folder, name), tools / name
            if name != "ninja" and not link.exists() and os.access(target, os.X_OK) and os.path.isfile(target):
                link.symlink_to(target)
    return str(tools)


@needs("cpp")
def test_the_kernels_build_with_the_interpreter_run_directly_on_a_path_without_ninja(tmp_path):
    """PyTorch's builder runs ``ninja`` from PATH; the loader adds the interpreter's own folder
    (where a venv's ninja is) and the ninja package's for the build."""
    import os
    import shutil
    import subprocess
    import sys

    kernels.load(required=True)  # built (or found) in this environment's cache first
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    env["PATH"] = _path_without_ninja(tmp_path)
    # in a copy of the build: PyTorch's builder records the environment it ran in and rebuilds in
    # place when another one asks, so the shared build would be rebuilt twice (about 1.5 min each,
    # and other processes of the suite would wait on its lock)
    root = tmp_path / "extensions"
    name = kernels._name()
    from torch.utils import cpp_extension

    shutil.copytree(cpp_extension._get_build_directory(name, False), root / name)
    env["TORCH_EXTENSIONS_DIR"] = str(root)
    assert shutil.which("ninja", path=env["PATH"]) is None
    code = "from targetprop import kernels; m = kernels.load(required=True); print('isa', m.isa())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"isa {kernels.load().isa()}" in done.stdout


def test_the_build_puts_the_interpreters_folder_on_path_and_restores_it(monkeypatch):
    import os
    import sys

    monkeypatch.setenv("PATH", "/nowhere")
    with kernels._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == "/nowhere"
        assert os.path.dirname(sys.executable) in os.environ["PATH"].split(os.pathsep)
    assert os.environ["PATH"] == "/nowhere"


@needs("cpp")
def test_kernels_build_command_prints_the_build_folder_and_instruction_set(capsys):
    import argparse
    import os

    from targetprop.kernels import commands

    parser = argparse.ArgumentParser(prog="targetprop")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["kernels", "build"])
    assert args.handler(args, args.subparser) == 0
    folder, isa = capsys.readouterr().out.splitlines()
    module = kernels.load()
    assert folder.startswith(f"compiled kernels: {os.path.dirname(module.__file__)} (")
    assert isa == f"instruction set: {module.isa()} (widest on this CPU: {module.widest_isa()})"


def test_kernels_build_command_fails_with_the_reason(monkeypatch, capsys):
    import argparse

    from targetprop.kernels import commands

    monkeypatch.setattr(kernels, "_build", lambda: (None, "OSError: no compiler"))
    parser = argparse.ArgumentParser(prog="targetprop")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["kernels", "build"])
    assert args.handler(args, args.subparser) == 1
    assert "could not be built (OSError: no compiler)" in capsys.readouterr().err


def test_a_killed_builds_lock_is_cleared_and_a_fresh_one_kept(monkeypatch, tmp_path):
    """PyTorch's builder waits without end on its lock file; a build stopped midway leaves it."""
    import os
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "some_build" / "lock"
    lock.parent.mkdir()
    lock.touch()
    kernels._clear_stale_lock("some_build")
    assert lock.exists()  # fresh: a build in progress
    old = time.time() - kernels.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    kernels._clear_stale_lock("some_build")
    assert not lock.exists()
