"""Pixel-by-pixel tasks: pixel order, chunking, permutation, normalization, batches by seed and iteration."""
import pytest
import torch

from datafiles import random_cifar, random_mnist, write_cifar, write_mnist
from targetprop.tasks.datasets import ImageData
from targetprop.tasks.base import Task
from targetprop.tasks.images import (IMAGE_TASKS, PixelSequenceTask, channel_stats, cifar10, fashion_mnist, mnist,
                                     permuted_mnist)
from targetprop.training.trainer import Trainer, TrainConfig

D64 = torch.float64


def image_data(images, labels=None, test=None, name="toy"):
    """ImageData from uint8 training images; the test split is a copy unless given."""
    labels = torch.arange(images.shape[0]) % 10 if labels is None else labels
    test = images if test is None else test
    return ImageData(name, images, labels, test, torch.arange(test.shape[0]) % 10)


def indexed_images(n, shape=(2, 2)):
    """Image ``i`` filled with the value ``i``, so a batch shows which images it holds."""
    return torch.arange(n, dtype=torch.uint8)[:, None, None].expand(n, *shape).contiguous()


def one_sequence(task, image):
    return task.sequences(image[None])[0]


# ---------------------------------------------------------------- pixel order, chunking, permutation
def test_mnist_image_is_read_row_major():
    image = (torch.arange(784) % 251).to(torch.uint8).reshape(28, 28)  # value of (r, c) is (28r + c) % 251
    task = PixelSequenceTask(image_data(image[None]), normalize="none", test_size=None, train_eval_size=None)
    seq = one_sequence(task, image)
    assert task.length == 784 and task.input_size == 1 and seq.shape == (784, 1)
    assert seq[:, 0].tolist() == [float(v % 251) for v in range(784)]
    assert seq[30, 0] == image[1, 2]  # step 30 = row 1, column 2


@pytest.mark.parametrize("k", [1, 2, 4, 16, 56, 196])
def test_k_pixels_per_step(k):
    image = (torch.arange(784) % 251).to(torch.uint8).reshape(28, 28)
    task = PixelSequenceTask(image_data(image[None]), k=k, normalize="none", test_size=None, train_eval_size=None)
    seq = one_sequence(task, image)
    assert task.length == 784 // k and task.input_size == k and seq.shape == (784 // k, k)
    t, j = 3, k - 1
    assert seq[t, j] == (t * k + j) % 251  # step t holds pixels t·k … t·k + k − 1


