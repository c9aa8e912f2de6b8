"""Checkpoint files of a run: their format, atomic writing, checksums, and choosing one to resume.

This module owns the bytes on disk; *what* a checkpoint holds is the loop's
(:meth:`targetprop.training.loop.Session.payload`: the trainer's state and the run state). A run keeps its checkpoints in its checkpoint folder
(:func:`targetprop.training.rundir.checkpoint_dir`) as ``iteration-NNNNNNNN.pt``, the last
:data:`KEEP` of them.

File format: ``MAGIC`` (8 bytes), the payload's length (8 bytes, little-endian), its SHA-256
digest (32 bytes), then the payload (``torch.save`` of a dict of tensors and plain values,
read back with ``weights_only=True``). A file that is truncated, padded or altered fails the
length or digest check and is reported as corrupt (:class:`CorruptCheckpoint`), never loaded.

Writing is atomic (:func:`targetprop.training.files.atomic_write`): a run killed mid-write
leaves its previous checkpoints intact and at worst a stray temporary file, which
:func:`set_aside` removes.

Resuming takes the newest checkpoint that passes its checks (:func:`latest`); a corrupt one is
reported, renamed to ``*.corrupt`` (kept for inspection, ignored from then on; :func:`set_aside`)
and the one before it used.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import atomic_write, is_temporary

MAGIC = b"TPCKPT1\n"
HEADER = len(MAGIC) + 8 + 32
KEEP = 2
_NAME = re.compile(r"iteration-(\d{8,})\.pt")


class CorruptCheckpoint(ValueError):
    """A checkpoint file failed its length or checksum test, or could not be unpickled."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped as corrupt, or a resumed run had none yet."""


def file_name(iteration: int) -> str:
    """``iteration-00001000.pt``: names sort in iteration order."""
    return f"iteration-{iteration:08d}.pt"


def save(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically, with its length and SHA-256 digest in front."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write(path, MAGIC + len(data).to_bytes(8, "little") + hashlib.sha256(data).digest(), data)


def load(path: str | Path, map_location=None) -> dict:
    """The payload of the checkpoint at ``path``; :class:`CorruptCheckpoint` says why it is unusable."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < HEADER or raw[:len(MAGIC)] != MAGIC:
        raise CorruptCheckpoint(f"{path}: not a targetprop checkpoint (bad or truncated header)")
    size = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 8], "little")
    data = raw[HEADER:]
    if len(data) != size:
        raise CorruptCheckpoint(f"{path}: truncated or padded ({len(data)} payload bytes, expected {size})")
    if hashlib.sha256(data).digest() != raw[len(MAGIC) + 8:HEADER]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (the file was altered or damaged)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a digest-valid file that torch cannot read is still unusable
        raise CorruptCheckpoint(f"{path}: unreadable payload ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict):
        raise CorruptCheckpoint(f"{path}: payload is a {type(payload).__name__}, not a dict")
    return payload


def listed(folder: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def save_in(folder: str | Path, iteration: int, payload: dict, keep: int = KEEP) -> Path:
    """Write the checkpoint of ``iteration`` into ``folder`` and delete all but the newest ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(iteration)
    save(path, payload)
    for _, old in listed(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


@dataclass
class Found:
    """What :func:`latest` found: the payload (None if no usable checkpoint), its path, and the
    corrupt checkpoints newer than it, with one line each saying what is wrong."""

    payload: dict | None = None
    path: Path | None = None
    corrupt: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def latest(folder: str | Path, map_location=None) -> Found:
    """The newest usable checkpoint in ``folder``, skipping (and listing) corrupt ones; reads only."""
    found = Found()
    for _, path in reversed(listed(folder)):
        try:
            found.payload, found.path = load(path, map_location), path
            return found
        except CorruptCheckpoint as err:
            found.corrupt.append(path)
            found.problems.append(str(err))
    return found


def set_aside(folder: str | Path, found: Found) -> None:
    """Rename the corrupt checkpoints of ``found`` to ``*.corrupt`` (kept for inspection, no longer
    listed) and remove stray temporary files of interrupted writes: the tidying that the one
    process owning the files does before the run goes on."""
    folder = Path(folder)
    for path in found.corrupt:
        if path.exists():
            os.replace(path, path.with_name(path.name + ".corrupt"))
    if folder.is_dir():
        for tmp in filter(is_temporary, folder.iterdir()):
            tmp.unlink(missing_ok=True)


def clear(folder: str | Path) -> None:
    """Remove the checkpoint files of ``folder`` (and the folder, once empty); nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        ours = _NAME.fullmatch(path.name.removesuffix(".corrupt"))
        if ours or is_temporary(path):
            path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()
