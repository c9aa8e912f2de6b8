"""``targetprop compare``, ``plot`` and ``table`` end to end; bad input is a one-line error, exit 2."""
import json

import pytest
from helpers import cli_fails as fails

from targetprop.cli import main
from targetprop.experiments import reports, specs
from targetprop.training.rundir import read_metrics

TINY = ["--length", "10", "--iterations", "20", "--eval-every", "10", "--test-size", "50",
        "--hidden-size", "8", "--quiet"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: the tiny temporal-order run every comparison file here starts from
COMMON = """[common]
task = "temporal-order"
length = 10
hidden_size = 8
iterations = 20
eval_every = 10
test_size = 50
seed = 3
"""

COMPARISON = """
description = "tiny"
plot = "c.png"
""" + COMMON + """[methods.tp]
rule = "linearized"
lr = 0.1
reg = 10.0
[methods.bp]
rule = "bp"
lr = 1e-2
momentum = 0.9
nesterov = true
"""



# ---------------------------------------------------------------------------- compare


def test_compare_runs_methods_prints_table_and_plots(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(COMPARISON)
    png = tmp_path / "curves.png"
    assert main(["compare", str(config), "--out", str(tmp_path / "runs"), "--plot", str(png), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("tiny\n")
    assert ("| method | settings | status | iterations | final test accuracy | best (at iteration) "
            "| iterations to 100% | loss AUC | train time | wall time | threads |") in printed
    rows = [line for line in printed.splitlines() if line.startswith("| tp ") or line.startswith("| bp ")]
    assert len(rows) == 2 and all("| completed | 20 |" in r for r in rows)
    assert "linearized through time γh=0.01 r=10, sgd lr=0.1" in rows[0] and "bp, sgd lr=0.01 nesterov=0.9" in rows[1]
    for method in ("tp", "bp"):
        saved = json.loads((tmp_path / "runs" / method / "config.json").read_text())["config"]
        assert saved["label"] == method and saved["seed"] == 3 and saved["hidden_size"] == 8
    assert (tmp_path / "runs" / "comparison.md").read_text().count("\n") == 4
    assert png.read_bytes()[:8] == PNG_MAGIC and not (tmp_path / "runs" / "c.png").exists()


def test_compare_iterations_override(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(COMPARISON)
    assert main(["compare", str(config), "--out", str(tmp_path / "runs"), "--iterations", "5", "--quiet"]) == 0
    assert read_metrics(tmp_path / "runs" / "bp")["iteration"] == [0, 5]
    assert (tmp_path / "runs" / "c.png").read_bytes()[:8] == PNG_MAGIC  # the file's plot, inside --out


def test_compare_again_reuses_its_runs_and_lists_diverged_ones(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(COMPARISON.replace("lr = 1e-2", "lr = 1e6"))  # bp diverges
    argv = ["compare", str(config), "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 0  # its job done: a table, with the failed run listed
    first = capsys.readouterr().out
    assert "| bp | bp, sgd lr=1e+06 nesterov=0.9 | diverged | 10 |" in first
    assert "\nnot completed: bp (diverged)\n" in first
    before = {p: p.read_bytes() for p in sorted((tmp_path / "runs").rglob("*.pt"))}
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert f"{tmp_path / 'runs' / 'tp'} already holds this run, completed after 20 iterations" in again
    assert {p: p.read_bytes() for p in sorted((tmp_path / "runs").rglob("*.pt"))} == before  # nothing trained
    fails([*argv, "--iterations", "5"], capsys, "holds a run with different settings (differs in iterations: 20 → 5)",
          "--overwrite")


@pytest.mark.parametrize("edit,needles", [
    (lambda s: "extra = 1\n" + s, ["unknown key(s) extra"]),
    (lambda s: s.replace("lr = 0.1", "lr = 0.1\nspeed = 2"), ["methods.tp", "unknown setting(s): speed"]),
    (lambda s: s.replace("lr = 1e-2", "lr = -1.0"), ["methods.bp", "lr must be"]),
    (lambda s: s.replace('rule = "bp"', 'rule = "nope"'), ["methods.bp", "rule must be one of"]),
    (lambda s: s.split("[methods.tp]")[0], ["needs at least one [methods.NAME] table"]),
    (lambda s: s + "\n[[broken", ["not valid TOML"]),
])
def test_bad_comparison_file(edit, needles, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(edit(COMPARISON))
    fails(["compare", str(config), "--out", str(tmp_path / "runs")], capsys, *needles)
    assert not (tmp_path / "runs").exists()  # every method is checked before any runs


def test_builtin_comparisons_are_valid():
    assert {"demo", "temporal-order-60"} <= set(specs.comparison_names())
    configs = specs.configs(specs.load_comparison("demo"))
    assert list(configs) == ["tp", "tp-through-time", "bp"]
    tp, tt, bp = configs.values()
    assert ((tp.rule, tp.lr, tp.target_step, tp.reg, tp.through_time, tp.optimizer)
            == ("linearized", 0.1, 0.01, 10.0, False, "sgd"))
    assert tt.through_time and (tt.lr, tt.target_step, tt.reg) == (0.1, 0.01, 10.0)
    assert (bp.rule, bp.lr, bp.momentum, bp.nesterov) == ("bp", 1e-5, 0.9, True)
    assert all((c.task, c.length, c.hidden_size, c.seed) == ("temporal-order", 60, 100, 1) for c in configs.values())
    assert all(c.divergence_factor is None for c in configs.values())  # "none" in the file
    full = specs.configs(specs.load_comparison("temporal-order-60"))
    assert all(c.iterations == 40000 and c.stop_at_accuracy == 1.0 for c in full.values())


# ---------------------------------------------------------------------------- plot


def test_plot_writes_a_png(tmp_path, capsys):
    for rule in ("bp", "linearized"):
        assert main(["train", *TINY, "--rule", rule, "--out", str(tmp_path / rule)]) == 0
    png = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(tmp_path / "bp"), str(tmp_path / "linearized"), "-o", str(png), "--title", "t"]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    png2 = tmp_path / "all.png"  # a directory of runs stands for its runs
    assert main(["plot", str(tmp_path), "-o", str(png2)]) == 0 and png2.read_bytes()[:8] == PNG_MAGIC


def test_table_lists_finished_and_unfinished_runs(tmp_path, capsys):
    assert main(["train", *TINY, "--rule", "bp", "--lr", "0.01", "--out", str(tmp_path / "bp")]) == 0
    assert main(["train", *TINY, "--rule", "linearized", "--out", str(tmp_path / "tp")]) == 0
    summary = json.loads((tmp_path / "bp" / "summary.json").read_text())
    (tmp_path / "tp" / "summary.json").unlink()  # as while a run is still going
    last = (tmp_path / "tp" / "metrics.csv").read_text().splitlines()[-1].split(",")
    capsys.readouterr()
    assert main(["table", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| train time | wall time | threads |")
    rows = [r.split(" | ") for r in lines[2:]]
    assert [r[0] for r in rows] == [f"| {tmp_path / 'bp'}", f"| {tmp_path / 'tp'}"]
    assert [r[-1] for r in rows] == ["1 |", "1 |"]  # from the summary, and from config.json while running
    assert rows[0][1:5] == ["bp, sgd lr=0.01", "completed", "20", f"{summary['final_test_accuracy']:.1%}"]
    assert rows[1][2:5] == ["no summary (running?)", "20", f"{float(last[-1]):.1%}"]
    damaged = {k: v for k, v in summary.items() if k != "best_test_accuracy"}
    (tmp_path / "bp" / "summary.json").write_text(json.dumps(damaged))
    fails(["table", str(tmp_path / "bp")], capsys, "unreadable run files (summary.json has no 'best_test_accuracy')")
    fails(["table", str(tmp_path / "nothing")], capsys, "not a run directory")


def test_plot_bad_input(tmp_path, capsys):
    fails(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")], capsys, "not a run directory")
    fails(["plot", str(tmp_path), "-o", str(tmp_path / "x.pdf")], capsys, ".png")
    assert not (tmp_path / "x.png").exists()




def test_compare_reuses_finished_runs_and_reruns_a_changed_one_only_with_overwrite(tmp_path, capsys, monkeypatch):
    from targetprop.experiments import runner

    config = tmp_path / "tiny.toml"
    config.write_text(COMPARISON)
    built, real = [], runner.Trainer
    monkeypatch.setattr(runner, "Trainer", lambda cfg, *a, **k: built.append(cfg.label) or real(cfg, *a, **k))
    argv = ["compare", str(config), "--out", str(tmp_path / "runs"), "--quiet"]
    runs = tmp_path / "runs"

    def stamps():
        return {m: (runs / m / "metrics.csv").stat().st_mtime_ns for m in ("tp", "bp")}

    assert main(argv) == 0 and built == ["tp", "bp"]
    first, before = capsys.readouterr().out, stamps()
    assert main(argv) == 0 and built == ["tp", "bp"]  # no trainer built: nothing trained again
    again = capsys.readouterr().out
    assert stamps() == before
    assert f"{runs / 'bp'} already holds this run, completed after 20 iterations" in again
    assert again.split("| method |")[1] == first.split("| method |")[1]  # the same table, read from the runs
    config.write_text(COMPARISON.replace("lr = 0.1", "lr = 0.2"))
    fails(argv, capsys, f"{runs / 'tp'} holds a run with different settings (differs in lr: 0.1 → 0.2)", "--overwrite")
    assert built == ["tp", "bp"] and stamps() == before
    assert main([*argv, "--overwrite"]) == 0 and built == ["tp", "bp", "tp", "bp"]
    assert json.loads((runs / "tp" / "config.json").read_text())["config"]["lr"] == 0.2


def test_compare_table_and_reproduce_write_one_table(tmp_path, capsys):
    """A panel is a comparison file with a figure and budgets: reproduce reuses compare's runs, and
    the three commands' tables have the same result columns after their leading ones."""
    (tmp_path / "tiny.toml").write_text(COMPARISON.replace('plot = "c.png"\n', ""))
    panel = tmp_path / "panel" / "tiny.toml"
    panel.parent.mkdir()
    panel.write_text('figure = "fig3"\n' + COMPARISON.replace('plot = "c.png"\n', "") + "[budgets.full]\n[budgets.short]\n")
    assert main(["compare", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "out" / "tiny"), "--quiet"]) == 0
    compared = capsys.readouterr().out.splitlines()
    assert main(["table", str(tmp_path / "out" / "tiny")]) == 0
    tabled = capsys.readouterr().out.splitlines()
    assert main(["reproduce", "fig3", "--panel", str(panel), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    reproduced = capsys.readouterr().out
    assert "already holds this run" in reproduced and "completed after 20 iterations, test accuracy" not in reproduced
    results = (tmp_path / "out" / "results.md").read_text().splitlines()
    columns = " | ".join(reports.RESULT_COLUMNS) + " |"
    header = next(line for line in compared if line.startswith("| method |"))
    assert header == "| method | " + columns
    assert tabled[0] == "| run | " + columns and results[0] == "| panel | budget | method | " + columns
    compare_rows = [line for line in compared if line.startswith(("| tp |", "| bp |"))]
    result_rows = results[2:]
    assert len(compare_rows) == len(result_rows) == 2
    for mine, theirs in zip(compare_rows, result_rows):  # the same runs, the same cells
        assert theirs.endswith(mine.split(" | ", 1)[1]) and theirs.startswith("| tiny | short budget | ")


def test_compare_runs_a_grid_file_like_a_grid_panel(tmp_path, capsys):
    grid = 'kind = "grid"\nplot = "grid.png"\n[grid]\nx = "lr"\nx_values = [0.1, 1e6]\nmetric = "auc"\n'
    config = tmp_path / "grid.toml"
    config.write_text(grid + COMPARISON.split("[methods.bp]")[0].replace('description = "tiny"\nplot = "c.png"\n', ""))
    assert main(["compare", str(config), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| tp lr=")]
    assert rows[0].startswith("| tp lr=0.1 | linearized through time γh=0.01 r=10, sgd lr=0.1 | completed | 20 |")
    assert rows[1] == "| tp lr=1000000.0 |  | diverged | " + " | ".join(["n/a"] * 8) + " |"  # no run selected
    assert "not completed: tp lr=1000000.0 (diverged)" in printed
    assert (tmp_path / "runs" / "grid.png").read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------- compare over seeds

SEEDED = """
plot = "c.png"
""" + COMMON + """rule = "bp"
[methods.sgd]
lr = 1e-2
momentum = 0.9
nesterov = true
[methods.adam]
optimizer = "adam"
lr = 1e-2
"""


def test_compare_over_seeds_runs_each_seed_in_its_folder_and_shows_the_mean(tmp_path, capsys):
    config = tmp_path / "seeded.toml"
    config.write_text(SEEDED)
    runs = tmp_path / "runs"
    argv = ["compare", str(config), "--out", str(runs), "--seed", "1", "--seed", "2,5,2", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for method in ("sgd", "adam"):
        finals = []
        for seed in (1, 2, 5):
            saved = json.loads((runs / f"{method}-seed{seed}" / "config.json").read_text())["config"]
            assert (saved["seed"], saved["label"]) == (seed, f"{method} seed {seed}")
            finals.append(json.loads((runs / f"{method}-seed{seed}" / "summary.json").read_text())
                          ["final_test_accuracy"])
        assert not (runs / method).exists()
        mean = sum(finals) / 3
        sd = (sum((f - mean) ** 2 for f in finals) / 2) ** 0.5
        (row,) = [line for line in printed.splitlines() if line.startswith(f"| {method} mean |")]
        assert f"| completed 3/3 | 20 | {mean:.1%} ± {sd:.1%} |" in row
    names = [line.split(" | ")[0][2:] for line in printed.splitlines() if line.startswith("| sgd") or
             line.startswith("| adam")]
    assert names == ["sgd seed 1", "sgd seed 2", "sgd seed 5", "sgd mean",
                     "adam seed 1", "adam seed 2", "adam seed 5", "adam mean"]
    assert (runs / "comparison.md").read_text().count("\n") == 10
    assert (runs / "c.png").read_bytes()[:8] == PNG_MAGIC
    assert main(argv) == 0  # the same command reuses all six runs
    assert capsys.readouterr().out.count("already holds this run") == 6


def test_the_mean_row_counts_the_runs_that_reached_100_percent_and_ended_how(tmp_path):
    def fake(name, status, final, reached, losses):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"config": {"rule": "bp", "lr": 0.01}}))
        rows = ["iteration,time,batch_loss,train_loss,train_accuracy,test_loss,test_accuracy,wall_time"]
        rows += [f"{i * 10},0,0,{loss},0,0,0,0" for i, loss in enumerate(losses)]
        (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
        (folder / "summary.json").write_text(json.dumps(
            {"status": status, "iterations": 20, "final_test_accuracy": final, "best_test_accuracy": final,
             "best_at": 20, "iteration_to_100": reached, "train_time": 2.0, "wall_time": 4.0,
             "environment": {"threads": 1}}))
        return folder

    runs = [fake("a", "completed", 1.0, 10, [2.0, 1.0, 0.0]), fake("b", "completed", 0.5, None, [2.0, 2.0, 2.0]),
            fake("c", "diverged", 0.0, None, [2.0, 9.0])]
    cells = reports.mean_cells(runs)
    assert cells == ["bp, sgd lr=0.01", "completed 2/3, diverged 1/3", "20", "50.0% ± 50.0%", "50.0%",
                     "10 (1 of 3)", "30 (2 of 3)", "2 s", "4 s", "1"]


def test_compare_seed_is_checked(tmp_path, capsys):
    config = tmp_path / "seeded.toml"
    config.write_text(SEEDED)
    for bad in ("-1", "1,x", ""):
        fails(["compare", str(config), "--seed", bad], capsys, "--seed", "seed")
    grid = tmp_path / "grid.toml"
    grid.write_text('kind = "grid"\n[grid]\nx = "lr"\nx_values = [0.1]\n' + SEEDED.replace('plot = "c.png"\n', ""))
    fails(["compare", str(grid), "--seed", "1", "--out", str(tmp_path / "runs")], capsys,
          "seeds apply to a curves file, not a grid")
    assert not (tmp_path / "runs").exists()


def test_compare_runs_several_files_each_into_its_own_folder(tmp_path, capsys):
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(f'out = "{tmp_path / "one"}"\n' + COMPARISON)
    second.write_text(f'out = "{tmp_path / "two"}"\n' + COMPARISON.replace("seed = 3", "seed = 4"))
    assert main(["compare", str(first), str(second), "--iterations", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("tiny\n") == 2
    for folder, seed in (("one", 3), ("two", 4)):
        for method in ("tp", "bp"):
            saved = json.loads((tmp_path / folder / method / "config.json").read_text())["config"]
            assert saved["seed"] == seed and saved["iterations"] == 5
        assert (tmp_path / folder / "comparison.md").read_text().count("\n") == 4
        assert (tmp_path / folder / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_compare_checks_every_file_before_running_any(tmp_path, capsys):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(f'out = "{tmp_path / "one"}"\n' + COMPARISON)
    bad.write_text(COMPARISON.replace('lr = 0.1', 'lr = -1.0'))
    fails(["compare", str(good), str(bad), "--quiet"], capsys, "bad", "lr")
    assert not (tmp_path / "one").exists()
    fails(["compare", str(good), str(good), "--out", str(tmp_path / "x")], capsys, "--out", "one CONFIG")
