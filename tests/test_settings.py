"""One settings source: the command line's options are generated from TrainConfig's fields, and
``--config FILE.toml`` reads the same fields (options over the file, the run recording the merge)."""
import dataclasses
import json

import pytest
from helpers import cli_fails as fails

from targetprop import rules
from targetprop.cli import build_parser, main
from targetprop.training.config import TrainConfig, merge, read_settings_file

TINY = ["--length", "10", "--iterations", "4", "--eval-every", "2", "--test-size", "20", "--hidden-size", "4",
        "--quiet"]


def subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def options_by_dest(name) -> dict:
    return {a.dest: a for a in subparser(name)._actions}


@pytest.mark.parametrize("command,others", [
    ("train", {"out", "overwrite", "resume", "checkpoint_every", "diagnose_every", "quiet", "threads"}),
    ("diagnose", {"run", "rules", "output", "plot", "threads"})])
def test_the_options_are_the_fields_with_the_fields_help(command, others):
    actions = options_by_dest(command)
    expected = set()
    for f in dataclasses.fields(TrainConfig):
        spec = f.metadata["setting"]
        action = actions[f.name]
        spelling = "--" + f.name.replace("_", "-")
        assert (spelling.removesuffix("s") if spec.kind == "table" else spelling) in action.option_strings
        assert action.help.startswith(spec.help), (f.name, action.help)
        expected.add(f.name)
        for entry in spec.entries:  # a table's shortcuts, each with its own help
            assert actions[f"{f.name}.{entry.key}"].help == entry.help
            expected.add(f"{f.name}.{entry.key}")
    assert set(actions) - {"help", "config"} == expected | others  # no option but the fields' and the command's


def test_the_spellings_and_defaults_of_before_are_kept():
    actions = options_by_dest("train")
    assert actions["cell"].option_strings == ["--cell", "--model"]
    for dest, option in [("layer_options.inverse_lr", "--inverse-lr"), ("task_options.data_dir", "--data-dir"),
                         ("layer_options", "--layer-option"), ("task_options", "--task-option")]:
        assert actions[dest].option_strings == [option]
    assert "(default: 0.01)" in actions["target_step"].help and "(default: 2.0)" in actions["divergence_factor"].help
    parsed = subparser("train").parse_args([])
    given = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(TrainConfig)}
    assert set(given.values()) == {None}  # nothing given: every default is TrainConfig's


def test_rule_names_come_from_the_registry(capsys):
    metavar = subparser("train")._option_string_actions["--rule"].metavar
    assert metavar == "{" + ",".join(rules.RULE_NAMES) + "}"
    with pytest.raises(ValueError, match=r"rule must be one of \['bp', 'linearized'\], got 'direct'"):
        TrainConfig(cell="gru", rule="direct")  # what the gru cell registers
    fails(["train", "--rule", "magic"], capsys, "--rule", "invalid choice: 'magic'", "rule must be one of")


def write(tmp_path, text):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_config_file_then_options_then_the_run_records_the_merge(tmp_path, capsys):
    path = write(tmp_path, 'lr = 0.5\nseed = 3\nrule = "bp"\nstop_at_accuracy = "none"\nnesterov = true\n'
                           'momentum = 0.9\n[task_options]\ntest_seed = 2\n')
    out = tmp_path / "run"
    assert main(["train", *TINY, "--config", str(path), "--lr", "0.2", "--no-nesterov",
                 "--task-option", "criterion=absolute", "--task", "adding", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["lr"], saved["seed"], saved["rule"]) == (0.2, 3, "bp")
    assert (saved["nesterov"], saved["momentum"]) == (False, 0.9)
    assert saved["task_options"] == {"test_seed": 2, "criterion": "absolute"}  # tables merged entry by entry
    assert saved["stop_at_accuracy"] is None and saved["iterations"] == 4


def test_config_file_errors_name_the_file_and_the_key(tmp_path, capsys):
    path = write(tmp_path, 'target-step = 0.1\n')
    fails(["train", "--config", str(path)], capsys, str(path), "unknown setting 'target-step'",
          "did you mean 'target_step'?")
    path = write(tmp_path, 'lr = "fast"\n')
    fails(["train", "--config", str(path)], capsys, str(path), "lr must be a real number")
    path = write(tmp_path, 'lr = \n')
    fails(["train", "--config", str(path)], capsys, "is not valid TOML")
    fails(["train", "--config", str(tmp_path / "missing.toml")], capsys, "cannot read the settings file")
    assert not (tmp_path / "runs").exists()


def test_files_spell_unset_as_none_and_merge_keeps_tables(tmp_path):
    path = write(tmp_path, 'clip = "none"\ndivergence_factor = "None"\nlength = 12\n'
                           '[layer_options]\ncheck_finite = false\n')
    values = read_settings_file(path)
    assert values == {"clip": None, "divergence_factor": None, "length": 12, "layer_options": {"check_finite": False}}
    merged = merge(values, {"layer_options": {"inverse_lr": 0.1}, "length": 8})
    assert merged["layer_options"] == {"check_finite": False, "inverse_lr": 0.1} and merged["length"] == 8
    assert TrainConfig.from_dict(merged).clip is None


def test_none_unsets_an_optional_setting_on_the_command_line(tmp_path):
    path = write(tmp_path, "clip = 1.0\nlength = 12\n")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--config", str(path), "--clip", "none", "--length", "none", "--task", "adding",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["clip"] is None and saved["length"] is None  # the file's values unset: the task's length


def test_diagnose_reads_the_same_settings_file(tmp_path, capsys):
    path = write(tmp_path, 'length = 10\nhidden_size = 4\nrule = "linearized"\n')
    output = tmp_path / "d.json"
    assert main(["diagnose", "--config", str(path), "--rules", "linearized", "--output", str(output)]) == 0
    assert "linearized" in capsys.readouterr().out
    assert set(json.loads(output.read_text())["cosine_with_bp"]) == {"linearized"}
