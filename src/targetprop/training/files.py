"""Writing a run's files so that a crash never leaves one half-written (:func:`atomic_write`), and
the error of a run folder that does not allow what was asked (:class:`RunFolderError`).

The bytes go to a temporary file beside the target (``.NAME.tmp``), which is flushed,
``fsync``-ed and renamed over the target (``os.replace``, atomic on POSIX and Windows); the
folder is then ``fsync``-ed so that the rename itself survives a power cut. A process killed
mid-write leaves the previous file intact and at worst a stray temporary file
(:func:`is_temporary` tells them apart).
"""
from __future__ import annotations

import os
from pathlib import Path


class RunFolderError(ValueError):
    """A run's folder does not allow what was asked (a run with other settings, no usable
    checkpoint, a damaged file): the caller's input, which the command line reports as such."""


def temporary_path(path: str | Path) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is a temporary file left by an interrupted :func:`atomic_write`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def atomic_write(path: str | Path, *chunks: bytes | str) -> None:
    """Replace ``path`` by ``chunks`` (bytes, or text written as UTF-8) in one step."""
    path = Path(path)
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
