"""Experiment files (``targetprop/configs/fig*.toml``), ``targetprop reproduce`` and ``targetprop tune``:
every panel parses and names valid settings, its short budget runs end to end on tiny data (generated
IDX/CIFAR files for the image panels) and draws its PNG, and ``tune`` selects by area under the loss
or by late test accuracy."""
import json
import math
import os
import signal

import pytest
from helpers import cli_fails

from datafiles import random_cifar, random_mnist, write_cifar, write_mnist
from targetprop.experiments import pipeline, reports, specs, tuning
from targetprop.argtypes import key_value
from targetprop.cli import main
from targetprop.training import rundir
from targetprop.training.trainer import Trainer

PANELS = specs.panel_names()
# The paper's iteration budgets, per panel.
FULL_ITERATIONS = {"fig3-temporal-order-60": 40000, "fig3-temporal-order-120": 48000, "fig3-adding-30": 24000,
                   "fig4-mnist": 40000, "fig4-permuted-mnist": 40000, "fig4-cifar10": 8000,
                   "fig4-fashion-mnist-gru": 8000, "fig4-fashion-mnist-rnn": 8000, "fig6a": 400, "fig6b": 400,
                   "linearized-vs-difference": 40000}
TINY_SYNTHETIC = {"iterations": 4, "eval_every": 2, "length": 10}
TINY_IMAGES = {"iterations": 2, "eval_every": 1, "batch_size": 2, "test_size": 2, "task.train_eval_size": 2}


def test_every_figure_has_panels_and_every_panel_file_is_listed():
    assert set(PANELS) == set(FULL_ITERATIONS)
    assert {specs.load_panel(p)["figure"] for p in PANELS} == set(specs.FIGURES)
    assert specs.panels_of("fig3") == ["fig3-adding-30", "fig3-temporal-order-120", "fig3-temporal-order-60"]


@pytest.mark.parametrize("name", PANELS)
def test_panel_parses_into_valid_configs_for_both_budgets(name):
    panel = specs.load_panel(name)
    full, short = specs.configs(panel, "full"), specs.configs(panel, "short")
    assert list(full) == list(short) == list(panel["methods"])
    assert {c.iterations for c in full.values()} == {FULL_ITERATIONS[name]}
    assert all(s.iterations < f.iterations for s, f in zip(short.values(), full.values()))
    assert all(c.divergence_factor is None for c in full.values())  # only NaN/inf stop a run


@pytest.mark.parametrize("name", [p for p in PANELS if specs.load_panel(p).get("kind") == "curves"])
def test_curves_panel_runs_bp_tuned_bp_and_the_tp_variants(name):
    configs = specs.configs(specs.load_panel(name), "full")
    assert configs["bp"].rule == "bp" and configs["bp-tuned"].rule == "bp"
    tp = configs.get("tp") or configs["tp-linearized"]
    assert (tp.rule, tp.through_time, tp.optimizer) == ("linearized", False, "sgd")
    assert configs["tp-adam"].optimizer == "adam" and configs["tp-adam"].target_step == tp.target_step
    assert any(c.through_time for c in configs.values())  # the authors' variant, for both cells


def test_authors_settings_are_those_of_the_results_doc():
    t60 = specs.configs(specs.load_panel("fig3-temporal-order-60"), "full")
    assert (t60["tp"].lr, t60["tp"].target_step, t60["tp"].reg) == (0.1, 0.01, 10.0)
    assert (t60["bp"].lr, t60["bp"].momentum, t60["bp"].nesterov) == (1e-5, 0.9, True)
    adding = specs.configs(specs.load_panel("fig3-adding-30"), "full")
    assert (adding["tp"].lr, adding["tp"].target_step, adding["tp"].reg, adding["bp"].lr) == (0.1, 0.1, 1.0, 1e-3)
    gru = specs.configs(specs.load_panel("fig4-fashion-mnist-gru"), "full")
    assert (gru["tp"].cell, gru["tp"].target_step, gru["bp"].lr, gru["bp"].momentum) == ("gru", 1e-2, 1e-2, 0.0)


