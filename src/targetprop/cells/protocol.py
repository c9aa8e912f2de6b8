"""The names every cell and rule shares: a layer's parameters and what a tape's directions are keyed by."""
from __future__ import annotations

from torch import Tensor

#: the parameters of one layer and direction, in ``torch.nn``'s order (``weight_ih_l0``, …)
PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
#: what a tape's directions are keyed by: the input, the initial state, the parameters
GRADIENTS = ("input", "h0") + PARAMETERS


def named(*grads) -> dict[str, Tensor]:
    """``{name: grad}`` for the gradients, given in :data:`GRADIENTS` order, that were computed (not None)."""
    return {k: g for k, g in zip(GRADIENTS, grads) if g is not None}
