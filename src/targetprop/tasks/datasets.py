"""Image data sets read from their standard files (no torchvision): MNIST, Fashion-MNIST, CIFAR-10;
and where every data set's files are looked for (the UEA/UCR ``.ts`` files too: ``ucr:NAME`` in
``<data_dir>/ucr/NAME/``, read by :mod:`targetprop.tasks.tsfile`).

This module owns finding, reading and checking the files; turning images into sequences is
:mod:`targetprop.tasks.images`' job. Everything is read and validated at load time, so bad
data fails before any training with a :class:`DatasetError` naming the file and what was expected.

Where the files are looked for (:func:`search_dirs`; the first folder holding the first file wins):

* MNIST: ``<data_dir>/mnist/`` or ``<data_dir>/`` holding the four IDX files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``).
* Fashion-MNIST: the same four files in ``<data_dir>/fashion-mnist/`` or ``<data_dir>/`` when a
  directory is passed; without one, in ``fashion-mnist/`` of the default folder, else in
  :data:`FASHION_MNIST_DIR`, the folder of the Debian package ``dataset-fashion-mnist``.
* CIFAR-10: the python pickle batches ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` in
  ``<data_dir>/cifar-10-batches-py/`` or ``<data_dir>/``.

``data_dir`` defaults to :func:`default_data_dir`: ``$TARGETPROP_DATA`` (:data:`DATA_ENV`) when
set, else ``targetprop/data`` in the user's cache folder (``$XDG_CACHE_HOME``, else
``~/.cache``), where ``targetprop data fetch`` (:mod:`targetprop.tasks.fetch`) puts the files. Images
come back as ``uint8`` tensors, ``(N, 28, 28)`` for the MNISTs and ``(N, 3, 32, 32)`` (channels
first) for CIFAR-10; labels as ``int64`` in ``[0, 10)``.

CIFAR-10 pickles are read by a restricted unpickler that accepts only the objects such a batch
holds (dicts, lists, numbers, strings and numpy's uint8 arrays, rebuilt without importing numpy):
a pickle that asks for anything else is refused instead of being executed.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

DATA_ENV = "TARGETPROP_DATA"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Each data set's sub-folder of a data directory (where ``targetprop data fetch`` writes it).
#: The UEA/UCR archive's data sets ``targetprop data fetch ucr`` provides (``ucr:NAME``, in ``ucr/NAME/``).
UCR_SETS = ("JapaneseVowels", "ACSF1", "OSULeaf", "PLAID", "BasicMotions", "GunPoint", "ArrowHead")
FOLDERS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar-10-batches-py",
           **{f"ucr:{name}": f"ucr/{name}" for name in UCR_SETS}}
NUM_CLASSES = 10

_IDX_UBYTE = 0x08
_MNIST_SHAPE = (28, 28)
_CIFAR_SHAPE = (3, 32, 32)
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


class DatasetError(ValueError):
    """A data file is missing, truncated or not in the expected format (the message names it)."""


@dataclass(frozen=True)
class ImageData:
    """A data set's two splits: ``uint8`` images ``(N, H, W)`` or ``(N, C, H, W)``, ``int64`` labels."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int = NUM_CLASSES

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


# ----------------------------------------------------------------------------- locating files


def default_data_dir() -> Path:
    """``$TARGETPROP_DATA`` when set, else ``targetprop/data`` in the user's cache folder:
    ``$XDG_CACHE_HOME`` when it is an absolute path, else ``~/.cache``."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(cache) if os.path.isabs(cache) else Path.home() / ".cache") / "targetprop" / "data"


def search_dirs(dataset: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders where ``dataset``'s files are looked for, in order (``data_dir`` as given to
    its loader; ``None``: the default folder, and for Fashion-MNIST the Debian package's)."""
    if data_dir is not None:
        return [Path(data_dir) / FOLDERS[dataset], Path(data_dir)]
    root = default_data_dir()
    if dataset == "fashion-mnist":
        return [root / FOLDERS[dataset], FASHION_MNIST_DIR]
    return [root / FOLDERS[dataset], root]


def _first_dir_with(dataset: str, data_dir: str | os.PathLike | None, variants: tuple[str, ...]) -> Path:
    """The first of :func:`search_dirs` holding one of ``variants`` (a file's accepted names);
    else a DatasetError saying where it looked and how to get the files."""
    candidates = search_dirs(dataset, data_dir)
    for folder in candidates:
        if any((folder / name).is_file() for name in variants):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    names = " or ".join(variants)
    fetch = f"targetprop data fetch {dataset}" + (f" --dir {data_dir}" if data_dir is not None else "")
    how = f"run `{fetch}` or place the files there by hand"
    if data_dir is not None:
        raise DatasetError(f"{dataset}: file {names} not found (looked in {looked}); {how}")
    if os.environ.get(DATA_ENV):
        raise DatasetError(f"{dataset}: file {names} not found (looked in {looked}, from ${DATA_ENV}); {how}")
    raise DatasetError(f"{dataset}: no data directory given (--data-dir or ${DATA_ENV}) and file {names} "
                       f"not found in the default folders ({looked}); {how}")


