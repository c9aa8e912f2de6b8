"""Data readers: IDX (MNIST, Fashion-MNIST) and CIFAR-10 pickles, good files and bad ones."""
import gzip
import pickle
import struct

import pytest
import torch

from datafiles import (CIFAR_TRAIN, cifar_pickle, idx_bytes, random_cifar, random_mnist,
                       write_bytes, write_cifar, write_mnist)
from helpers import require_data
from targetprop.tasks import datasets
from targetprop.tasks.datasets import (DATA_ENV, FASHION_MNIST_DIR, DatasetError, load_cifar10, load_fashion_mnist,
                                 load_mnist, read_cifar_batch, read_idx)


def assert_mnist_equal(data, arrays):
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert torch.equal(images, arrays[split, "images"])
        assert torch.equal(labels, arrays[split, "labels"].long())


# ---------------------------------------------------------------- IDX: good files
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    arrays = random_mnist()
    write_mnist(tmp_path, arrays, gz=gz)
    data = load_mnist(tmp_path)
    assert_mnist_equal(data, arrays)
    assert data.name == "mnist" and data.image_shape == (28, 28) and data.num_classes == 10


def test_read_idx_known_bytes(tmp_path):
    path = write_bytes(tmp_path / "a", bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    assert read_idx(path, (None, 3)).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_mnist_folder_layouts_and_env(tmp_path, monkeypatch):
    arrays = random_mnist()
    write_mnist(tmp_path / "mnist", arrays, gz=True)
    assert_mnist_equal(load_mnist(tmp_path), arrays)  # <data_dir>/mnist/
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert_mnist_equal(load_mnist(), arrays)  # from the environment variable
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(DatasetError, match=DATA_ENV):
        load_mnist()


def test_fashion_mnist_from_a_named_dir(tmp_path):
    arrays = random_mnist(seed=1)
    write_mnist(tmp_path / "fashion-mnist", arrays)
    data = load_fashion_mnist(tmp_path)
    assert_mnist_equal(data, arrays)
    assert data.name == "fashion-mnist"


# ---------------------------------------------------------------- IDX: bad files
def test_missing_directory_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte") as err:
        load_mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_file_is_named(tmp_path):
    paths = write_mnist(tmp_path, random_mnist())
    paths["test", "labels"].unlink()
    with pytest.raises(DatasetError, match="missing data file") as err:
        load_mnist(tmp_path)
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_magic(tmp_path, gz):
    arrays = random_mnist()
    paths = write_mnist(tmp_path, arrays, gz=gz)
    bad = write_bytes(paths["train", "images"], idx_bytes(arrays["train", "images"], magic=0x00000903))
    with pytest.raises(DatasetError, match="wrong IDX magic number 0x00000903, expected 0x00000803") as err:
        load_mnist(tmp_path)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, gz):
    arrays = random_mnist()
    paths = write_mnist(tmp_path, arrays, gz=gz)
    bad = write_bytes(paths["test", "images"], idx_bytes(arrays["test", "images"])[:-10])
    message = r"truncated: expected 2352 data bytes for shape \(3, 28, 28\), found 2342"
    with pytest.raises(DatasetError, match=message) as err:
        load_mnist(tmp_path)
    assert str(bad) in str(err.value)


def test_truncated_header_and_trailing_bytes(tmp_path):
    short = write_bytes(tmp_path / "short", bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DatasetError, match="shorter than an IDX header") as err:
        read_idx(short, (None, 28, 28))
    assert str(short) in str(err.value)
    long = write_bytes(tmp_path / "long", idx_bytes(torch.zeros(2, dtype=torch.uint8)) + b"\x00")
    with pytest.raises(DatasetError, match=f"{long}: has trailing bytes"):
        read_idx(long, (None,))


