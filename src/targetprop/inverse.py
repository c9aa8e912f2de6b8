"""The regularized inverse of the Elman step (paper, Section 2.1).

The step ``h_t = a(x_t W_ihᵀ + b + h_{t-1} W_hhᵀ)`` is inverted variationally (eq. 4) with a
ridge term: ``f⁻¹(v) = (a⁻¹(π(v)) − x W_ihᵀ − b) Mᵀ`` with ``M = (W_hhᵀ W_hh + r I)⁻¹ W_hhᵀ``
(row-vector form). ``M`` is computed once per backward by a Cholesky factorization of the
symmetric positive (semi-)definite matrix ``W_hhᵀ W_hh + r I``, never by an explicit inverse.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .activations import Activation


class RegularizedInverseError(torch.linalg.LinAlgError):
    """The Cholesky factorization behind the regularized inverse failed."""


def inverse_operator(weight_hh: Tensor, reg: float, name: str = "weight_hh_l0") -> Tensor:
    """``M = (W_hhᵀ W_hh + reg·I)⁻¹ W_hhᵀ`` (p×p), by Cholesky; batched over leading dimensions
    (the GRU's three hidden matrices are factorized in one call).

    Raises :class:`RegularizedInverseError` when the factorization fails or produces
    non-finite values (e.g. ``reg = 0`` with a singular ``W_hh``, or a diverged ``W_hh``).
    """
    p = weight_hh.shape[-1]
    gram = weight_hh.mT @ weight_hh
    gram.diagonal(dim1=-2, dim2=-1).add_(reg)
    chol, info = torch.linalg.cholesky_ex(gram)
    m = torch.cholesky_solve(weight_hh.mT.contiguous(), chol)
    if bool(info.any() | ~torch.isfinite(m).all()):  # one host sync on success
        if not bool(torch.isfinite(weight_hh).all()):
            raise RegularizedInverseError(
                f"{name} contains NaN or inf (has training diverged?); cannot build the regularized inverse")
        if reg > 0:
            why = (f"{name} has entries up to {weight_hh.abs().max().item():.3g} in {weight_hh.dtype}, "
                   f"too large for the factorization (has training diverged? try smaller step sizes)")
        else:
            why = "the matrix is singular or not positive definite. Use a positive reg (e.g. reg=1.0)"
        raise RegularizedInverseError(
            f"Cholesky factorization of {name}ᵀ·{name} + reg·I (p={p}, reg={reg:g}) failed: {why}."
        )
    return m


def invert_step(
    v: Tensor,
    x: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None,
    activation: Activation,
    reg: float,
    tol: float,
) -> Tensor:
    """The regularized inverse ``f⁻¹(v)`` of one Elman step (Section 2.1), rows of ``v`` at once.

    ``v`` is (..., p), ``x`` is (..., d), ``bias`` is ``b_ih + b_hh`` or None.
    """
    z = activation.inverse(activation.project(v, tol)) - x @ weight_ih.T
    if bias is not None:
        z = z - bias
    return z @ inverse_operator(weight_hh, reg).T
