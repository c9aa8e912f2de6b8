"""The ``file`` task (tasks/userfile.py): a user's .npz or .pt file read into the two splits, with a
one-line error naming the file and the key for each thing wrong with it."""
import re

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from targetprop.tasks.datasets import DatasetError
from targetprop.tasks.registry import make_task
from targetprop.tasks.userfile import load_file


def npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def pt(tmp_path, name="data.pt", **content):
    path = tmp_path / name
    torch.save(content, path)
    return path


def test_npz_with_padding_lengths_and_a_test_split(tmp_path):
    x = np.zeros((3, 4, 2))
    x[0, :2] = [[1, 2], [3, 4]]
    x[1] = [[1, 1]] * 4
    x[2, :1] = [[5, 6]]
    x[0, 2:] = np.nan  # padding is never read
    path = npz(tmp_path, x=x, y=np.array([0, 2, 1]), lengths=np.array([2, 4, 1]),
               x_test=np.ones((2, 3, 2)), y_test=np.array([1, 1]))
    d = load_file(path)
    assert [s.shape for s in d.train] == [(2, 2), (4, 2), (1, 2)] and d.num_classes == 3
    assert d.train[0].tolist() == [[1, 2], [3, 4]] and d.train_labels.tolist() == [0, 2, 1]
    assert len(d.test) == 2 and d.test[0].shape == (3, 2)
    task = make_task("file", path=str(path), batch_size=2, seed=1)
    x, y = task.train_batch(0)
    assert isinstance(x, PackedSequence) and task.length == 4 and task.input_size == 2 and task.output_size == 3


def test_pt_list_of_variable_series_and_a_seeded_split(tmp_path):
    series = [torch.full((i + 1, 1), float(i)) for i in range(10)]
    path = pt(tmp_path, x=series, y=torch.arange(10) % 2)
    d = load_file(path, test_fraction=0.3, split_seed=5)
    assert len(d.train) == 7 and len(d.test) == 3
    held = sorted(int(s[0, 0]) for s in d.test)
    assert held == sorted(int(s[0, 0]) for s in load_file(path, test_fraction=0.3, split_seed=5).test)
    assert held != sorted(int(s[0, 0]) for s in load_file(path, test_fraction=0.3, split_seed=6).test)
    assert sorted(held + [int(s[0, 0]) for s in d.train]) == list(range(10))
    assert all(s.shape[0] == int(s[0, 0]) + 1 for s in d.train + d.test)  # each series kept whole
    assert d.test_labels.tolist() == [v % 2 for v in sorted(held)]


def test_two_dimensional_x_is_one_channel_and_equal_lengths_stay_a_tensor(tmp_path):
    path = npz(tmp_path, x=np.arange(12.0).reshape(4, 3), y=np.array([0, 1, 0, 1]))
    task = make_task("file", path=str(path), batch_size=2, normalize="none", test_fraction=0.25)
    x, _ = task.train_batch(0)
    assert isinstance(x, torch.Tensor) and x.shape == (2, 3, 1)


BAD = [
    (dict(y=np.array([0])), "missing key 'x' (found: y)"),
    (dict(x=np.zeros((2, 3, 1))), "missing key 'y'"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1]), z=np.zeros(1)), "unknown key(s) z"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1]), x_test=np.zeros((1, 3, 1))), "x_test and y_test go together"),
    (dict(x=np.zeros(3), y=np.array([0, 1])), "x must be an array (N, T, d) or (N, T)"),
    (dict(x=np.zeros((2, 0, 1)), y=np.array([0, 1])), "x is empty"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1, 1])), "y has 3 entries for 2 series"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0.0, 1.0])), "y must hold integers, got dtype torch.float64"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, -1])), "y[1] = -1: class labels must be integers"),
    (dict(x=np.array([[[0.0], [np.inf]], [[0.0], [0.0]]]), y=np.array([0, 1])), "x: series 0 holds NaN or inf (at step 1)"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1]), lengths=np.array([3, 4])),
     "lengths[1] = 4 is out of range: lengths must lie in 1..3"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1]), lengths=np.array([0, 2])), "lengths[0] = 0 is out of range"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1]), lengths=np.array([1.0, 2.0])), "lengths must hold integers"),
    (dict(x=np.zeros((2, 3, 1)), y=np.array([0, 1]), x_test=np.zeros((1, 3, 2)), y_test=np.array([0])),
     "x_test has 2 feature(s) per step, x has 1"),
    (dict(x=np.zeros((1, 3, 1)), y=np.array([0])), "1 series cannot be split at test_fraction=0.2"),
    (dict(x=np.array(["a", "b"]), y=np.array([0, 1])), "key 'x' has dtype <U1, not numbers"),
]


@pytest.mark.parametrize("arrays, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_npz_is_a_one_line_error_naming_the_file(tmp_path, arrays, message):
    path = npz(tmp_path, **arrays)
    with pytest.raises(DatasetError) as err:
        load_file(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_bad_files_of_other_kinds(tmp_path):
    ragged = tmp_path / "ragged.npz"
    np.savez(ragged, x=np.array([np.zeros((2, 1)), np.zeros((3, 1))], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="object array .*pad x and give lengths, or use a .pt file"):
        load_file(ragged)
    with pytest.raises(DatasetError, match="must end in .npz or .pt"):
        load_file(npz(tmp_path, name="data.npy.npz", x=np.zeros(1)).rename(tmp_path / "data.csv"))
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'none.npz'}: no such file")):
        load_file(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        load_file(tmp_path / "junk.npz")
    with pytest.raises(DatasetError, match="must hold a dict keyed by name"):
        load_file(torch.save([1, 2], tmp_path / "list.pt") or tmp_path / "list.pt")
    path = pt(tmp_path, x=[torch.zeros(2, 1), torch.zeros(2, 3)], y=torch.tensor([0, 1]))
    with pytest.raises(DatasetError, match=r"the series of x have different feature counts \[1, 3\]"):
        load_file(path)
    path = pt(tmp_path, x=[torch.zeros(2, 1), torch.zeros(3, 1)], y=torch.tensor([0, 1]), lengths=torch.tensor([2, 2]))
    with pytest.raises(DatasetError, match="lengths disagrees with the lengths of the series in the list x"):
        load_file(path)
    with pytest.raises(ValueError, match="task 'file' needs the data file: --task-option path="):
        make_task("file")


def test_file_task_runs_through_train(tmp_path):
    from targetprop.training.config import TrainConfig
    from targetprop.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    path = npz(tmp_path, x=torch.randn(20, 5, 2, generator=g).numpy(), y=(torch.arange(20) % 2).numpy())
    config = TrainConfig(task="file", task_options={"path": str(path)}, iterations=3, eval_every=3,
                         hidden_size=4, batch_size=4, rule="linearized")
    summary = Trainer(config).run()
    assert summary["iterations"] == 3 and 0 <= summary["final_test_accuracy"] <= 1
