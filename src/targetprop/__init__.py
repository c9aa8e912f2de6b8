"""targetprop: target propagation via regularized inversion for recurrent networks.

The layers look and load like ``torch.nn`` recurrent layers; after ``loss.backward()`` their
parameters' ``.grad`` hold the target-propagation direction (Roulet & Harchaoui, eqs. 1–3).
"""
from . import kernels
from .activations import ACTIVATIONS, get_activation
from .init import forget_bias_, orthogonal_, orthogonal_init_
from .inverse import RegularizedInverseError, inverse_operator, invert_step
from .function import NonFiniteDirectionError
from .rnn import TPGRU, TPRNN
from .lstm_layer import TPLSTM

__version__ = "0.1.0"

__all__ = [
    "TPRNN",
    "TPGRU",
    "TPLSTM",
    "orthogonal_",
    "orthogonal_init_",
    "forget_bias_",
    "inverse_operator",
    "invert_step",
    "RegularizedInverseError",
    "NonFiniteDirectionError",
    "ACTIVATIONS",
    "get_activation",
    "kernels",
    "__version__",
]
