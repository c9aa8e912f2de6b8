"""The networks the trainer trains: a recurrent TP layer (a stack with ``num_layers``, both directions
with ``bidirectional``) and a linear head on its last layer's final states.

This module owns assembling them (which layer, its init, the head). ``MODELS`` maps a cell
name to the recurrent layer class; any class built as ``torch.nn.RNN`` is
(``cls(input_size, hidden_size, batch_first=True, **options)``) with ``forward(x) -> (output, h_n)``
or, as an LSTM's, ``(output, (h_n, c_n))`` fits, ``torch.nn.RNN``, ``torch.nn.GRU`` and
``torch.nn.LSTM`` included; the head reads ``h_n``.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from ..init import forget_bias_, orthogonal_, orthogonal_init_
from ..lstm_layer import TPLSTM
from ..rnn import TPGRU, TPRNN

MODELS: dict[str, type[nn.Module]] = {"rnn": TPRNN, "gru": TPGRU, "lstm": TPLSTM}


class SequenceModel(nn.Module):
    """``head(h_T)``: a recurrent layer read out at its last hidden state by a linear layer (for a
    stack, the last layer's; for a bidirectional layer, both directions' final states concatenated:
    the forward direction's at step T, the reverse direction's at step 1).

    Used for classification (logits) and regression alike (Section 4: "the last layer uses a
    soft-max on top of a linear operation" / "the last layer is linear").

    Args:
        cell: key of :data:`MODELS` (``"rnn"``: :class:`~targetprop.TPRNN`, ``"gru"``: :class:`~targetprop.TPGRU`,
            ``"lstm"``: :class:`~targetprop.TPLSTM`, read out at ``h_n``).
        input_size, hidden_size, output_size: ``d``, ``p`` and the head's outputs.
        init: ``"orthogonal"`` (the paper's: orthogonal weights, zero biases, for the recurrent
            layer and the head) or ``"default"`` (the layers' own ``reset_parameters``).
        generator: seeds the orthogonal init (``None``: the global generator).
        forget_bias: ``"lstm"`` only: start the forget gates at this bias (:func:`~targetprop.forget_bias_`);
            None leaves the init's biases.
        **layer_options: passed to the recurrent layer (``rule``, ``reg``, ``target_step``,
            ``tol``, ``through_time``, ``nonlinearity``, ``dtype``, ``device``, …); one the
            layer does not take is a ValueError naming it, and so are ``input_size``,
            ``hidden_size`` and ``batch_first``, which the model sets (input is batch first).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int, *,
                 init: str = "orthogonal", generator: torch.Generator | None = None,
                 forget_bias: float | None = None, **layer_options):
        super().__init__()
        if cell not in MODELS:
            raise ValueError(f"unknown cell {cell!r}; known cells: {', '.join(sorted(MODELS))}")
        if init not in ("orthogonal", "default"):
            raise ValueError(f"init must be 'orthogonal' or 'default', got {init!r}")
        _check_options(cell, layer_options)
        self.rnn = MODELS[cell](input_size, hidden_size, batch_first=True, **layer_options)
        factory = {k: layer_options[k] for k in ("device", "dtype") if k in layer_options}
        self.directions = 2 if layer_options.get("bidirectional") else 1
        self.head = nn.Linear(self.directions * hidden_size, output_size, **factory)
        if init == "orthogonal":
            orthogonal_init_(self.rnn, generator)
            orthogonal_(self.head.weight, generator)
            nn.init.zeros_(self.head.bias)
        if forget_bias is not None:
            if cell != "lstm":
                raise ValueError(f"forget_bias applies to cell 'lstm', not {cell!r}")
            forget_bias_(self.rnn, forget_bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, T, d) → head outputs (B, output_size), read from the last layer's last state."""
        _, h_n = self.rnn(x)
        if isinstance(h_n, tuple):  # an LSTM's (h_n, c_n)
            h_n = h_n[0]
        last = h_n[-1] if self.directions == 1 else torch.cat([h_n[-2], h_n[-1]], -1)
        return self.head(last)


def _check_options(cell: str, options: dict) -> None:
    """A ValueError naming the options the layer of ``cell`` does not take or the model sets."""
    reserved = sorted(set(options) & {"input_size", "hidden_size", "batch_first"})
    if reserved:
        raise ValueError(f"the model sets {', '.join(reserved)} itself; do not pass them as layer options")
    params = inspect.signature(MODELS[cell]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"the {cell!r} layer ({MODELS[cell].__name__}) does not take option(s) "
                         f"{', '.join(unknown)}")
