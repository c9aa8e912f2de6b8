"""The checks of a TP layer's forward input: a tensor in the layer's layout, or a PackedSequence,
and ``hx`` in ``torch.nn``'s shape (L·D, B, p)."""
from __future__ import annotations

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import _validation as check
from .packing import Packing


class InputError(ValueError, RuntimeError):
    """Bad forward input: a ValueError, as this package's checks raise, and a RuntimeError, as
    ``torch.nn``'s recurrent layers raise for the same mistakes (code catching either works)."""


def check_input(layer, x, hx: Tensor | None):
    """Validate; return time-major ``x`` (T, B, d), ``hx`` as (L·D, B, p) or None, batched-ness,
    and the input's :class:`~targetprop.packing.Packing` (None for a tensor)."""
    packing = None
    if isinstance(x, PackedSequence):
        if layer.rule == "learned":
            raise InputError("rule='learned' takes padded tensors only, not a PackedSequence")
        packing = Packing.of(x)
        x = packing.pad(x.data)
    if not isinstance(x, Tensor):
        raise InputError(f"input must be a torch.Tensor or a PackedSequence, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise InputError(
            f"input must be 3-D ({'B, T, d' if layer.batch_first else 'T, B, d'}) or 2-D unbatched "
            f"(T, d), got shape {tuple(x.shape)}")
    if x.shape[-1] != layer.input_size:
        raise InputError(f"input has {x.shape[-1]} features per step, expected input_size={layer.input_size}")
    if x.dtype != layer.weight_hh_l0.dtype:
        raise InputError(f"input dtype {x.dtype} does not match the layer's {layer.weight_hh_l0.dtype}")
    batched = x.dim() == 3
    x = (x.transpose(0, 1) if layer.batch_first and packing is None else x) if batched else x.unsqueeze(1)
    if x.shape[0] == 0:  # a batch of no sequences is fine (empty outputs, as torch.nn)
        raise InputError(f"input must have at least one step, got shape {tuple(x.shape)}")
    if layer.check_finite:
        check.finite("input", x)
    if hx is not None:
        if not isinstance(hx, Tensor):
            raise InputError(f"hx must be a torch.Tensor or None, got {type(hx).__name__}")
        states = layer.num_layers * (2 if layer.bidirectional else 1)
        want = (states, x.shape[1], layer.state_size) if batched else (states, layer.state_size)
        if tuple(hx.shape) != want:
            raise InputError(f"hx must have shape {want}, got {tuple(hx.shape)}")
        if hx.dtype != x.dtype:
            raise InputError(f"hx dtype {hx.dtype} does not match the input's {x.dtype}")
        if layer.check_finite:
            check.finite("hx", hx)
        hx = hx if batched else hx.unsqueeze(1)
    return x, hx, batched, packing
