"""The sweep that chose the TP layers' default settings (docs/DEFAULTS.md).

Each TP setting (rule, through_time, reg, tol, target_step) is run on six problems a user might
bring, for both cells (TPRNN, TPGRU) and several seeds, and every run is recorded as one JSON line:
the problem, the cell, the seed, the setting, how the run ended (``completed``, or ``failed`` with
the error: a non-finite direction, a failed regularized inverse, a diverged loss) and its score.

Problems (budgets are short on purpose: the question is which setting is robust and learns,
not what each reaches in the end):

- ``order-20``, ``order-60``: temporal order (4 classes) at T = 20 and T = 60, the command line's
  own trainer with its defaults (SGD, lr 0.1, batch 20, p = 100, orthogonal init).
- ``adding-30``: the adding problem at T = 30, the same trainer (score: its accuracy, the fraction
  of test sequences within 0.04 of the target).
- ``mnist``: pixel-by-pixel MNIST (T = 784), the same trainer, a few hundred iterations.
- ``labelling``: a user's model: a 2-layer bidirectional encoder on packed variable-length
  sequences with a linear read-out at every step (the task of examples/sequence_labelling.py),
  trained with Adam (lr 1e-3).
- ``classifier``: a user's model: Linear + tanh projection below a 2-layer bidirectional encoder
  on packed sequences, read out at both directions' final states; the label is
  ``(s_1 + s_2) mod K`` of the first two symbols; Adam (lr 1e-3). The projection below learns
  only from what the TP layer hands down.

Run from the repository root (one core; appends to OUT and skips runs already recorded there):

    taskset -c 0 .venv/bin/python scripts/defaults_sweep.py --out build/sweep/defaults.jsonl
    .venv/bin/python scripts/defaults_sweep.py --out build/sweep/defaults.jsonl --report

``--stage`` picks the grid (``screen``: every rule × through_time × reg × tol at γ_h = 1e-2 on
seed 0; ``confirm``: the settings named with ``--setting`` on seeds 0–2; ``step``: γ_h for the
settings named).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from targetprop import TPGRU, TPRNN, orthogonal_init_, rules
from targetprop.training import loop
from targetprop.training.config import TrainConfig
from targetprop.training.trainer import Trainer

LAYERS = {"rnn": TPRNN, "gru": TPGRU}
KNOBS = ("rule", "through_time", "reg", "tol", "target_step")

# problem -> (task settings for the command line's trainer, or None for a user model)
TRAINER_PROBLEMS = {
    "order-20": dict(task="temporal-order", length=20, iterations=2500, eval_every=250),
    "order-60": dict(task="temporal-order", length=60, iterations=2000, eval_every=250),
    "adding-30": dict(task="adding", length=30, iterations=2500, eval_every=250),
    "mnist": dict(task="mnist", iterations=200, eval_every=100, test_size=300,
                  task_options={"train_eval_size": 300}),
}
USER_STEPS = 400


def recorded(path: Path) -> set[str]:
    """The keys of the runs already in ``path``."""
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def key(problem: str, cell: str, seed: int, setting: dict) -> str:
    return json.dumps([problem, cell, seed, [setting[k] for k in KNOBS]])


def run_trainer(problem: str, cell: str, seed: int, setting: dict) -> dict:
    config = TrainConfig(**TRAINER_PROBLEMS[problem], cell=cell, seed=seed, **setting)
    summary = loop.run(Trainer(config))
    return {"status": summary["status"], "message": summary.get("message", "")[:300],
            "score": summary["final_test_accuracy"], "best": summary["best_test_accuracy"],
            "iterations": summary.get("iterations")}


# ---- the two user models -------------------------------------------------------------------
K, HIDDEN, DELAY = 4, 32, 4


def _symbols(n, low, high, gen):
    lengths = torch.randint(low, high + 1, (n,), generator=gen).tolist()
    return [torch.randint(0, K, (length,), generator=gen) for length in lengths]


def labelling_batch(n, gen):
    inputs, labels = [], []
    for s in _symbols(n, 10, 60, gen):
        padded = torch.cat([s.new_zeros(DELAY), s, s.new_zeros(DELAY)])
        labels.append((padded[:-2 * DELAY] + padded[2 * DELAY:]) % K)
        inputs.append(nn.functional.one_hot(s, K).float())
    return pack_sequence(inputs, enforce_sorted=False), pack_sequence(labels, enforce_sorted=False).data


def classifier_batch(n, gen):
    seqs = _symbols(n, 10, 40, gen)
    labels = torch.stack([(s[0] + s[1]) % K for s in seqs])
    return pack_sequence([nn.functional.one_hot(s, K).float() for s in seqs], enforce_sorted=False), labels


class Labeller(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.readout = orthogonal_init_(encoder), nn.Linear(2 * HIDDEN, K)

    def forward(self, packed):
        return self.readout(self.encoder(packed)[0].data)


class Classifier(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.below = nn.Linear(K, 16)
        self.encoder, self.readout = orthogonal_init_(encoder), nn.Linear(2 * HIDDEN, K)

    def forward(self, packed):
        projected = packed._replace(data=torch.tanh(self.below(packed.data)))
        _, h_n = self.encoder(projected)
        return self.readout(torch.cat([h_n[-2], h_n[-1]], dim=-1))  # the top layer, both directions


USER_PROBLEMS = {"labelling": (Labeller, labelling_batch), "classifier": (Classifier, classifier_batch)}


def run_user(problem: str, cell: str, seed: int, setting: dict, units: str = "adam") -> dict:
    """``units``: ``adam`` (Adam, lr 1e-3: what the sweep's settings are judged by), or SGD with
    momentum 0.9 at lr 0.1 with the layer's own direction as it is (``sgd-target``) or divided
    by γ_h (``sgd-gradient``: the direction in BP's units)."""
    model_cls, make_batch = USER_PROBLEMS[problem]
    torch.manual_seed(seed)
    encoder = LAYERS[cell](K if problem == "labelling" else 16, HIDDEN, num_layers=2, bidirectional=True,
                           **setting)
    model = model_cls(encoder)
    if units == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if units == "sgd-gradient" and setting["rule"] != "bp":
        for w in encoder.parameters():
            w.register_hook(lambda g: g / setting["target_step"])
    gen = torch.Generator().manual_seed(seed)
    test_x, test_y = make_batch(512, torch.Generator().manual_seed(10_000 + seed))
    accs = []
    try:
        for step in range(1, USER_STEPS + 1):
            x, y = make_batch(32, gen)
            loss = nn.functional.cross_entropy(model(x), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 0:
                with torch.no_grad():
                    accs.append((model(test_x).argmax(-1) == test_y).float().mean().item())
    except (FloatingPointError, torch.linalg.LinAlgError) as err:
        return {"status": "failed", "message": f"{type(err).__name__}: {err}"[:300], "score": None,
                "best": max(accs, default=None), "iterations": step}
    return {"status": "completed", "message": "", "score": accs[-1], "best": max(accs), "iterations": USER_STEPS}


PROBLEMS = list(TRAINER_PROBLEMS) + list(USER_PROBLEMS)


# ---- grids ------------------------------------------------------------------------------------
def screen_grid():
    for rule, tt, reg, tol in itertools.product(("linearized", "difference"), (False, True), (1.0, 10.0),
                                                (1e-3, 0.1)):
        yield dict(rule=rule, through_time=tt, reg=reg, tol=tol, target_step=1e-2)


def parse_setting(text: str) -> dict:
    """``linearized,tt,10,0.1,0.01`` (rule, tt|eq3, reg, tol, target_step) → a setting."""
    rule, tt, reg, tol, step = text.split(",")
    return dict(rule=rule, through_time=tt == "tt", reg=float(reg), tol=float(tol), target_step=float(step))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/sweep/defaults.jsonl"))
    parser.add_argument("--stage", choices=("screen", "confirm", "step", "units"), default="screen")
    parser.add_argument("--setting", action="append", default=[], type=parse_setting)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cells", default="rnn,gru")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(1)
    if args.stage == "units":
        units_stage(args)
        return
    if args.stage == "screen":
        grid = list(screen_grid())
    elif args.stage == "confirm":
        grid = args.setting
    else:
        grid = [dict(s, target_step=step) for s in args.setting for step in (1e-3, 1e-1)]
    done = recorded(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(p, c, s, g) for p in args.problems.split(",") for c in args.cells.split(",") for s in seeds
            for g in grid if g["rule"] in rules.available(c)]  # the GRU has no difference rule
    for i, (problem, cell, seed, setting) in enumerate(jobs):
        k = key(problem, cell, seed, setting)
        if k in done:
            continue
        start = time.perf_counter()
        runner = run_trainer if problem in TRAINER_PROBLEMS else run_user
        result = runner(problem, cell, seed, setting)
        row = dict(key=k, problem=problem, cell=cell, seed=seed, **setting, **result,
                   seconds=round(time.perf_counter() - start, 1))
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{len(jobs)}] {problem} {cell} s{seed} {setting} -> {result['status']} "
              f"{result['score']} ({row['seconds']} s)", flush=True)


def units_stage(args) -> None:
    """The two user models with SGD (momentum 0.9, lr 0.1): BP, and the ``--setting`` with its own
    direction as it is and divided by γ_h; one JSON line per run, problem names ``sgd-...``."""
    setting = args.setting[0]
    bp = dict(setting, rule="bp")
    done = recorded(args.out)
    for problem in USER_PROBLEMS:
        for cell in args.cells.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for units, s in (("sgd-bp", bp), ("sgd-target", setting), ("sgd-gradient", setting)):
                    name = f"{units}:{problem}"
                    k = key(name, cell, seed, s)
                    if k in done:
                        continue
                    result = run_user(problem, cell, seed, s, "sgd" if units == "sgd-bp" else units)
                    with args.out.open("a") as f:
                        f.write(json.dumps(dict(key=k, problem=name, cell=cell, seed=seed, **s, **result)) + "\n")
                    print(name, cell, seed, result["status"], result["score"], flush=True)


def label(row) -> str:
    return (f"{row['rule']}{' through time' if row['through_time'] else ''}, r={row['reg']:g}, "
            f"τ={row['tol']:g}, γh={row['target_step']:g}")


def report(path: Path) -> str:
    """A Markdown table: per setting, failed runs and the mean score per problem (over cells and seeds)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_setting: dict[str, list] = {}
    for row in rows:
        by_setting.setdefault(label(row), []).append(row)
    problems = [p for p in PROBLEMS if any(r["problem"] == p for r in rows)]
    lines = ["| setting | runs | failed | " + " | ".join(problems) + " | mean |",
             "|---|---|---|" + "---|" * len(problems) + "---|"]
    table = []
    for name, runs in by_setting.items():
        failed = sum(r["status"] != "completed" for r in runs)
        means = []
        for p in problems:
            scores = [(r["score"] if r["status"] == "completed" else 0.0) for r in runs if r["problem"] == p]
            means.append(sum(scores) / len(scores) if scores else float("nan"))
        table.append((failed, -sum(means) / len(means), name, len(runs), means))
    for failed, neg_mean, name, n, means in sorted(table):
        cells = " | ".join(f"{m:.1%}" for m in means)
        lines.append(f"| {name} | {n} | {failed} | {cells} | {-neg_mean:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
