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

With ``--replay N`` it instead trains N iterations, then replays the batch of iteration N through
the layer with eq. 3, the through-time variant and bp, in float32 and float64 (the finiteness check
off): the largest displacement over the batch k steps back (``λ`` of eq. 2; for bp, its adjoint)
and the W_hh direction's norm, one JSON line each.

One JSON line per record in OUT (appended); the run's end (completed, or the error that ended it:
a non-finite direction, a failed regularized inverse) is the last line. Settings are laid over the
method's with ``--set KEY=VALUE`` (e.g. ``clip=1``, ``tol=0.1``), as on the command line.

Run from the repository root, one core:

    taskset -c 1 .venv/bin/python scripts/stability_probe.py fig4-fashion-mnist-rnn tp-through-time \\
        --budget full --every 50 --out build/stability/fmnist-rnn-tt.jsonl
    taskset -c 1 .venv/bin/python scripts/stability_probe.py fig4-fashion-mnist-rnn tp-through-time \\
        --budget full --every 50 --set clip=1 --out build/stability/fmnist-rnn-tt-clip1.jsonl
    taskset -c 1 .venv/bin/python scripts/stability_probe.py fig4-fashion-mnist-rnn tp-through-time \
        --budget full --replay 1976 --out build/stability/fmnist-rnn-tt-replay.jsonl
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from targetprop import engine
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


def replay(trainer: Trainer, iteration: int, log) -> None:
    """The ``--replay`` lines for the batch of ``iteration`` (see the module docstring)."""
    x, y = to_run(trainer.task.train_batch(iteration), trainer.dtype, trainer.device)
    steps = (0, 1, 10, 50, 100, 200, 400, 600, x.shape[1] - 1)
    for name, (rule, through_time) in {"eq3": ("linearized", False), "through-time": ("linearized", True),
                                       "bp": ("bp", False)}.items():
        for dtype in (torch.float32, torch.float64):
            model = copy.deepcopy(trainer.model).to(dtype)
            model.rnn.rule, model.rnn.through_time, model.rnn.check_finite = rule, through_time, False
            with engine.recording() as records:
                trainer.loss_fn(model(x.to(dtype)), y).backward()
            back = records[0][2][1:].double().norm(dim=-1).amax(-1).flip(0)  # k = 0: the last step
            with torch.no_grad():
                out, _ = model.rnn(x.to(dtype))
            line = {"iteration": iteration, "rule": name, "dtype": str(dtype).removeprefix("torch."),
                    "whh_direction": model.rnn.weight_hh_l0.grad.double().norm().item(),
                    "largest_displacement_k_steps_back": {k: back[k].item() for k in steps if k < len(back)},
                    "min_derivative": (1 - out.double() ** 2).min().item()}
            log.write(json.dumps(line) + "\n")
            print(json.dumps(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="an experiment file (a built-in name or a path)")
    parser.add_argument("method")
    parser.add_argument("--budget", choices=specs.BUDGETS, help="a panel's budget")
    parser.add_argument("--set", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--iterations", type=int, help="stop here (default: the run's own)")
    parser.add_argument("--replay", type=int, metavar="N", help="train N iterations, then replay batch N")
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
        if args.replay is not None:
            for iteration in range(args.replay):
                trainer.step(iteration)
            replay(trainer, args.replay, log)
            return
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