def test_budget_layers_merge_task_options_and_none():
    panel = specs.load_panel("fig4-fashion-mnist-gru")
    short = specs.configs(panel, "short", {"task.k": 4})["tp"]
    assert short.task_options == {"train_eval_size": 200, "k": 4} and short.test_size == 200
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        specs.set_value({}, "nope", 1)


def test_bad_panel_is_refused_naming_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('figure = "fig9"\n[methods.a]\nrule = "bp"\n')
    with pytest.raises(ValueError, match="figure must be one of"):
        specs.load_panel(str(bad))
    bad.write_text('figure = "fig3"\n[budgets.full]\n[methods.a]\nrule = "bp"\n')
    with pytest.raises(ValueError, match=r"needs \[budgets.short\]"):
        specs.load_panel(str(bad))


# ---------------------------------------------------------------------------- short budgets, end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny MNIST-format files (used for MNIST and Fashion-MNIST) and CIFAR-10 batches."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "mnist", random_mnist(n_train=6, n_test=4))
    write_mnist(root / "fashion-mnist", random_mnist(n_train=6, n_test=4, seed=1))
    write_cifar(root, random_cifar(n_per_batch=2))
    return root


def tiny_overrides(name: str) -> dict:
    panel = specs.load_panel(name)
    if panel["common"]["task"] in ("temporal-order", "adding"):
        return TINY_SYNTHETIC
    return {**TINY_IMAGES, **({"task.k": 768} if "cifar" in name else {} if panel["kind"] == "grid" else {"task.k": 196})}


@pytest.mark.parametrize("name", PANELS)
def test_short_budget_runs_end_to_end_and_draws_its_png(name, data_dir, tmp_path):
    png = pipeline.reproduce_panel(name, "short", tmp_path, data_dir=data_dir, overrides=tiny_overrides(name))
    assert png == tmp_path / name / f"{name}.png" and png.stat().st_size > 10_000
    table = (tmp_path / "results.md").read_text().splitlines()
    panel = specs.load_panel(name)
    if panel["kind"] == "curves":
        assert len(table) == 2 + len(panel["methods"])
        summaries = [json.loads((tmp_path / name / m / "summary.json").read_text()) for m in panel["methods"]]
        assert [s["iterations"] for s in summaries] == [tiny_overrides(name)["iterations"]] * len(summaries)
    else:
        grid = specs.grid_of(panel, "short")
        assert len(table) == 2 + len(panel["methods"]) * len(grid["x_values"]) * len(grid["y_values"])
    label = reports.budget_label("short", tiny_overrides(name))  # the reduction is named in the table
    assert label.startswith("short budget, iterations=") and all(f"| {name} | {label} |" in row for row in table[2:])


def test_budget_labels_name_what_was_changed():
    assert reports.budget_label("full", None) == "full"
    assert reports.budget_label("full", {"task.data_dir": "/d"}) == "full"
    assert reports.budget_label("full", {"iterations": 10000}) == "full budget, iterations=10000"
    assert reports.budget_label("short", {}) == "short budget"


def test_reproduce_skips_panels_whose_data_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TARGETPROP_DATA", raising=False)
    assert main(["reproduce", "fig4", "--panel", "fig4-mnist", "--out", str(tmp_path)]) == 1  # nothing it could do
    assert "fig4-mnist: skipped, data not available (mnist: no data directory" in capsys.readouterr().out
    assert not (tmp_path / "results.md").exists()


def test_reproduce_refuses_a_panel_of_another_figure(capsys):
    with pytest.raises(SystemExit) as err:
        main(["reproduce", "fig3", "--panel", "fig6a"])
    assert err.value.code == 2 and "not part of fig3" in capsys.readouterr().err


def test_method_option_runs_only_the_named_methods_and_plots_what_is_there(tmp_path, capsys):
    args = ["reproduce", "fig3", "--panel", "fig3-adding-30", "--out", str(tmp_path), "--quiet"]
    args += [x for k, v in TINY_SYNTHETIC.items() for x in ("--set", f"{k}={v}")]
    assert main(args + ["--method", "tp", "--method", "bp"]) == 0
    out = tmp_path / "fig3-adding-30"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bp", "tp"]
    assert (out / "fig3-adding-30.png").is_file()
    rows = (tmp_path / "results.md").read_text().splitlines()
    assert [r.split("|")[3].strip().split()[0] for r in rows if r.startswith("| fig3")] == ["tp", "bp"]
    stamp = (out / "tp" / "metrics.csv").stat().st_mtime_ns
    assert main(args) == 0  # the rest of the panel; the finished runs are reused
    assert (out / "tp" / "metrics.csv").stat().st_mtime_ns == stamp
    assert {p.name for p in out.iterdir() if p.is_dir()} == set(specs.load_panel("fig3-adding-30")["methods"])


