"""Comparison helpers (the worst float64 relative error seen is reported at the end of the run) and
the one place that decides what this machine lacks: the compiled loops, a CUDA device, Triton,
data files (:func:`missing`, :func:`needs`, :func:`require`, :func:`require_data`).
"""
from __future__ import annotations

import functools
import warnings

import pytest
import torch


WORST = {"rel": 0.0, "where": ""}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    denom = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff / denom if denom > 0 else diff


def assert_rel(actual, expected, tol: float = 1e-10, where: str = "") -> float:
    err = rel_err(actual, expected)
    if tol <= 1e-9 and err > WORST["rel"]:
        WORST.update(rel=err, where=where)
    assert err <= tol, f"{where}: relative error {err:.3e} > {tol:.0e}"
    return err


def train_to_full_accuracy(rnn, head, optimizer, task, budget: int, every: int = 50):
    """Train ``head(rnn(x)[1][0])`` on ``task`` until its test accuracy is 1.0 or ``budget`` runs
    out; returns (iterations run, last test accuracy)."""
    (xt, yt), = task.eval_batches("test")
    acc, it = 0.0, 0
    for it in range(1, budget + 1):
        x, y = task.train_batch(it - 1)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(rnn(x)[1][0]), y).backward()
        optimizer.step()
        if it % every == 0:
            with torch.no_grad():
                acc = (head(rnn(xt)[1][0]).argmax(-1) == yt).double().mean().item()
            if acc == 1.0:
                break
    return it, acc


def cli_fails(argv, capsys, *needles):
    """Run ``argv``: it must exit with code 2 and a one-line error containing ``needles``."""
    from targetprop.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------- what this machine lacks
def _compiled_loops() -> bool:
    from targetprop import kernels

    with warnings.catch_warnings():  # the fallback's warning: the skip reason says it
        warnings.simplefilter("ignore", RuntimeWarning)
        return kernels.load() is not None


def _triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


#: what a test may need: how to tell it is here, and the reason given when it is not
REQUIREMENTS = {
    "cpp": (_compiled_loops, "the compiled loops do not build here (no C++ compiler, or the build failed)"),
    "cuda": (torch.cuda.is_available, "needs a CUDA device (none here)"),
    "triton": (_triton, "Triton is not installed (pip install 'targetprop[gpu]')"),
}


@functools.cache
def missing(what: str) -> str | None:
    """Why ``what`` (a key of :data:`REQUIREMENTS`) is unavailable here, or None when it is available
    (asked once per run: the compiled loops are built on the first ask)."""
    present, reason = REQUIREMENTS[what]
    return None if present() else reason


def require(*what: str) -> None:
    """Skip the calling test (or module, at import) unless everything in ``what`` is available."""
    for w in what:
        reason = missing(w)
        if reason is not None:
            pytest.skip(reason, allow_module_level=True)


def needs(*what: str) -> pytest.MarkDecorator:
    """A mark: the test is skipped unless everything in ``what`` is available, decided when it runs
    (conftest.py), so that collecting the suite builds nothing."""
    for w in what:
        if w not in REQUIREMENTS:
            raise ValueError(f"unknown requirement {w!r}: one of {sorted(REQUIREMENTS)}")
    return pytest.mark.needs(*what)


def require_data(present: bool, what: str) -> None:
    """Skip the calling test (or fixture) when a data set it reads is absent; ``what`` says which
    and how to get it."""
    if not present:
        pytest.skip(f"missing data: {what}")
