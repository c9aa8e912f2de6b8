"""Why a TP run blows up: the recurrent weights and the directions, measured along one run.

It trains one method of an experiment file (the trainer's own step, the run's settings and seed,
so the run is the one ``targetprop reproduce``/``compare`` makes) and every ``--every`` iterations
records, on the iteration's own mini-batch:

- W_hh's spectral norm, its largest entry and its Frobenius norm (for a GRU or LSTM, of the whole
  stacked ``weight_hh_l0``);
- the norm of the direction each parameter received (the ``.grad`` the optimizer used, after any
  clipping), and of the whole direction;
- saturation: the fraction of hidden units with ``|h| > 0.99`` over the batch and its steps
  (where tanh' < 0.02, so that eq. 2's division by the derivative amplifies by more than 50);
- the mini-batch loss.

One JSON line per record in OUT (appended); the run's end (completed, or the error that ended it:
a non-finite direction, a failed regularized inverse) is the last line. Settings are laid over the
method's with ``--set KEY=VALUE`` (e.g. ``clip=1``, ``tol=0.1``), as on the command line.

Run from the repository root, one core:

    taskset -c 1 .venv/bin/python scripts/stability_probe.py fig4-fashion-mnist-rnn tp-through-time \\
        --budget full --every 50 --out build/stability/fmnist-rnn-tt.jsonl
    taskset -c 1 .venv/bin/python scripts/stability_probe.py fig4-fashion-mnist-rnn tp-through-time \\
        --budget full --every 50 --set clip=1 --out build/stability/fmnist-rnn-tt-clip1.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from targetprop.argtypes import key_value
from targetprop.experiments import specs
from targetprop.training.build import to_run
from targetprop.training.trainer import Trainer


def record(trainer: Trainer, iteration: int, loss: float) -> dict:
    """What :mod:`this script <stability_probe>` records at ``iteration`` (see the module docstring)."""
    model = trainer.model
    w = model.rnn.weight_hh_l0.detach().double()
    directions = {name: p.grad.detach().double().norm().item()
                  for name, p in model.named_parameters() if p.grad is not None}
    x, _ = to_run(trainer.task.train_batch(iteration), trainer.dtype, trainer.device)
    with torch.no_grad():
        model.eval()
        out, _ = model.rnn(x)
        model.train()
    return {"iteration": iteration, "loss": loss,
            "whh_spectral": torch.linalg.matrix_norm(w, ord=2).item(),
            "whh_max": w.abs().max().item(), "whh_fro": w.norm().item(),
            "direction": math.sqrt(sum(v * v for v in directions.values())),
            "direction_whh": directions.get("rnn.weight_hh_l0"),
            "directions": directions,
            "saturated": (out.abs() > 0.99).double().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="an experiment file (a built-in name or a path)")
    parser.add_argument("method")
    parser.add_argument("--budget", choices=specs.BUDGETS, help="a panel's budget")
    parser.add_argument("--set", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--iterations", type=int, help="stop here (default: the run's own)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = specs.load(args.experiment)
    config = specs.configs(table, args.budget, dict(args.set))[args.method]
    trainer = Trainer(config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    iterations = args.iterations or config.iterations
    head = {"experiment": args.experiment, "method": args.method, "set": dict(args.set),
            "seed": config.seed, "iterations": iterations}
    start = time.perf_counter()
    with args.out.open("a", encoding="utf-8") as log:
        log.write(json.dumps({"start": head}) + "\n")
        end = {"status": "completed"}
        for iteration in range(iterations):
            try:
                loss = trainer.step(iteration).item()
            except Exception as err:  # the run's end, as the trainer would report it
                end = {"status": "failed", "iteration": iteration, "error": f"{type(err).__name__}: {err}"}
                break
            if (iteration + 1) % args.every == 0 or iteration == 0:
                log.write(json.dumps(record(trainer, iteration + 1, loss)) + "\n")
                log.flush()
        if end["status"] == "completed":
            end.update(trainer.evaluate())
        end["seconds"] = round(time.perf_counter() - start, 1)
        log.write(json.dumps({"end": end}) + "\n")
    print(json.dumps(end))


if __name__ == "__main__":
    main()