def _idx_names(stem: str) -> tuple[str, ...]:
    return (stem, stem + ".gz")


def _existing(folder: Path, variants: tuple[str, ...]) -> Path:
    """The first of ``folder/variant`` that exists; a DatasetError if none does."""
    for name in variants:
        if (folder / name).is_file():
            return folder / name
    tried = " or ".join(str(folder / name) for name in variants)
    raise DatasetError(f"missing data file: expected {tried}")


def _read_bytes(path: Path) -> bytearray:
    """The file's content, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        kind = "gzip file" if path.suffix == ".gz" else "file"
        raise DatasetError(f"{path}: cannot read as a {kind}: {err}") from err


# ----------------------------------------------------------------------------- IDX (MNIST)


def read_idx(path: str | os.PathLike, shape: tuple[int | None, ...]) -> Tensor:
    """An IDX file of unsigned bytes as a ``uint8`` tensor whose shape must match ``shape``.

    ``shape`` gives the expected dimensions, ``None`` where any size is fine (the count).
    IDX: two zero bytes, the type code (0x08: unsigned byte), the number of dimensions, then each
    dimension as a big-endian int32, then the data in row-major order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    dims = _idx_header(path, raw, len(shape))
    for axis, (got, want) in enumerate(zip(dims, shape)):
        if want is not None and got != want:
            raise DatasetError(f"{path}: dimension {axis} is {got}, expected {want} (shape {dims})")
    start = 4 + 4 * len(dims)
    count = _product(dims)
    if len(raw) - start != count:
        problem = "truncated" if len(raw) - start < count else "has trailing bytes"
        raise DatasetError(
            f"{path}: {problem}: expected {count} data bytes for shape {dims}, found {len(raw) - start}")
    if count == 0:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(raw, dtype=torch.uint8, count=count, offset=start).reshape(dims)