@pytest.mark.parametrize("extra, message", [
    (["--panel", "fig3-adding-30", "--method", "nope"], "has no method 'nope' (its methods: bp, bp-tuned"),
    (["--method", "tp"], "--method needs --panel (fig3 has 3 panels)"),
])
def test_method_option_refuses_unknown_methods_and_a_missing_panel(extra, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["reproduce", "fig3", *extra])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_method_option_needs_no_panel_for_a_one_panel_figure(tmp_path):
    args = ["reproduce", "linearized-vs-difference", "--out", str(tmp_path), "--quiet", "--method", "tp-difference"]
    assert main(args + [x for k, v in TINY_SYNTHETIC.items() for x in ("--set", f"{k}={v}")]) == 0
    assert [p.name for p in (tmp_path / "linearized-vs-difference").iterdir() if p.is_dir()] == ["tp-difference"]


def test_rerun_reuses_finished_runs_with_the_same_settings(tmp_path):
    overrides = TINY_SYNTHETIC
    pipeline.reproduce_panel("fig3-adding-30", "short", tmp_path, overrides=overrides)
    stamp = (tmp_path / "fig3-adding-30" / "tp" / "metrics.csv").stat().st_mtime_ns
    pipeline.reproduce_panel("fig3-adding-30", "short", tmp_path, overrides=overrides)
    assert (tmp_path / "fig3-adding-30" / "tp" / "metrics.csv").stat().st_mtime_ns == stamp


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, capsys):
    args = ["reproduce", "linearized-vs-difference", "--out", str(tmp_path), "--quiet", "--method", "tp-difference"]
    tiny = [x for k, v in TINY_SYNTHETIC.items() for x in ("--set", f"{k}={v}")]
    assert main(args + tiny) == 0
    run = tmp_path / "linearized-vs-difference" / "tp-difference"
    cli_fails(args + tiny + ["--set", "seed=7"], capsys, f"{run} holds a run with different settings")
    assert json.loads((run / "config.json").read_text())["config"]["seed"] != 7  # kept
    assert main(args + tiny + ["--set", "seed=7", "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 7


def test_an_interrupted_run_stops_the_experiment_and_the_same_command_continues(tmp_path, monkeypatch, capsys):
    args = ["reproduce", "linearized-vs-difference", "--out", str(tmp_path), "--quiet", "--method", "tp-difference"]
    args += [x for k, v in {**TINY_SYNTHETIC, "iterations": 10}.items() for x in ("--set", f"{k}={v}")]
    step = Trainer.step

    def sigterm_at_3(self, iteration):
        if iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, iteration)

    monkeypatch.setattr(Trainer, "step", sigterm_at_3)
    assert main(args) == 143
    run = tmp_path / "linearized-vs-difference" / "tp-difference"
    assert f"targetprop reproduce: interrupted during {run}; the same command continues" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(Trainer, "step", step)
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"continuing the unfinished run in {run} from its checkpoint of "
                                              f"iteration 4")
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------------------- tune: selection by area


