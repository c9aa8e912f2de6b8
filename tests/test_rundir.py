"""The run folder has one owner: only rundir names its files, a run decides what to do with its
folder once, every run file is written atomically, and the reading API reads what a run wrote."""
import ast
import json
import os
from pathlib import Path

import pytest

import targetprop
from targetprop.cli import main
from targetprop.training import checkpoint, files, rundir
from targetprop.training.metrics import MetricsLog

SRC = Path(targetprop.__file__).parent
FILE_NAMES = ("config.json", "metrics.csv", "summary.json", "diagnostics.csv")
TINY = ["--length", "10", "--iterations", "6", "--eval-every", "3", "--test-size", "20", "--hidden-size", "4",
        "--quiet", "--checkpoint-every", "3"]


def code_strings(path: Path):
    """The string constants of a module's code (docstrings left out): (line, text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_rundir_spells_the_run_files():
    spelled = {}
    for path in sorted(SRC.rglob("*.py")):
        for line, text in code_strings(path):
            if any(name in text for name in FILE_NAMES) or text == rundir.CHECKPOINT_FOLDER or "checkpoints/" in text:
                spelled.setdefault(str(path.relative_to(SRC)), []).append(line)
    assert set(spelled) == {"training/rundir.py"}, spelled
    assert len(spelled["training/rundir.py"]) >= len(FILE_NAMES) + 1  # the check can see what it looks for


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def config_reads(monkeypatch):
    reads = []
    original = rundir._read_json

    def counted(path):
        reads.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(rundir, "_read_json", counted)
    return reads


def test_a_run_checks_its_folder_once(tmp_path, monkeypatch, capsys):
    decisions, reads = count_calls(monkeypatch, rundir, "decide"), config_reads(monkeypatch)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert len(decisions) == 1 and reads.count("config.json") == 0  # a new folder: nothing to read
    decisions.clear()
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out)]) == 0  # the same run: reused
    assert len(decisions) == 1 and reads.count("config.json") == 1
    assert capsys.readouterr().out.startswith(f"{out} already holds this run")


def test_a_resume_checks_its_folder_once(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    decisions, reads = count_calls(monkeypatch, rundir, "decide"), config_reads(monkeypatch)
    assert main(["train", "--resume", str(out), "--iterations", "9", "--quiet"]) == 0
    assert len(decisions) == 1  # the one check: same settings but the budget
    assert reads.count("config.json") == 2  # the settings to continue with, and the check
    assert rundir.read_summary(out)["iterations"] == 9


def test_reading_api_reads_what_a_run_wrote(tmp_path):
    out = tmp_path / "runs" / "a"
    assert main(["train", *TINY, "--seed", "4", "--out", str(out)]) == 0
    assert rundir.is_run(out) and not rundir.is_run(tmp_path / "runs")
    assert rundir.find_runs([tmp_path / "runs"]) == [out] and rundir.find_runs([out]) == [out]
    with pytest.raises(ValueError, match="not a run directory"):
        rundir.find_runs([tmp_path])
    assert rundir.read_config(out)["seed"] == 4
    assert rundir.read_options(out) == {"checkpoint_every": 3, "threads": 1}
    assert rundir.read_summary(out)["status"] == "completed"
    assert rundir.read_metrics(out)["iteration"] == [0.0, 3.0, 6.0]
    assert [i for i, _ in checkpoint.listed(rundir.checkpoint_dir(out))] == [3, 6]
    with pytest.raises(files.RunFolderError, match="holds no run"):
        rundir.read_config(tmp_path)
    assert rundir.read_summary(tmp_path) is None


def crash_on_replace(monkeypatch):
    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)


@pytest.mark.parametrize("write", [
    lambda run: rundir.write_summary(run, {"status": "failed"}),
    lambda run: rundir.write_config(run, {"seed": 9}, checkpoint_every=1, environment={}),
    lambda run: MetricsLog(rundir.metrics_path(run), keep=0),
    lambda run: checkpoint.save_in(rundir.checkpoint_dir(run), 1, {"w": 2}),
], ids=["summary", "config", "metrics-cut", "checkpoint"])
def test_a_crash_mid_write_leaves_the_old_file(write, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    crash_on_replace(monkeypatch)
    with pytest.raises(OSError, match="power cut"):
        write(run)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not files.is_temporary(p)}
    assert after == before
    assert rundir.read_summary(run)["status"] == "completed" and rundir.read_config(run)["seed"] == 0


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    files.atomic_write(target, "n", b"ew")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    assert files.temporary_path(target).name == ".x.json.tmp" and files.is_temporary(files.temporary_path(target))


def test_decide_states(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    settings = rundir.read_config(out)
    assert rundir.decide(tmp_path / "new", settings).state == "empty"
    finished = rundir.decide(out, settings)
    assert finished.state == "finished" and finished.checkpoint == 6 and finished.options["checkpoint_every"] == 3
    assert rundir.decide(out, settings, resume=True).state == "unfinished"
    assert rundir.decide(out, {**settings, "seed": 1}, overwrite=True).overwrite
    summary = json.loads(rundir.summary_path(out).read_text())
    rundir.write_summary(out, {**summary, "status": "interrupted"})
    assert rundir.decide(out, settings).state == "unfinished"
    with pytest.raises(files.RunFolderError, match="different settings.*seed: 0 → 1"):
        rundir.decide(out, {**settings, "seed": 1})
    with pytest.raises(files.RunFolderError, match="cannot resume .* only iterations may change"):
        rundir.decide(out, {**settings, "seed": 1}, resume=True)
