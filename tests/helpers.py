"""Comparison helpers; the worst float64 relative error seen is reported at the end of the run."""
from __future__ import annotations

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
