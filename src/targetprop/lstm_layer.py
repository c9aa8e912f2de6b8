"""``TPLSTM``: the LSTM with a target-propagation backward, a drop-in for ``torch.nn.LSTM`` (same
positional arguments and defaults, parameter names, shapes and gate order (i, f, g, o); state
dicts load both ways). The cell and its tape: :mod:`targetprop.cells.lstm`; its rules:
:mod:`targetprop.rules.lstm`; the maths: docs/maths.md, "LSTM".

The engine carries a step's whole state ``[h, c]`` (width 2p); this module only turns
``torch.nn``'s ``hx = (h_0, c_0)`` into that state and the final state back into ``(h_n, c_n)``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import hyperparams as hp
from .cells import lstm
from .inputs import InputError
from .recurrent import TPRecurrent
from .rnn import _NN_ARGS

_ARGS = _NN_ARGS.split("    ``forward(input")[0].rstrip()


class TPLSTM(TPRecurrent):
    __doc__ = """LSTM with a target-propagation backward, a drop-in for ``torch.nn.LSTM``: the same
    positional arguments and defaults, parameter names and shapes (gate rows ``(i, f, g, o)``).

    Args:""" + _ARGS.format(
        nonlinearity="",
        rules="""``"linearized"`` (the LSTM rule of docs/maths.md "LSTM", default) or ``"bp"`` (exact gradient).""",
        extra="""
        proj_size: only 0: projections are not supported (a ValueError otherwise).""") + """

    ``forward(input, hx=None) -> (output, (h_n, c_n))`` with ``torch.nn.LSTM``'s shapes: ``hx`` is
    ``(h_0, c_0)``, each ``(L·D, B, p)`` in ``torch.nn``'s order (``(L·D, p)`` for unbatched
    ``(T, d)`` input), zeros when None; a ``PackedSequence`` input gives a ``PackedSequence``
    output, each sequence run to its own length, ``h_n``/``c_n`` its last valid state. With a TP
    rule ``h_0`` and ``c_0`` receive the displacement of eqs. (1)–(2) at step 0 (``signal_below``).
    """

    cell_module = lstm
    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, rule: str = hp.RULE,
                 reg: float = hp.REG.default, target_step: float = hp.TARGET_STEP.default,
                 tol: float = hp.TOL.default, through_time: bool = hp.THROUGH_TIME,
                 check_finite: bool = hp.CHECK_FINITE, backend: str = hp.BACKEND,
                 signal_below: str = hp.SIGNAL_BELOW) -> None:
        if proj_size != 0:
            raise ValueError(f"TPLSTM does not support proj_size (got proj_size={proj_size!r}): target "
                             "propagation through the projection h = o⊙tanh(c) W_hrᵀ is not implemented; "
                             "use proj_size=0, or torch.nn.LSTM for projections")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, rule=rule, reg=reg, target_step=target_step, tol=tol,
                         through_time=through_time, check_finite=check_finite, backend=backend,
                         signal_below=signal_below)

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None):
        data = input.data if isinstance(input, PackedSequence) else input
        if isinstance(data, Tensor) and torch.is_autocast_enabled(data.device.type):
            dtype = self.weight_hh_l0.dtype  # as the other layers: run in the parameters' dtype
            if isinstance(hx, (tuple, list)):
                hx = tuple(t.to(dtype) if isinstance(t, Tensor) else t for t in hx)
            with torch.autocast(data.device.type, enabled=False):
                return self.forward(input.to(dtype), hx)
        state = None if hx is None else self._state(input, hx)
        out, h_n = super().forward(input, state)
        p = self.hidden_size
        return out, (h_n[..., :p].contiguous(), h_n[..., p:].contiguous())

    def _state(self, input, hx) -> Tensor:
        """``hx = (h_0, c_0)`` checked as ``torch.nn.LSTM`` checks it, as one state ``[h_0, c_0]``."""
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)):
            raise InputError(f"hx must be a tuple (h_0, c_0) of two tensors or None, got {type(hx).__name__}")
        h_0, c_0 = hx
        if h_0.dtype != c_0.dtype:
            raise InputError(f"h_0 and c_0 must have the same dtype, got {h_0.dtype} and {c_0.dtype}")
        states = self.num_layers * self.directions
        if isinstance(input, PackedSequence):
            want = (states, int(input.batch_sizes[0]), self.hidden_size)
        elif isinstance(input, Tensor) and input.dim() in (2, 3):
            batch = input.shape[0 if self.batch_first else 1] if input.dim() == 3 else None
            want = (states, batch, self.hidden_size) if batch is not None else (states, self.hidden_size)
        else:
            want = None  # a bad input: the layer's input check names it
        for name, t in (("h_0", h_0), ("c_0", c_0)):
            if want is not None and tuple(t.shape) != want:
                raise InputError(f"Expected {name} of shape {want}, got {tuple(t.shape)}")
        if h_0.shape != c_0.shape:
            raise InputError(f"h_0 and c_0 must have the same shape, got {tuple(h_0.shape)} and {tuple(c_0.shape)}")
        return torch.cat([h_0, c_0], -1)
