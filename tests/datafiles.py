"""Writers of tiny data files in the real formats (IDX, CIFAR-10 pickles), for the data tests."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import torch

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def idx_bytes(array: torch.Tensor, magic: int | None = None) -> bytes:
    """``array`` (uint8) as an IDX file: magic ``0x0000080n``, big-endian int32 sizes, the bytes."""
    magic = 0x800 + array.dim() if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + bytes(array.reshape(-1).tolist())


def write_bytes(path: Path, content: bytes) -> Path:
    """Write ``content``, gzipped when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


def random_mnist(n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    """Random uint8 28×28 images and labels in 0..9 for both splits."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[split, "images"] = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        out[split, "labels"] = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    return out


def write_mnist(folder: Path, arrays: dict, gz: bool = False) -> dict[tuple[str, str], Path]:
    """The four IDX files of ``arrays`` in ``folder``; returns their paths."""
    suffix = ".gz" if gz else ""
    return {key: write_bytes(folder / (IDX_NAMES[key] + suffix), idx_bytes(arrays[key])) for key in IDX_NAMES}


def random_cifar(n_per_batch: int = 2, seed: int = 0) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """Random rows ``(n, 3072)`` uint8 and labels for the five training batches and the test batch."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: (torch.randint(0, 256, (n_per_batch, 3072), generator=g, dtype=torch.uint8),
               torch.randint(0, 10, (n_per_batch,), generator=g).tolist())
        for name in CIFAR_TRAIN + ["test_batch"]
    }


def cifar_pickle(data, labels, protocol: int = 2, bytes_keys: bool = False) -> bytes:
    """A CIFAR-10 batch pickled as the real files are: numpy uint8 ``data`` and a ``labels`` list."""
    import numpy as np  # the test that calls this skips without numpy

    batch = {"data": np.asarray(data.numpy() if isinstance(data, torch.Tensor) else data),
             "labels": labels, "batch_label": "testing batch"}
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=protocol)


def write_cifar(folder: Path, batches: dict, protocol: int = 2, bytes_keys: bool = False) -> dict[str, Path]:
    return {name: write_bytes(folder / name, cifar_pickle(data, labels, protocol, bytes_keys))
            for name, (data, labels) in batches.items()}


def ts_text(cases: list[tuple[list[list[float]], str]], *, classes: str = "a b", univariate: bool | None = None,
            extra_header: str = "", problem: str = "Toy") -> str:
    """A ``.ts`` file of ``cases`` (each: one list of values per dimension, and its label); ``None``
    in a value list is written as ``?``. The header says what the cases are unless overridden."""
    dims = {len(channels) for channels, _ in cases}
    lengths = {len(channels[0]) for channels, _ in cases}
    uni = (dims == {1}) if univariate is None else univariate
    header = [f"# a generated test file", f"@problemName {problem}", "@timeStamps false",
              f"@univariate {str(uni).lower()}"]
    if not uni:
        header.append(f"@dimensions {max(dims)}")
    header.append(f"@equalLength {str(len(lengths) == 1).lower()}")
    if len(lengths) == 1:
        header.append(f"@seriesLength {lengths.pop()}")
    header += [line for line in extra_header.splitlines() if line]
    header += [f"@classLabel true {classes}", "@data"]
    body = [":".join(",".join("?" if v is None else repr(float(v)) for v in ch) for ch in channels) + f":{label}"
            for channels, label in cases]
    return "\n".join(header + body) + "\n"
