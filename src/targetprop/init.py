"""The paper's initialization: orthogonal weights, zero biases (docs/RESULTS.md, "The authors' settings").

A matrix is drawn uniformly in ``±√(6 / (fan_in + fan_out))`` and replaced by the orthogonal
factor of its SVD (``U Vᵀ``, the nearest matrix with orthonormal rows or columns), as in the
authors' public code.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def orthogonal_(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Fill the 2-D ``weight`` in place with the orthogonal factor of a uniform random matrix."""
    if weight.dim() != 2:
        raise ValueError(f"orthogonal_ needs a 2-D weight, got shape {tuple(weight.shape)}")
    fan_out, fan_in = weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    draw = torch.empty(weight.shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
    u, _, vh = torch.linalg.svd(draw, full_matrices=False)
    return weight.copy_(u @ vh)


@torch.no_grad()
def orthogonal_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Orthogonal ``weight_*`` and zero ``bias_*`` for a recurrent layer (ours or ``torch.nn``).

    For GRU-like layers whose weights stack several gates, each gate block is made orthogonal.
    """
    hidden = getattr(module, "hidden_size", None)
    for name, param in module.named_parameters():
        if name.startswith("weight_"):
            gates = param.shape[0] // hidden if hidden else 1
            for block in param.chunk(gates) if gates > 1 else (param,):
                orthogonal_(block, generator)
        elif name.startswith("bias_"):
            param.zero_()
    return module