def fake_run(folder, losses, status="completed", every=10):
    """A run directory with the given training losses at iterations 0, every, 2·every, …"""
    folder.mkdir(parents=True)
    rows = ["iteration,time,batch_loss,train_loss,train_accuracy,test_loss,test_accuracy,wall_time"]
    rows += [f"{i * every},0,0,{loss},0,0,0,0" for i, loss in enumerate(losses)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    (folder / "summary.json").write_text(json.dumps({"status": status}))
    return folder


def test_loss_auc_is_the_trapezoid_and_diverged_runs_have_none(tmp_path):
    assert reports.loss_auc(fake_run(tmp_path / "a", [2.0, 1.0, 0.0])) == pytest.approx(10 * 1.5 + 10 * 0.5)
    assert reports.loss_auc(fake_run(tmp_path / "b", [2.0, 1.0], status="diverged")) == math.inf
    assert reports.loss_auc(fake_run(tmp_path / "c", [2.0, float("nan")])) == math.inf


def test_selection_is_the_smallest_area_not_the_lowest_final_loss(tmp_path):
    # "fast" drops early and stays at 0.5; "late" ends lower (0.1) but has the larger area.
    runs = {"fast": fake_run(tmp_path / "fast", [2.0, 0.5, 0.5, 0.5, 0.5]),
            "late": fake_run(tmp_path / "late", [2.0, 2.0, 2.0, 2.0, 0.1]),
            "gone": fake_run(tmp_path / "gone", [2.0, 0.0], status="diverged")}
    assert reports.loss_auc(runs["fast"]) == pytest.approx(27.5)
    assert reports.loss_auc(runs["late"]) == pytest.approx(70.5)
    by_area = reports.SELECTIONS["loss-auc"]
    assert reports.select(runs, by_area) == "fast"
    assert reports.select({"gone": runs["gone"]}, by_area) is None


@pytest.mark.parametrize("text, expected", [
    ("lr=1e-4:1e1", ("lr", [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])),
    ("reg=1e-2:1:5", ("reg", [0.01, 0.0316228, 0.1, 0.316228, 1.0])),
    ("reg=0,0.1,10", ("reg", [0, 0.1, 10])),
    ("task.k=4,16", ("task.k", [4, 16])),
])
def test_grid_axes(text, expected):
    key, values = tuning.parse_axis(text)
    assert key == expected[0] and values == pytest.approx(expected[1])


def test_tune_command_runs_a_two_axis_grid_and_writes_the_smallest_area(tmp_path, capsys):
    out = tmp_path / "tune"
    code = main(["tune", "--set", "task=adding", "--set", "length=10", "--set", "iterations=6", "--set", "eval_every=2",
                 "--set", "rule=linearized", "--set", "target_step=0.1", "--set", "seed=1",
                 "--grid", "lr=1e-3:1e-1", "--grid", "reg=0.1,10", "--out", str(out), "--quiet"])
    assert code == 0
    best = json.loads((out / "best.json").read_text())
    aucs = {(x, y): reports.loss_auc(out / f"lr={x},reg={y}") for x in (1e-3, 1e-2, 1e-1) for y in (0.1, 10)}
    assert (best["lr"], best["reg"]) == min(aucs, key=aucs.get)
    assert best["auc"] == pytest.approx(min(aucs.values()))
    assert (out / "heatmap.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| reg \\ lr | 0.001 | 0.01 | 0.1 |" in printed and " *" in printed


def test_tune_refuses_three_axes_and_unknown_settings(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--grid", "lr=1,2", "--grid", "nope=1,2"])
    assert "unknown setting 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="one or two"):
        tuning.plan({}, [("lr", [1]), ("reg", [1]), ("seed", [1])], None)


def test_panel_files_are_not_offered_as_comparisons():
    names = specs.comparison_names()
    assert "demo" in names and "temporal-order-60" in names
    assert not any(n.startswith("fig") or n == "linearized-vs-difference" for n in names)


def test_tune_heat_map_title_leaves_out_the_swept_settings():
    title = tuning.tune_title({"task": "temporal-order", "rule": "linearized", "lr": 0.1, "reg": 10.0,
                         "target_step": 0.01, "iterations": 500}, ["lr", "reg"])
    assert "γh=0.01" in title and "r=10" not in title and "lr=0.1" not in title
    assert title.endswith("500 iterations; grid: lr × reg (blank: diverged)")


# ---------------------------------------------------------------------------- tune: selection by late accuracy

# lr=0.1 learns fastest (the smallest area, the best-ever accuracy) and collapses in its last
# evaluations; lr=0.01 learns slower and holds; lr=1 "diverged" after reaching the highest accuracy.
COLLAPSE = {0.1: ([2.0, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.6, 0.7], [0.5, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.3, 0.2]),
            0.01: ([2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.7, 0.7], [0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.9, 0.9]),
            1: ([2.0, 0.1, 0.1], [0.5, 1.0, 1.0])}
TUNE_SETTINGS = ["task=adding", "length=10", "iterations=80", "eval_every=10", "rule=bp"]


def fake_finished_run(job, losses, accuracies, status="completed", every=10):
    """The files of a finished run of ``job``'s settings (reused as they are by the runner)."""
    job.out.mkdir(parents=True)
    rundir.write_config(job.out, job.config.to_dict(), checkpoint_every=0, environment={})
    rows = ["iteration,time,batch_loss,train_loss,train_accuracy,test_loss,test_accuracy,wall_time"]
    rows += [f"{i * every},0,0,{loss},0,0,{acc},0" for i, (loss, acc) in enumerate(zip(losses, accuracies))]
    (job.out / "metrics.csv").write_text("\n".join(rows) + "\n")
    summary = {"status": status, "iterations": (len(losses) - 1) * every, "label": job.config.describe(),
               "final_test_accuracy": accuracies[-1], "best_test_accuracy": max(accuracies), "best_at": 0,
               "iteration_to_100": None, "train_time": 0.0, "wall_time": 0.0}
    rundir.write_summary(job.out, summary)


def fake_collapse_grid(out):
    base = dict(key_value(text) for text in TUNE_SETTINGS)  # as tune --set reads them
    axis = tuning.parse_axis("lr=0.01,0.1,1")
    _, jobs = tuning.plan(base, [axis], out)
    for (lr, _), (job,) in jobs.items():
        losses, accuracies = COLLAPSE[lr]
        fake_finished_run(job, losses, accuracies, status="diverged" if lr == 1 else "completed")
    grid, jobs = tuning.plan(base, [axis], out)  # checked again: every run is now finished
    assert all(job.decision.state == "finished" for (job,) in jobs.values())
    return grid, jobs


def test_late_accuracy_is_the_mean_of_the_last_quarter_of_the_evaluations(tmp_path):
    _, jobs = fake_collapse_grid(tmp_path)
    runs = {lr: job.out for (lr, _), (job,) in jobs.items()}
    assert reports.late_accuracy(runs[0.1]) == pytest.approx((0.95 + 0.3 + 0.2) / 3)  # 9 rows: the last 3
    assert reports.late_accuracy(runs[0.01]) == pytest.approx(0.9)
    assert reports.late_accuracy(runs[1]) is None  # diverged


@pytest.mark.parametrize("rule, chosen", [("loss-auc", 0.1), ("accuracy", 0.01)])
def test_the_selection_rules_on_a_run_that_collapses_late(rule, chosen, tmp_path):
    grid, jobs = fake_collapse_grid(tmp_path)
    cells, best = tuning.tune(grid, jobs, selection=reports.SELECTIONS[rule])  # every run reused
    assert best["lr"] == chosen and best["select"] == rule
    assert best["late_accuracy"] == pytest.approx(reports.late_accuracy(tmp_path / f"lr={chosen}"))
    assert cells[(1, None)]["run"] is None  # the diverged run is never selected, by either rule


def test_equal_late_accuracies_are_broken_by_the_smaller_area(tmp_path):
    fake_run(tmp_path / "slow", [2.0, 2.0, 1.0, 0.0])
    fake_run(tmp_path / "fast", [2.0, 1.0, 0.0, 0.0])  # both: test accuracy 0 throughout
    runs = {"slow": tmp_path / "slow", "fast": tmp_path / "fast"}
    assert reports.select(runs, reports.SELECTIONS["accuracy"]) == "fast"
    assert reports.select({"gone": fake_run(tmp_path / "gone", [1.0, 0.0], status="failed")},
                          reports.SELECTIONS["accuracy"]) is None


def test_tune_select_accuracy_writes_the_rule_and_the_late_accuracies(tmp_path, capsys):
    out = tmp_path / "tune"
    fake_collapse_grid(out)
    args = ["tune", *(a for t in TUNE_SETTINGS for a in ("--set", t)), "--grid", "lr=0.01,0.1,1", "--out", str(out)]
    assert main([*args, "--select", "accuracy", "--quiet"]) == 0
    best = json.loads((out / "best.json").read_text())
    assert (best["lr"], best["select"], best["late_accuracy"]) == (0.01, "accuracy", pytest.approx(0.9))
    text = (out / "tune.md").read_text()
    assert text.startswith("selected by accuracy: the highest test accuracy averaged over the last quarter")
    assert "never selected" in text
    assert "| late test accuracy | 90.00% * | 48.33% | diverged |" in text
    assert "| loss AUC | 81.5 * | 44.5 | diverged |" in text  # the selected cell starred in both tables
    assert text in capsys.readouterr().out
    assert main([*args, "--quiet"]) == 0  # the default rule: the same runs, the smallest area
    assert json.loads((out / "best.json").read_text())["lr"] == 0.1
    assert (out / "tune.md").read_text().startswith("selected by loss-auc: the smallest area")


def test_tune_select_is_checked_and_explained(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--grid", "lr=1,2", "--select", "best"])
    assert exit_info.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "last quarter of the evaluated iterations" in " ".join(capsys.readouterr().out.split())


def test_tune_select_accuracy_draws_the_late_accuracies(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "--set", "task=adding", "--set", "length=10", "--set", "iterations=8", "--set",
                 "eval_every=2", "--set", "rule=linearized", "--set", "target_step=0.1", "--set", "tol=1e-6",
                 "--grid", "lr=1e-2,1e-1", "--grid", "reg=0.1,10", "--select", "accuracy", "--out", str(out),
                 "--quiet"]) == 0
    best = json.loads((out / "best.json").read_text())
    late = {(x, y): reports.late_accuracy(out / f"lr={x},reg={y}") for x in (1e-2, 1e-1) for y in (0.1, 10)}
    assert best["late_accuracy"] == max(late.values()) and late[(best["lr"], best["reg"])] == max(late.values())
    assert (out / "heatmap.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------- the tuned-BP protocol

# the grid the protocol's commands must run: optimizer settings → step sizes, each clipped at 1
PROTOCOL = {("sgd", 0.9, True): [1e-4, 1e-3, 1e-2], ("adam", 0.0, False): [1e-4, 1e-3, 1e-2],
            ("rmsprop", 0.0, False): [1e-4, 1e-3]}


def protocol_commands() -> list[list[str]]:
    """The ``targetprop tune`` commands of the protocol in the tuning module's docstring, the
    shell's variables and line continuations expanded."""
    lines = tuning.__doc__.replace("\\\n", " ").splitlines()
    variables = dict(line.strip().split("=", 1) for line in lines if line.strip()[:2] in ('P=', 'S=', 'O='))
    commands = [line.strip() for line in lines if line.strip().startswith("targetprop tune")]
    for name, value in variables.items():
        commands = [c.replace(f"${name}", value.strip('"')) for c in commands]
    return [c.split()[1:] for c in commands]


def test_the_documented_bp_protocol_runs_its_grid_and_selects_by_late_accuracy(tmp_path, capsys):
    commands = protocol_commands()
    assert len(commands) == 3 and all("--select accuracy" in " ".join(c) for c in commands)
    assert all("--set iterations=10000" in " ".join(c) for c in commands)  # a quarter of the panel's 40000
    assert specs.configs(specs.load_panel("fig4-permuted-mnist"), "full")["bp"].iterations == 40000
    tiny = ["--set", "length=10", "--set", "hidden_size=8", "--set", "iterations=6", "--set", "eval_every=2",
            "--set", "test_size=50"]
    seen = {}
    for argv in commands:
        out = tmp_path / argv[argv.index("--out") + 1]
        argv = [a.replace("fig4-permuted-mnist", "fig3-temporal-order-60") for a in argv]  # no MNIST files here
        argv[argv.index("--out") + 1] = str(out)
        assert main([*argv, *tiny, "--quiet"]) == 0
        best = json.loads((out / "best.json").read_text())
        runs = [run for run in out.iterdir() if run.is_dir()]
        late = {run: reports.late_accuracy(run) for run in runs}
        assert best["late_accuracy"] == max(v for v in late.values() if v is not None)
        for run in runs:
            saved = rundir.read_config(run)
            assert saved["clip"] == 1 and saved["rule"] == "bp" and saved["stop_at_accuracy"] is None
            seen.setdefault((saved["optimizer"], saved["momentum"], saved["nesterov"]), []).append(saved["lr"])
    assert {k: sorted(v) for k, v in seen.items()} == PROTOCOL
