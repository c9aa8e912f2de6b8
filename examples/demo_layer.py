"""A short demo of the TP layer: one backward pass, TP direction vs BP gradient, then training.

Run: ``.venv/bin/python examples/demo_layer.py`` from the repository root (``make demo`` runs the
command line's training demo instead).
"""
import time

import torch

from targetprop import TPRNN, orthogonal_init_

torch.manual_seed(0)
T, B, d, p = 60, 20, 6, 100
x = torch.randn(B, T, d)
y = torch.randint(0, 4, (B,))
head = torch.nn.Linear(p, 4)

for rule in ("bp", "linearized", "difference"):
    layer = orthogonal_init_(TPRNN(d, p, batch_first=True, rule=rule, reg=10.0, target_step=1e-2))
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(head(layer(x)[1][0]), y)
    loss.backward()
    print(f"{rule:>10}: loss {loss.item():.4f}  |grad W_hh| {layer.weight_hh_l0.grad.norm():.3e}  "
          f"({1e3 * (time.perf_counter() - t0):.1f} ms forward+backward)")
