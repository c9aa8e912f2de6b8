"""Synthetic tasks (as defined in the docstring of targetprop/tasks/synthetic.py) and the task
registry: shapes, labels, marker positions, seeding, accuracy criteria, bad input."""
import pytest
import torch

from targetprop.tasks import Task
from targetprop.tasks.registry import TASKS, make_task, register_task
from targetprop.tasks.synthetic import Adding, TemporalOrder

X, Y = 4, 5  # symbol indices of the markers


def marker_steps(x: torch.Tensor) -> list[list[int]]:
    """1-based steps holding X or Y, per sequence of one-hot temporal-order input."""
    symbols = x.argmax(-1)
    return [((row >= X).nonzero().flatten() + 1).tolist() for row in symbols]


# ---------------------------------------------------------------------------- temporal order


@pytest.mark.parametrize("bits,classes", [(1, 4), (3, 8)])
def test_temporal_order_shapes_and_one_hot(bits, classes):
    task = TemporalOrder(60, bits=bits, seed=3, batch_size=7)
    x, y = task.train_batch(0)
    assert x.shape == (7, 60, 6) and x.dtype == torch.float32
    assert y.shape == (7,) and y.dtype == torch.int64
    assert torch.equal(x.sum(-1), torch.ones(7, 60))  # exactly one symbol per step
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert (task.input_size, task.output_size, task.length, task.loss) == (6, classes, 60, "cross_entropy")
    assert isinstance(task, Task)


@pytest.mark.parametrize("length,bits,ranges", [
    (60, 1, [(6, 12), (24, 30)]),
    (60, 3, [(6, 12), (24, 30), (36, 42)]),
    (10, 3, [(1, 2), (4, 5), (6, 7)]),
    (120, 1, [(12, 24), (48, 60)]),
])
def test_temporal_order_markers_fill_their_ranges(length, bits, ranges):
    task = TemporalOrder(length, bits=bits, test_size=3000, eval_batch_size=3000, seed=0)
    (x, y), = task.eval_batches("test")
    steps = torch.tensor(marker_steps(x))
    assert steps.shape == (3000, len(ranges))  # exactly one marker per range
    for k, (lo, hi) in enumerate(ranges):
        assert steps[:, k].min().item() == lo and steps[:, k].max().item() == hi
    # all the other steps are a, b, c or d, each about a quarter of the time
    other = x.argmax(-1)[x.argmax(-1) < X]
    freq = torch.bincount(other, minlength=4) / other.numel()
    assert torch.all((freq - 0.25).abs() < 0.01), freq


@pytest.mark.parametrize("bits", [1, 3])
def test_temporal_order_label_reads_the_markers_and_is_balanced(bits):
    task = TemporalOrder(30, bits=bits, test_size=4000, eval_batch_size=4000)
    (x, y), = task.eval_batches("test")
    symbols = x.argmax(-1)
    marks = torch.stack([row[row >= X] - X for row in symbols])  # 0 = X, 1 = Y, in time order
    expected = sum(marks[:, k] << (marks.shape[1] - 1 - k) for k in range(marks.shape[1]))
    assert torch.equal(y, expected)  # XX=0, XY=1, YX=2, YY=3 (binary, first marker first)
    counts = torch.bincount(y, minlength=2 ** marks.shape[1]).float()
    assert counts.numel() == 2 ** marks.shape[1]
    assert torch.all((counts / counts.sum() - 1 / counts.numel()).abs() < 0.2 / counts.numel()), counts


