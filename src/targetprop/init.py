"""The paper's initialization: orthogonal weights, zero biases (docs/RESULTS.md, "The authors' settings"),
and an LSTM's forget-gate bias (:func:`forget_bias_`).

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


@torch.no_grad()
def forget_bias_(module: nn.Module, value: float = 1.0) -> nn.Module:
    """Start an LSTM's forget gates at bias ``value`` (ours or ``torch.nn.LSTM``, every layer and
    direction): the forget rows (the second quarter, gate order i, f, g, o) of each ``bias_ih_*``
    set to ``value`` and of each ``bias_hh_*`` to 0, so that ``f = σ(value)`` before any input.
    At 0 (the paper's zero biases) ``f = 1/2`` and the cell forgets half of itself per step; 1 is the
    usual start (Gers et al. 2000; Jozefowicz et al. 2015) and what the trainer's LSTM uses."""
    hidden = module.hidden_size
    found = False
    for name, param in module.named_parameters():
        if name.startswith(("bias_ih_", "bias_hh_")):
            if param.shape[0] != 4 * hidden:
                raise ValueError(f"forget_bias_ needs an LSTM's biases (4 × hidden_size = {4 * hidden} rows); "
                                 f"{name} has {param.shape[0]}")
            param[hidden:2 * hidden] = value if name.startswith("bias_ih_") else 0.0
            found = True
    if not found:
        raise ValueError("forget_bias_ found no bias_ih_*/bias_hh_* to set (an LSTM built with bias=False?)")
    return module