def test_cut_gzip_stream_and_non_gzip(tmp_path):
    arrays = random_mnist()
    paths = write_mnist(tmp_path, arrays, gz=True)
    path = paths["train", "labels"]
    path.write_bytes(gzip.compress(idx_bytes(arrays["train", "labels"]))[:-12])
    with pytest.raises(DatasetError, match="cannot read as a gzip file") as err:
        load_mnist(tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(idx_bytes(arrays["train", "labels"]))  # not gzipped, yet named .gz
    with pytest.raises(DatasetError, match=f"{path}: cannot read as a gzip file"):
        load_mnist(tmp_path)


def test_wrong_image_size(tmp_path):
    arrays = random_mnist()
    arrays["train", "images"] = torch.zeros(5, 27, 28, dtype=torch.uint8)
    paths = write_mnist(tmp_path, arrays)
    with pytest.raises(DatasetError, match=r"dimension 1 is 27, expected 28 \(shape \(5, 27, 28\)\)") as err:
        load_mnist(tmp_path)
    assert str(paths["train", "images"]) in str(err.value)


def test_image_label_count_mismatch(tmp_path):
    arrays = random_mnist()
    arrays["train", "labels"] = arrays["train", "labels"][:4]
    paths = write_mnist(tmp_path, arrays)
    with pytest.raises(DatasetError, match="4 labels, expected 5 to match the images in") as err:
        load_mnist(tmp_path)
    assert str(paths["train", "labels"]) in str(err.value) and str(paths["train", "images"]) in str(err.value)


def test_label_out_of_range(tmp_path):
    arrays = random_mnist()
    arrays["test", "labels"][1] = 10
    paths = write_mnist(tmp_path, arrays)
    with pytest.raises(DatasetError, match="label 10 out of range, expected 0..9") as err:
        load_mnist(tmp_path)
    assert str(paths["test", "labels"]) in str(err.value)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("protocol, bytes_keys, subdir", [(2, True, "cifar-10-batches-py"), (2, False, ""),
                                                          (5, False, "cifar-10-batches-py")])
def test_cifar_round_trip(tmp_path, protocol, bytes_keys, subdir):
    pytest.importorskip("numpy", reason="writing CIFAR-10 test pickles needs numpy (reading does not)")
    batches = random_cifar()
    write_cifar(tmp_path / subdir, batches, protocol=protocol, bytes_keys=bytes_keys)
    data = load_cifar10(tmp_path)
    train_rows = torch.cat([batches[name][0] for name in CIFAR_TRAIN])
    assert data.train_images.shape == (10, 3, 32, 32) and data.test_images.shape == (2, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images.reshape(10, -1), train_rows)
    assert data.train_labels.tolist() == sum((batches[name][1] for name in CIFAR_TRAIN), [])
    assert torch.equal(data.test_images.reshape(2, -1), batches["test_batch"][0])
    assert data.test_labels.tolist() == batches["test_batch"][1]
    # channels first: row value 1024·c + 32·r + w is channel c, row r, column w
    assert data.train_images[0, 2, 1, 3] == train_rows[0, 2048 + 32 + 3]


def test_cifar_fortran_ordered_array(tmp_path):
    np = pytest.importorskip("numpy", reason="writing CIFAR-10 test pickles needs numpy (reading does not)")
    rows = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = write_bytes(tmp_path / "b", cifar_pickle(np.asfortranarray(rows), [0, 1]))
    images, labels = read_cifar_batch(path)
    assert torch.equal(images.reshape(2, -1), torch.from_numpy(rows)) and labels.tolist() == [0, 1]


def python2_batch(data: bytes, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the real files (protocol 2, byte strings), opcode by opcode."""
    n = len(data) // 3072
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
             b"(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
             b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             b"\x89T" + struct.pack("<i", len(data)) + data + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(U\x04data" + array + b"U\x06labels" + label_list + b"u."


def test_cifar_python2_pickle_without_numpy(tmp_path):
    data = bytes(i % 256 for i in range(2 * 3072))
    path = write_bytes(tmp_path / "data_batch_1", python2_batch(data, [3, 9]))
    images, labels = read_cifar_batch(path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 9]
    assert images.reshape(-1).tolist() == list(data)


def cifar_bad_cases():
    """(name, bytes builder, expected message) for corrupt batches; builders need numpy lazily."""
    import numpy as np

    rows = np.zeros((2, 3072), dtype=np.uint8)
    good = pickle.dumps({"data": rows, "labels": [1, 2]}, protocol=2)
    return [
        ("garbage", lambda: b"this is not a pickle", "not a valid pickle"),
        ("truncated", lambda: good[: len(good) // 2], "not a valid pickle"),
        ("foreign global", lambda: pickle.dumps({"data": print}), "refusing to load builtins.print"),
        ("not a dict", lambda: pickle.dumps([1, 2]), "holds a list, expected a CIFAR-10 batch"),
        ("no data", lambda: pickle.dumps({"labels": [1]}), "no 'data' array"),
        ("wrong width", lambda: pickle.dumps({"data": rows[:, :3000], "labels": [1, 2]}),
         r"'data' has shape \(2, 3000\), expected \(N, 3072\)"),
        ("float data", lambda: pickle.dumps({"data": rows.astype(np.float32), "labels": [1, 2]}),
         "not uint8"),
        ("count mismatch", lambda: pickle.dumps({"data": rows, "labels": [1, 2, 3]}),
         "3 labels, expected 2 to match the images"),
        ("labels not ints", lambda: pickle.dumps({"data": rows, "labels": "ab"}), "no 'labels' list of ints"),
        ("label range", lambda: pickle.dumps({"data": rows, "labels": [1, 12]}), "labels out of range"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_cifar_bad_batch(tmp_path, case):
    pytest.importorskip("numpy", reason="writing CIFAR-10 test pickles needs numpy (reading does not)")
    name, build, message = cifar_bad_cases()[case]
    write_cifar(tmp_path, random_cifar())
    bad = write_bytes(tmp_path / "data_batch_3", build())
    with pytest.raises(DatasetError, match=message) as err:
        load_cifar10(tmp_path)
    assert str(bad) in str(err.value), name


def test_cifar_missing_files(tmp_path):
    pytest.importorskip("numpy", reason="writing CIFAR-10 test pickles needs numpy (reading does not)")
    with pytest.raises(DatasetError, match="data_batch_1 not found"):
        load_cifar10(tmp_path)
    paths = write_cifar(tmp_path / "cifar-10-batches-py", random_cifar())
    paths["test_batch"].unlink()
    with pytest.raises(DatasetError, match=f"expected {paths['test_batch']}"):
        load_cifar10(tmp_path)


def test_loaders_table():
    assert datasets.LOADERS == {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}


# ---------------------------------------------------------------- the Debian Fashion-MNIST files
@pytest.fixture(scope="module")
def debian_fashion_mnist():
    require_data(FASHION_MNIST_DIR.is_dir(), f"{FASHION_MNIST_DIR} absent: the Debian package dataset-fashion-mnist is not installed")
    return load_fashion_mnist()


def test_debian_fashion_mnist(debian_fashion_mnist):
    data = debian_fashion_mnist
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert data.train_labels[0] == 9 and data.test_labels[0] == 9  # both splits open on an ankle boot
    assert int(data.train_images.max()) == 255 and int(data.train_images.min()) == 0