def test_temporal_order_correct_counts_argmax_hits():
    task = TemporalOrder(10)
    out = torch.tensor([[0.1, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert task.correct(out, torch.tensor([1, 0, 2])).item() == 2


# ---------------------------------------------------------------------------- adding


@pytest.mark.parametrize("length,ranges", [(30, [(1, 3), (4, 15)]), (10, [(1, 1), (2, 5)]), (100, [(1, 10), (11, 50)])])
def test_adding_markers_target_and_shapes(length, ranges):
    task = Adding(length, test_size=2000, eval_batch_size=2000, seed=1)
    (x, y), = task.eval_batches("test")
    assert x.shape == (2000, length, 2) and y.shape == (2000, 1)
    assert (task.input_size, task.output_size, task.loss) == (2, 1, "mse")
    values, markers = x[..., 0], x[..., 1]
    assert 0 <= values.min() and values.max() <= 1 and abs(values.mean().item() - 0.5) < 0.01
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    steps = torch.stack([m.nonzero().flatten() + 1 for m in markers])
    assert steps.shape == (2000, 2)
    for k, (lo, hi) in enumerate(ranges):
        assert steps[:, k].min().item() == lo and steps[:, k].max().item() == hi
    torch.testing.assert_close(y[:, 0], (values * markers).sum(1) / 2)


def test_adding_criteria():
    y = torch.zeros(4, 1)
    out = torch.tensor([[0.1], [-0.19], [0.25], [0.03]])
    # squared error < 0.04 (the paper): |e| < 0.2
    assert Adding(10).correct(out, y).item() == 3
    # absolute error < 0.04 (the authors' code)
    assert Adding(10, criterion="absolute").correct(out, y).item() == 1


# ---------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("factory", [lambda **k: TemporalOrder(20, **k), lambda **k: Adding(20, **k),
                                     lambda **k: TemporalOrder(20, bits=3, **k)])
def test_batches_are_a_function_of_seed_and_iteration(factory):
    a, b, other = factory(seed=5), factory(seed=5), factory(seed=6)
    for it in (0, 7, 123456):
        xa, ya = a.train_batch(it)
        xb, yb = b.train_batch(it)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.train_batch(7)[0], a.train_batch(7)[0])  # no hidden state
    assert not torch.equal(a.train_batch(0)[0], a.train_batch(1)[0])
    assert not torch.equal(a.train_batch(0)[0], other.train_batch(0)[0])
    # the test set is shared by seeds (same test_seed), fixed, and differs from training data
    (ta, _), = a.eval_batches("test")
    (to, _), = other.eval_batches("test")
    assert torch.equal(ta, to) and torch.equal(ta, a.eval_batches("test")[0][0])
    (tr, _), = a.eval_batches("train")
    (tr_other, _), = other.eval_batches("train")
    assert not torch.equal(tr, ta) and not torch.equal(tr, tr_other)
    (tn, _), = factory(seed=5, test_seed=1).eval_batches("test")
    assert not torch.equal(tn, ta)


def test_eval_batches_split_and_sizes():
    task = TemporalOrder(10, test_size=250, train_eval_size=120, eval_batch_size=100)
    assert [x.shape[0] for x, _ in task.eval_batches("test")] == [100, 100, 50]
    assert [y.shape[0] for _, y in task.eval_batches("train")] == [100, 20]
    task64 = Adding(10, dtype=torch.float64, batch_size=3)
    assert task64.train_batch(0)[0].dtype == torch.float64 and task64.train_batch(0)[1].dtype == torch.float64


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("build,match", [
    (lambda: TemporalOrder(0), "length"),
    (lambda: TemporalOrder(4), "length=4 is too short"),
    (lambda: Adding(9), "length=9 is too short"),
    (lambda: TemporalOrder(10, bits=2), "bits"),
    (lambda: TemporalOrder(10, batch_size=0), "batch_size"),
    (lambda: TemporalOrder(10, seed=-1), "seed"),
    (lambda: Adding(10, criterion="relative"), "criterion"),
    (lambda: Adding(10, dtype=torch.int32), "dtype"),
    (lambda: TemporalOrder(10).train_batch(-1), "iteration"),
    (lambda: TemporalOrder(10).eval_batches("valid"), "split"),
])
def test_bad_task_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------- registry


def test_registry_builds_tasks_by_name():
    assert {"temporal-order", "temporal-order-3bit", "adding"} <= set(TASKS)
    t = make_task("temporal-order-3bit", length=20, seed=2, batch_size=None)
    assert t.name == "temporal-order-3bit" and t.output_size == 8 and t.batch_size == 20
    a = make_task("adding", length=30, criterion="absolute")
    assert a.name == "adding" and a.criterion == "absolute"
    with pytest.raises(ValueError, match="unknown task 'mnistt'.*temporal-order"):
        make_task("mnistt")
    with pytest.raises(ValueError, match="does not take option.*\\bk\\b"):
        make_task("adding", k=4)


def test_register_task_adds_a_factory():
    register_task("tiny-order", lambda **kw: TemporalOrder(10, **kw))
    try:
        assert make_task("tiny-order", seed=1).length == 10
        with pytest.raises(ValueError, match="does not take an option"):
            make_task("tiny-order", bogus=1)
    finally:
        del TASKS["tiny-order"]
    with pytest.raises(ValueError, match="callable"):
        register_task("x", 3)
