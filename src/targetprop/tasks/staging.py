"""Writing a data set's files safely: each file is copied (decompressed if gzipped) into a hidden
temporary in the destination folder while its digest (MD5, or SHA-256 where pinned so) is
computed, checked against the pinned one, and only when every file of the data set matches are
they renamed into place (``os.replace``), so a failed or interrupted fetch leaves the folder as
it was. Also the errors a fetch raises.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

CHUNK = 1 << 20
#: How messages name each digest.
LABELS = {"md5": "MD5", "sha256": "SHA-256"}


class FetchError(RuntimeError):
    """A data set could not be fetched (the message names the source and what went wrong;
    ``causes``: each source's error, when every source was tried)."""

    causes: tuple[BaseException, ...] = ()


class ChecksumError(FetchError):
    """A file's content does not match its pinned checksum (it was not kept)."""


class Staging:
    """Files written as hidden temporaries in ``folder``, each checked against its pinned digest
    (``algorithm``: ``md5`` or ``sha256``); :meth:`commit` renames them into place. Leaving the
    ``with`` block removes every temporary still there (after an error, Ctrl-C or SystemExit,
    nothing half-written is left)."""

    def __init__(self, folder: Path, checksums: dict[str, str], progress: bool, algorithm: str = "md5"):
        self.folder, self.checksums, self.progress = folder, checksums, progress
        self.algorithm = algorithm
        self._temps: list[Path] = []
        self._ready: dict[str, Path] = {}

    def __enter__(self) -> Staging:
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
        """Copy ``stream`` (decompressed if ``gzipped``) into a temporary for ``name`` and check its digest."""
        path = self.temporary(name)
        with open(path, "wb") as out:
            digest = copy_checked(stream, out, f"{name} ({origin})", total, gzipped, self.progress, self.algorithm)
            out.flush()
            os.fsync(out.fileno())
        want = self.checksums[name]
        if digest != want:
            raise ChecksumError(f"{name} from {origin}: {LABELS[self.algorithm]} {digest}, expected {want}; not kept")
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


def copy_checked(stream: BinaryIO, out: BinaryIO | None, desc: str, total: int | None, gzipped: bool,
          progress: bool, algorithm: str = "md5") -> str:
    """Copy ``stream`` to ``out`` (or just read it when ``out`` is None), decompressing it if
    ``gzipped``; a progress bar over the bytes read; returns the digest (``algorithm``: ``md5``
    or ``sha256``, hex) of what was written."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
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
