"""Real-series tasks (tasks/sequences.py, tasks/ucr.py) on tiny generated .ts files: normalization
from the training split only, the missing-value rule, PackedSequence batches for variable lengths,
the seeded epoch order, the registry and the model reading packed batches."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from datafiles import ts_text
from targetprop.tasks.datasets import DatasetError
from targetprop.tasks.registry import TASKS, make_task, task_options
from targetprop.tasks.sequences import SequenceData, SequenceTask, channel_normalization
from targetprop.tasks.ucr import UCR_TASKS_SETS, load_ucr
from targetprop.training.models import SequenceModel


def data(train, test, labels=None, test_labels=None, classes=2):
    t = [torch.tensor(s, dtype=torch.float64) for s in train]
    v = [torch.tensor(s, dtype=torch.float64) for s in test]
    labels = torch.tensor(labels if labels is not None else [i % classes for i in range(len(t))])
    test_labels = torch.tensor(test_labels if test_labels is not None else [i % classes for i in range(len(v))])
    return SequenceData("toy", t, labels, v, test_labels, classes)


def test_normalization_uses_the_training_split_only():
    # channel 0: train steps 1, 3, 5, 7 (mean 4, std sqrt(5)); channel 1 constant 2 -> only centred
    d = data([[[1, 2], [3, 2]], [[5, 2], [7, 2]]], [[[100, 0], [4, 2]]])
    shift, scale = channel_normalization(d.train, "standardize")
    assert shift.tolist() == [4.0, 2.0] and torch.allclose(scale, torch.tensor([5 ** 0.5, 1.0], dtype=torch.float64))
    task = SequenceTask(d, batch_size=2)
    (x, _), = task.eval_batches("test")
    assert torch.allclose(x, torch.tensor([[[96 / 5 ** 0.5, -2.0], [0.0, 0.0]]]))  # test values not in the statistics
    none = SequenceTask(d, normalize="none")
    assert none.eval_batches("test")[0][0].tolist() == [[[100.0, 0.0], [4.0, 2.0]]]


def test_missing_values_become_the_channel_mean():
    nan = float("nan")
    d = data([[[1.0], [nan], [3.0]], [[5.0], [7.0], [nan]]], [[[nan], [4.0], [4.0]]])
    shift, scale = channel_normalization(d.train, "standardize")
    assert shift.tolist() == [4.0] and scale.tolist() == [5 ** 0.5]  # NaN left out of mean and std
    (x, _), = SequenceTask(d).eval_batches("test")
    assert x[0, :, 0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="channel.*0 of the training split have no value"):
        channel_normalization([torch.full((2, 1), nan, dtype=torch.float64)], "standardize")


def test_variable_lengths_are_packed_with_each_series_own_end():
    d = data([[[1.0]], [[2.0], [3.0]], [[4.0], [5.0], [6.0]]], [[[1.0]], [[1.0], [2.0]]], labels=[0, 1, 0])
    task = SequenceTask(d, batch_size=3, normalize="none")
    assert task.packed and task.length == 3 and task.input_size == 1
    x, y = task.train_batch(0)
    assert isinstance(x, PackedSequence)
    padded, lengths = pad_packed_sequence(x, batch_first=True)
    series = {tuple(padded[i, :n, 0].tolist()): int(y[i]) for i, n in enumerate(lengths.tolist())}
    assert series == {(1.0,): 0, (2.0, 3.0): 1, (4.0, 5.0, 6.0): 0}  # batch order of y kept


def test_equal_lengths_give_a_plain_tensor_and_an_epoch_sees_each_series_once():
    d = data([[[float(i)], [float(i)]] for i in range(5)], [[[0.0], [0.0]]], classes=5, labels=list(range(5)))
    task = SequenceTask(d, batch_size=2, seed=3, normalize="none")
    x, y = task.train_batch(0)
    assert not task.packed and x.shape == (2, 2, 1) and x.dtype == torch.float32
    assert torch.equal(x[:, 0, 0].long(), y)
    firsts = torch.cat([task.train_batch(i)[1] for i in range(5)])  # 10 positions = two epochs
    assert sorted(firsts[:5].tolist()) == list(range(5)) and sorted(firsts[5:].tolist()) == list(range(5))
    again = SequenceTask(d, batch_size=2, seed=3, normalize="none")
    assert torch.equal(again.train_batch(4)[1], task.train_batch(4)[1])
    assert not torch.equal(torch.cat([SequenceTask(d, batch_size=2, seed=4).train_batch(i)[1] for i in range(5)]),
                           firsts)


def test_eval_subsets_are_fixed_and_sizes_checked():
    d = data([[[float(i)]] for i in range(6)], [[[float(i)]] for i in range(4)])
    task = SequenceTask(d, test_size=3, train_eval_size=2, eval_batch_size=2, normalize="none")
    test = task.eval_batches("test")
    assert [b[0].shape[0] for b in test] == [2, 1]
    assert test[0][0][:, 0, 0].tolist() == SequenceTask(d, test_size=3, seed=9, normalize="none"
                                                        ).eval_batches("test")[0][0][:2, 0, 0].tolist()
    assert sum(b[0].shape[0] for b in task.eval_batches("train")) == 2
    with pytest.raises(ValueError, match="test_size=5 exceeds the 4 test series of toy: set --test-size N"):
        SequenceTask(d, test_size=5)


def write_ucr(root, name, train_cases, test_cases, classes="a b"):
    folder = root / "ucr" / name
    folder.mkdir(parents=True)
    (folder / f"{name}_TRAIN.ts").write_text(ts_text(train_cases, classes=classes, problem=name))
    (folder / f"{name}_TEST.ts").write_text(ts_text(test_cases, classes=classes, problem=name))


CASES = [([[1, 2], [3, 4]], "a"), ([[5, 6, 7], [8, 9, 10]], "b"), ([[0, 1], [1, 0]], "b")]


def test_ucr_task_through_the_registry(tmp_path):
    write_ucr(tmp_path, "JapaneseVowels", CASES, CASES[:2])
    assert set(UCR_TASKS_SETS) <= set(TASKS) and "data_dir" in task_options("ucr-japanese-vowels")
    task = make_task("ucr-japanese-vowels", data_dir=str(tmp_path), seed=1, batch_size=2, test_size=None)
    assert (task.name, task.input_size, task.output_size, task.length, task.packed) == (
        "ucr-japanese-vowels", 2, 2, 3, True)
    assert task.data.classes == ("a", "b") and task.data.train_labels.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="does not take option.*length"):
        make_task("ucr-japanese-vowels", data_dir=str(tmp_path), length=5)


def test_ucr_split_mismatch_and_absent_files(tmp_path):
    write_ucr(tmp_path, "GunPoint", [([[1, 2]], "a")], [([[1, 2]], "a")], classes="a b")
    (tmp_path / "ucr" / "GunPoint" / "GunPoint_TEST.ts").write_text(ts_text([([[1, 2]], "a")], classes="a c"))
    with pytest.raises(DatasetError, match="class labels a c, but .*GunPoint_TRAIN.ts declares a b"):
        load_ucr("GunPoint", tmp_path)
    with pytest.raises(DatasetError, match=r"targetprop data fetch ucr:PLAID --dir"):
        load_ucr("PLAID", tmp_path)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_the_trainer_model_reads_packed_batches_at_each_series_end(cell, tmp_path):
    write_ucr(tmp_path, "JapaneseVowels", CASES, CASES)
    task = make_task("ucr-japanese-vowels", data_dir=str(tmp_path), batch_size=3)
    x, y = task.train_batch(0)
    torch.manual_seed(0)
    model = SequenceModel(cell, task.input_size, 8, task.output_size, rule="linearized")
    out = model(x)
    padded, lengths = pad_packed_sequence(x, batch_first=True)
    one_by_one = torch.cat([model(padded[i:i + 1, :n]) for i, n in enumerate(lengths.tolist())])
    assert out.shape == (3, 2) and torch.allclose(out, one_by_one, atol=1e-6)
    torch.nn.functional.cross_entropy(out, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
