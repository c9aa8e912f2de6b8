"""Comparison helpers; the worst float64 relative error seen is reported at the end of the run."""
from __future__ import annotations

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