def _idx_header(path: Path, raw: bytearray, ndim: int) -> tuple[int, ...]:
    """The dimensions in the IDX header, after checking its magic number."""
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated: {len(raw)} bytes, shorter than an IDX header")
    zero, dtype, got_ndim = struct.unpack_from(">HBB", raw, 0)
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or dtype != _IDX_UBYTE or got_ndim != ndim:
        raise DatasetError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{0x800 + ndim:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
    return struct.unpack_from(f">{ndim}I", raw, 4)


def _product(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _check_labels(path: Path, labels: Tensor, num_images: int, images_path: Path) -> Tensor:
    """``labels`` as int64 after checking their count and range."""
    if labels.shape[0] != num_images:
        raise DatasetError(
            f"{path}: {labels.shape[0]} labels, expected {num_images} to match the images in {images_path}")
    labels = labels.to(torch.int64)
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"{path}: label {int(labels.max())} out of range, expected 0..{NUM_CLASSES - 1}")
    return labels


def _load_idx_split(folder: Path, prefix: str) -> tuple[Tensor, Tensor]:
    images_path = _existing(folder, _idx_names(f"{prefix}-images-idx3-ubyte"))
    labels_path = _existing(folder, _idx_names(f"{prefix}-labels-idx1-ubyte"))
    images = read_idx(images_path, (None, *_MNIST_SHAPE))
    labels = read_idx(labels_path, (None,))
    return images, _check_labels(labels_path, labels, images.shape[0], images_path)


def _load_idx_dataset(name: str, data_dir: str | os.PathLike | None) -> ImageData:
    folder = _first_dir_with(name, data_dir, _idx_names("train-images-idx3-ubyte"))
    train = _load_idx_split(folder, "train")
    test = _load_idx_split(folder, "t10k")
    return ImageData(name, *train, *test)


def load_mnist(data_dir: str | os.PathLike | None = None) -> ImageData:
    """MNIST from ``<data_dir>/mnist/`` or ``<data_dir>/`` (default: :func:`default_data_dir`)."""
    return _load_idx_dataset("mnist", data_dir)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageData:
    """Fashion-MNIST from ``<data_dir>/fashion-mnist/`` or ``<data_dir>/``; without ``data_dir``,
    from the default folder's ``fashion-mnist/``, else the Debian package's folder."""
    return _load_idx_dataset("fashion-mnist", data_dir)


# ----------------------------------------------------------------------------- CIFAR-10 pickles


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle (only passed to ``_reconstruct``)."""


class _Dtype:
    """A numpy dtype as pickled: ``dtype('u1', False, True)`` then ``__setstate__``."""

    def __init__(self, code, align=False, copy=True):
        self.code = code.decode("latin1") if isinstance(code, bytes) else str(code)

    def __setstate__(self, state):
        pass  # byte order and the rest do not matter for single bytes

    @property
    def is_uint8(self) -> bool:
        return self.code in ("u1", "B", "uint8")


class _Array:
    """A numpy array as pickled, kept as raw bytes, shape, dtype and memory order."""

    def __init__(self, data=b"", dtype=None, shape=(0,), order="C"):
        self.data, self.dtype, self.shape, self.fortran = data, dtype, tuple(shape), order == "F"

    def __setstate__(self, state):
        _, self.shape, self.dtype, self.fortran, self.data = state
        self.shape = tuple(self.shape)

    def to_tensor(self) -> Tensor:
        """The array as a uint8 tensor (raises TypeError/ValueError if it is not one)."""
        if not isinstance(self.dtype, _Dtype) or not self.dtype.is_uint8:
            raise TypeError(f"array of dtype {getattr(self.dtype, 'code', self.dtype)!r}, not uint8")
        if not isinstance(self.data, (bytes, bytearray)) or len(self.data) != _product(self.shape):
            raise ValueError(f"array data does not fill its shape {self.shape}")
        if not self.data:
            return torch.empty(self.shape, dtype=torch.uint8)
        flat = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
        if self.fortran:
            return flat.reshape(self.shape[::-1]).permute(*reversed(range(len(self.shape)))).contiguous()
        return flat.reshape(self.shape)


def _reconstruct(cls, shape, code):
    return _Array()


def _frombuffer(buffer, dtype, shape, order):
    return _Array(bytes(buffer), dtype, shape, order)


def _encode(text, encoding):
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"unexpected codec {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global is refused."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_cifar_batch(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 python batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64."""
    path = Path(path)
    expected = "a CIFAR-10 batch (a dict with 'data', a uint8 array (N, 3072), and 'labels', N ints)"
    raw = _read_bytes(path)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean "not a batch"
        problem = f"{type(err).__name__}: {err}"
        raise DatasetError(f"{path}: not a valid pickle ({problem}); expected {expected}") from err
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: holds a {type(batch).__name__}, expected {expected}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images = _cifar_images(path, batch, expected)
    return images, _cifar_labels(path, batch, images.shape[0], expected)


def _cifar_images(path: Path, batch: dict, expected: str) -> Tensor:
    data = batch.get("data")
    if not isinstance(data, _Array):
        raise DatasetError(f"{path}: no 'data' array; expected {expected}")
    try:
        images = data.to_tensor()
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: 'data' is not usable ({err}); expected {expected}") from err
    row = _product(_CIFAR_SHAPE)
    if images.dim() != 2 or images.shape[1] != row:
        raise DatasetError(f"{path}: 'data' has shape {tuple(images.shape)}, expected (N, {row})")
    return images.reshape(-1, *_CIFAR_SHAPE)


def _cifar_labels(path: Path, batch: dict, n: int, expected: str) -> Tensor:
    labels = batch.get("labels")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(v, int) for v in labels):
        raise DatasetError(f"{path}: no 'labels' list of ints; expected {expected}")
    if len(labels) != n:
        raise DatasetError(f"{path}: {len(labels)} labels, expected {n} to match the images in 'data'")
    if labels and not 0 <= min(labels) <= max(labels) < NUM_CLASSES:
        raise DatasetError(f"{path}: labels out of range, expected 0..{NUM_CLASSES - 1}")
    return torch.tensor(labels, dtype=torch.int64)


def load_cifar10(data_dir: str | os.PathLike | None = None) -> ImageData:
    """CIFAR-10 from ``<data_dir>/cifar-10-batches-py/`` or ``<data_dir>/`` (default: :func:`default_data_dir`)."""
    folder = _first_dir_with("cifar10", data_dir, (_CIFAR_TRAIN[0],))
    train = [read_cifar_batch(_existing(folder, (name,))) for name in _CIFAR_TRAIN]
    test_images, test_labels = read_cifar_batch(_existing(folder, (_CIFAR_TEST,)))
    return ImageData(
        "cifar10",
        torch.cat([images for images, _ in train]),
        torch.cat([labels for _, labels in train]),
        test_images,
        test_labels,
    )


LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}