def test_cifar_image_is_read_channel_by_channel():
    c, r, w = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    image = (10 * c + (32 * r + w) % 10).to(torch.uint8)  # channel in the tens, position in the units
    task = PixelSequenceTask(image_data(image[None]), k=4, normalize="none", test_size=None, train_eval_size=None)
    seq = one_sequence(task, image)
    p = torch.arange(3072)
    assert task.length == 768 and seq.shape == (768, 4)
    assert torch.equal(seq.reshape(-1), (10 * (p // 1024) + (p % 1024) % 10).float())


def test_small_image_exact_sequence():
    image = torch.tensor([[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]], dtype=torch.uint8)  # (C=2, H=2, W=3)
    task = PixelSequenceTask(image_data(image[None]), k=3, normalize="none", test_size=None, train_eval_size=None)
    assert one_sequence(task, image).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_permutation_then_chunking():
    image = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    plain = PixelSequenceTask(image_data(image[None]), normalize="none", test_size=None, train_eval_size=None)
    perm = PixelSequenceTask(image_data(image[None]), k=2, normalize="none", permutation_seed=7,
                             test_size=None, train_eval_size=None)
    order = perm.permutation
    assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
    expected = [[float(order[2 * t]), float(order[2 * t + 1])] for t in range(6)]  # pixel i has value i
    assert one_sequence(perm, image).tolist() == expected
    assert plain.permutation is None


def test_permutation_fixed_by_its_own_seed():
    data = image_data(torch.zeros(4, 28, 28, dtype=torch.uint8))
    a = PixelSequenceTask(data, permutation_seed=3, seed=0, test_size=None, train_eval_size=None)
    b = PixelSequenceTask(data, permutation_seed=3, seed=5, test_size=None, train_eval_size=None)
    c = PixelSequenceTask(data, permutation_seed=4, test_size=None, train_eval_size=None)
    assert torch.equal(a.permutation, b.permutation)  # same task whatever the run's seed
    assert not torch.equal(a.permutation, c.permutation)
    assert sorted(a.permutation.tolist()) == list(range(784))


@pytest.mark.parametrize("k, length", [(5, 784), (3, 784), (0, 784), (1000, 784)])
def test_k_must_divide_the_length(k, length):
    data = image_data(torch.zeros(2, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=f"k={k}" if k else "k must be a positive integer") as err:
        PixelSequenceTask(data, k=k)
    if k:
        assert str(length) in str(err.value)


def test_k_must_divide_cifar_length():
    data = image_data(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="k=7 pixels per step does not divide the sequence length 3072"):
        PixelSequenceTask(data, k=7)


# ---------------------------------------------------------------- normalization
def test_scale_to_unit_interval():
    image = torch.tensor([[0, 51], [255, 102]], dtype=torch.uint8)
    task = PixelSequenceTask(image_data(image[None]), dtype=D64, test_size=None, train_eval_size=None)
    assert one_sequence(task, image)[:, 0].tolist() == [0.0, 0.2, 1.0, 0.4]


def test_standardize_per_channel_with_training_statistics():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (6, 3, 4, 4), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (2, 3, 4, 4), generator=g, dtype=torch.uint8)
    task = PixelSequenceTask(image_data(train, test=test), normalize="standardize", dtype=D64,
                             test_size=None, train_eval_size=None)
    scaled = train.to(D64) / 255
    mean = scaled.mean(dim=(0, 2, 3))
    std = scaled.std(dim=(0, 2, 3), unbiased=False)
    expected = ((test.to(D64) / 255 - mean[:, None, None]) / std[:, None, None]).reshape(2, -1, 1)
    (x, _), = task.eval_batches("test")
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    got_mean, got_std = channel_stats(train)
    torch.testing.assert_close(got_mean, mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_std, std, rtol=1e-12, atol=0)


def test_standardize_refuses_a_constant_channel():
    with pytest.raises(ValueError, match="channel 0 of the training images is constant"):
        PixelSequenceTask(image_data(torch.zeros(2, 28, 28, dtype=torch.uint8)), normalize="standardize")


# ---------------------------------------------------------------- batches by seed and iteration
def test_batches_are_a_function_of_seed_and_iteration():
    data = image_data(indexed_images(40))
    a = PixelSequenceTask(data, seed=1, test_size=None, train_eval_size=None)
    b = PixelSequenceTask(data, seed=1, test_size=None, train_eval_size=None)
    c = PixelSequenceTask(data, seed=2, test_size=None, train_eval_size=None)
    later = [b.train_batch(i) for i in (9, 4, 0)]  # a resumed run asks out of order
    for i, (x, y) in zip((9, 4, 0), later):
        xa, ya = a.train_batch(i)
        assert torch.equal(x, xa) and torch.equal(y, ya)
        assert x.shape == (16, 4, 1) and y.dtype == torch.int64
    assert not torch.equal(a.train_indices(0), c.train_indices(0))


def test_every_training_image_once_per_epoch():
    n, batch = 40, 16  # an epoch is 2.5 batches: batches straddle epochs
    task = PixelSequenceTask(image_data(indexed_images(n)), batch_size=batch, normalize="none",
                             test_size=None, train_eval_size=None)
    seen = torch.cat([task.train_batch(i)[0][:, 0, 0] for i in range(5)]).long()  # image i holds value i
    assert seen.shape == (80,)
    assert sorted(seen[:40].tolist()) == list(range(n)) and sorted(seen[40:].tolist()) == list(range(n))
    assert not torch.equal(seen[:40], seen[40:])  # a new order each epoch
    assert torch.equal(seen[:40], task.epoch_order(0)) and torch.equal(seen[40:], task.epoch_order(1))
    labels = torch.cat([task.train_batch(i)[1] for i in range(5)])
    assert torch.equal(labels, seen % 10)  # labels travel with their images


def test_batch_larger_than_the_training_set():
    task = PixelSequenceTask(image_data(indexed_images(3)), batch_size=7, normalize="none",
                             test_size=None, train_eval_size=None)
    seen = task.train_batch(0)[0][:, 0, 0].long().tolist()
    assert sorted(seen[:3]) == sorted(seen[3:6]) == [0, 1, 2] and seen[6] in (0, 1, 2)


def test_iteration_must_be_a_non_negative_int():
    task = PixelSequenceTask(image_data(indexed_images(4)), test_size=None, train_eval_size=None)
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="iteration"):
            task.train_batch(bad)


# ---------------------------------------------------------------- evaluation, protocol
def test_fixed_evaluation_subsets():
    train, test = indexed_images(50), indexed_images(30)
    data = image_data(train, test=test)
    task = PixelSequenceTask(data, seed=0, normalize="none", test_size=12, train_eval_size=20, eval_batch_size=5)
    other = PixelSequenceTask(data, seed=9, normalize="none", test_size=12, train_eval_size=20, eval_batch_size=5)
    batches = task.eval_batches("test")
    assert [x.shape[0] for x, _ in batches] == [5, 5, 2]
    ids = torch.cat([x[:, 0, 0] for x, _ in batches]).long()
    assert len(set(ids.tolist())) == 12 and ids.tolist() == sorted(ids.tolist()) and ids.max() < 30
    assert torch.equal(torch.cat([y for _, y in batches]), ids % 10)
    for split in ("train", "test"):  # the same images for every call and every seed
        for (x1, y1), (x2, y2), (x3, y3) in zip(task.eval_batches(split), task.eval_batches(split),
                                                other.eval_batches(split)):
            assert torch.equal(x1, x2) and torch.equal(x1, x3) and torch.equal(y1, y3)
    assert sum(x.shape[0] for x, _ in task.eval_batches("train")) == 20
    full = PixelSequenceTask(data, test_size=None, train_eval_size=None, eval_batch_size=100)
    assert [x.shape[0] for x, _ in full.eval_batches("test")] == [30]


def test_evaluation_sizes_and_split_are_checked():
    data = image_data(indexed_images(5))
    with pytest.raises(ValueError, match=r"test_size=1000 exceeds the 5 test images available: set --test-size N "
                                         r"\(test_size\) to at most 5"):
        PixelSequenceTask(data, train_eval_size=None)
    with pytest.raises(ValueError, match=r"train_eval_size=1000 exceeds the 5 training images available: set "
                                         r"--task-option train_eval_size=N \(task_options.train_eval_size\) to at most 5"):
        PixelSequenceTask(data, test_size=5)
    with pytest.raises(ValueError, match=r"set --task-option k=N \(task_options.k\) to a divisor of 784"):
        PixelSequenceTask(image_data(indexed_images(5, (28, 28))), k=5)
    task = PixelSequenceTask(data, test_size=5, train_eval_size=5)
    with pytest.raises(ValueError, match="split"):
        task.eval_batches("valid")


def test_task_protocol_and_correct():
    task = PixelSequenceTask(image_data(indexed_images(5, (28, 28))), k=4, test_size=None, train_eval_size=None)
    assert isinstance(task, Task)
    assert (task.name, task.input_size, task.length, task.output_size, task.loss) == ("toy", 4, 196, 10,
                                                                                      "cross_entropy")
    output = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    assert task.correct(output, torch.tensor([1, 1, 2])).item() == 2
    assert "k=4" in repr(task)


# ---------------------------------------------------------------- named tasks on files
def test_named_tasks_from_files(tmp_path):
    write_mnist(tmp_path / "mnist", random_mnist(n_train=6, n_test=4), gz=True)
    write_mnist(tmp_path / "fashion-mnist", random_mnist(n_train=6, n_test=4, seed=1))
    options = dict(k=4, test_size=4, train_eval_size=6, batch_size=3)
    tasks = [mnist(tmp_path, **options), permuted_mnist(tmp_path, **options), fashion_mnist(tmp_path, **options)]
    assert [t.name for t in tasks] == ["mnist", "permuted-mnist", "fashion-mnist"]
    assert tasks[0].permutation is None and tasks[1].permutation is not None
    x, y = tasks[0].train_batch(0)
    assert x.shape == (3, 196, 4) and y.shape == (3,)
    assert sorted(IMAGE_TASKS) == ["cifar10", "fashion-mnist", "mnist", "permuted-mnist"]


def test_raw_pixels_are_refused_for_tp_and_scaled_ones_train(tmp_path):
    """Raw bytes (normalize none) saturate tanh exactly at the first step: TP's inverse is undefined
    there (a NaN direction at iteration 0), so TP rules refuse them; the default scaling trains."""
    write_mnist(tmp_path, random_mnist(n_train=40, n_test=20))
    options = {"data_dir": str(tmp_path), "train_eval_size": 40}
    with pytest.raises(ValueError, match="normalize='none' feeds raw pixel values .* use normalize=scale"):
        TrainConfig(task="mnist", task_options={**options, "normalize": "none"})
    assert TrainConfig(task="mnist", rule="bp", task_options={**options, "normalize": "none"}).rule == "bp"
    for cell in ("rnn", "gru"):  # the default TP settings on generated images: a finite direction
        summary = Trainer(TrainConfig(task="mnist", cell=cell, iterations=2, eval_every=1, test_size=20,
                                      task_options=options)).run()
        assert summary["status"] == "completed" and summary["iterations"] == 2, summary["message"]


def test_cifar10_task_from_files(tmp_path):
    pytest.importorskip("numpy", reason="writing CIFAR-10 test pickles needs numpy (reading does not)")
    write_cifar(tmp_path / "cifar-10-batches-py", random_cifar())
    task = cifar10(tmp_path, test_size=2, train_eval_size=10, normalize="standardize")
    x, y = task.train_batch(0)
    assert task.name == "cifar10" and task.length == 3072 and x.shape == (16, 3072, 1)
