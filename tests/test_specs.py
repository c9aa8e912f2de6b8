"""Experiment files (``specs``): every built-in file loads and validates, comparison files and
panels share one format (the same settings accepted or refused alike, "none" for off in both),
and the one KEY=VALUE reading of the command line's ``--set``."""
import argparse

import pytest

from targetprop.argtypes import key_value
from targetprop.experiments import specs
from targetprop.training.config import TrainConfig

COMPARISON = """
[common]
task = "temporal-order"
length = 10
hidden_size = 8
iterations = 20
[methods.tp]
rule = "linearized"
lr = 0.1
[methods.bp]
rule = "bp"
lr = 1e-2
"""
BUDGETS = '\n[budgets.full]\niterations = 40\n[budgets.short]\niterations = 20\n'


def as_panel(text, figure="fig3"):
    """The comparison file ``text`` made a panel: a figure and budgets."""
    return f'figure = "{figure}"\n' + text + BUDGETS


@pytest.mark.parametrize("name", specs.builtin_names())
def test_every_builtin_file_loads_and_validates(name):
    table = specs.load(name)
    assert table["name"] == name and table["methods"]
    for budget in specs.budgets_of(table):
        configs = specs.configs(table, budget)
        assert list(configs) == list(table["methods"])
        assert all(isinstance(c, TrainConfig) and c.label == m for m, c in configs.items())
    assert (name in specs.panel_names()) == specs.is_panel(table) != (name in specs.comparison_names())


def write(tmp_path, name, text):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def outcome(load, path):
    try:
        return "ok", specs.configs(load(path), None if load is specs.load_comparison else "short")
    except ValueError as err:
        return "refused", str(err).split(": ", 1)[1]  # the message without the file's path


@pytest.mark.parametrize("edit", [
    lambda s: s,
    lambda s: s.replace("lr = 0.1", 'lr = 0.1\nstop_at_accuracy = "none"'),
    lambda s: s.replace("lr = 0.1", 'lr = 0.1\ndivergence_factor = "None"\nclip = "none"'),
    lambda s: s.replace("iterations = 20", 'iterations = 20\nstop_at_accuracy = 1.0'),
    lambda s: s.replace("lr = 0.1", 'lr = 0.1\nstop_at_accuracy = "off"'),
    lambda s: s.replace("lr = 0.1", "lr = 0.1\nspeed = 2"),
    lambda s: s.replace("lr = 1e-2", "lr = -1.0"),
    lambda s: s.replace('rule = "bp"', 'rule = "nope"'),
    lambda s: s.replace("[methods.tp]", "[methods.tp]\nselect = { lr = [1.0] }"),
    lambda s: s.split("[methods.tp]")[0],
    lambda s: 'kind = "heat"\n' + s,
    lambda s: "extra = 1\n" + s,
])
def test_comparison_and_panel_accept_and_refuse_the_same_settings(edit, tmp_path):
    text = edit(COMPARISON)
    as_comparison = outcome(specs.load_comparison, write(tmp_path, "c", text))
    panel = outcome(specs.load_panel, write(tmp_path, "p", as_panel(text)))
    assert as_comparison[0] == panel[0]
    if as_comparison[0] == "ok":
        for (m, c), (n, p) in zip(as_comparison[1].items(), panel[1].items()):
            assert m == n and c == p  # the short budget sets the comparison's 20 iterations
    else:
        assert as_comparison[1].split(" (allowed in")[0] == panel[1].split(" (allowed in")[0]


def test_none_is_off_in_files_and_on_the_command_line(tmp_path):
    table = specs.load_comparison(write(tmp_path, "c", COMPARISON.replace(
        "lr = 0.1", 'lr = 0.1\nstop_at_accuracy = "none"\nclip = "NONE"')))
    tp = specs.configs(table, None, dict([key_value("divergence-factor=none")]))["tp"]
    assert (tp.stop_at_accuracy, tp.clip, tp.divergence_factor) == (None, None, None)
    assert specs.configs(table)["bp"].divergence_factor == 2.0  # the default where "none" is not given


def test_panel_and_comparison_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) out \(allowed in a panel"):
        specs.load(write(tmp_path, "p", as_panel('out = "runs/x"\n' + COMPARISON)))
    with pytest.raises(ValueError, match="needs \\[budgets.short\\]"):
        specs.load(write(tmp_path, "p", 'figure = "fig3"\n[budgets.full]\n' + COMPARISON))
    with pytest.raises(ValueError, match="figure must be one of"):
        specs.load(write(tmp_path, "p", as_panel(COMPARISON, "fig9")))
    with pytest.raises(ValueError, match="is a figure panel: run it with targetprop reproduce fig3"):
        specs.load_comparison(write(tmp_path, "p", as_panel(COMPARISON)))
    with pytest.raises(ValueError, match="is not a figure panel"):
        specs.load_panel(write(tmp_path, "c", COMPARISON))
    with pytest.raises(ValueError, match="no experiment file 'nope'"):
        specs.load("nope")
    grid = 'kind = "grid"\n[grid]\nx = "speed"\nx_values = [1, 2]\n'
    with pytest.raises(ValueError, match=r"\[grid\]: unknown setting 'speed'"):
        specs.load(write(tmp_path, "g", grid + COMPARISON))
    assert specs.load(write(tmp_path, "g", grid.replace("speed", "task.k") + COMPARISON))["kind"] == "grid"


@pytest.mark.parametrize("text, expected", [
    ("iterations=100", ("iterations", 100)),
    ("lr=1e-3", ("lr", 1e-3)),
    ("task.k=4", ("task.k", 4)),
    ("rule=bp", ("rule", "bp")),
    ("nesterov=true", ("nesterov", True)),
    ("clip=null", ("clip", None)),
    ("stop-at-accuracy=none", ("stop_at_accuracy", "none")),
    ("label=a=b", ("label", "a=b")),
    ("label=", ("label", "")),
    ("task.data_dir=/data/x", ("task.data_dir", "/data/x")),
])
def test_key_value(text, expected):
    assert key_value(text) == expected


@pytest.mark.parametrize("text", ["iterations", "=3", ""])
def test_key_value_refuses_a_missing_key_or_sign(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        key_value(text)


def test_set_value_reaches_fields_and_options():
    values = specs.set_value({"task_options": {"k": 1}}, "task.normalize", "scale")
    values = specs.set_value(values, "layer.inverse_lr", 1e-3)
    assert specs.set_value(values, "clip", "none") == {"task_options": {"k": 1, "normalize": "scale"},
                                                       "layer_options": {"inverse_lr": 1e-3}, "clip": None}
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        specs.set_value({}, "nope", 1)
