"""Miniature copies of the clustering datasets, written byte for byte in their official formats.

Each builder writes files the way the format's definition says (idx headers with struct, CIFAR rows
as R, G, B planes, STL planes column by column) from images held as (N, H, W, C) arrays, so a
loader that reads them back is checked against the definition, not against itself. Image 0 of every
miniature is black except one pixel at MARK (row, column), bright in the first channel, so that a
transposed or flipped reader shows up on a single pixel.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MARK = (2, 21)  # (row, column): off the diagonal, so a transpose moves it
MARK_VALUE = 255


@dataclass
class Miniature:
    """What a builder wrote: the folder, the expected images/labels (train then test) and files."""

    location: Path
    images: np.ndarray
    labels: np.ndarray
    counts: dict[str, int]
    files: list[Path] = field(default_factory=list)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        start = 0
        for part, n in self.counts.items():
            if part == name:
                return self.images[start : start + n], self.labels[start : start + n]
            start += n
        raise KeyError(name)


def _images(rng: np.random.Generator, n: int, side: int, channels: int) -> np.ndarray:
    images = rng.integers(0, 256, size=(n, side, side, channels), dtype=np.uint8)
    images[0] = 0
    images[0, MARK[0], MARK[1], 0] = MARK_VALUE
    return images


def _labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    return rng.integers(0, num_classes, size=n).astype(np.int64)


# --- MNIST: idx files --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: 0x00 0x00 0x08 ndim, big-endian int32 dims, C-order data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def build_mnist(
    root: Path,
    *,
    folder: str = "MNIST/raw",
    n_train: int = 12,
    n_test: int = 5,
    gz: bool = True,
    seed: int = 0,
) -> Miniature:
    rng = np.random.default_rng(seed)
    location = root / folder
    location.mkdir(parents=True, exist_ok=True)
    images = _images(rng, n_train + n_test, 28, 1)
    labels = _labels(rng, n_train + n_test, 10)
    files = []
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        files.append(write_idx(location / f"{prefix}-images-idx3-ubyte", images[sl, ..., 0], gz=gz))
        files.append(write_idx(location / f"{prefix}-labels-idx1-ubyte", labels[sl], gz=gz))
    return Miniature(location, images, labels, {"train": n_train, "test": n_test}, files)


# --- CIFAR: pickled batches ----------------------------------------------------------------------


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the red plane row by row, then green, then blue."""
    n = len(images)
    planes = [images[..., c].reshape(n, -1) for c in range(3)]
    return np.concatenate(planes, axis=1)


def _py2(obj: object) -> bytes:
    """Opcodes for `obj` as Python 2's cPickle (protocol 2) wrote them, numpy arrays included."""
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, (str, bytes)):  # a Python 2 str is a byte string
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<i", len(raw)) + raw
    if isinstance(obj, tuple):
        return b"(" + b"".join(_py2(x) for x in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(x) for x in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        # _reconstruct(ndarray, (0,), 'b'), then ndarray.__setstate__ with
        # (version 1, shape, dtype('u1') with its own state, not Fortran order, raw bytes)
        dtype = (
            b"cnumpy\ndtype\n" + _py2(("u1", 0, 1)) + b"R"
            + _py2((3, "|", None, None, None, -1, -1, 0)) + b"b"
        )
        state = (
            b"(" + _py2(1) + _py2(tuple(obj.shape)) + dtype + _py2(False) + _py2(obj.tobytes())
            + b"t"
        )
        array = (
            b"cnumpy.core.multiarray\n_reconstruct\n"
            + b"cnumpy\nndarray\n" + _py2((0,)) + _py2("b") + b"\x87R"
        )
        return array + state + b"b"
    raise TypeError(f"no Python 2 pickle form for {type(obj).__name__}")


def py2_pickle(obj: object) -> bytes:
    return b"\x80\x02" + _py2(obj) + b"."


def _dump(path: Path, obj: object) -> Path:
    path.write_bytes(py2_pickle(obj))  # what the official files are: Python 2 cPickle output
    return path


def build_cifar10(
    root: Path,
    *,
    folder: str = "cifar-10-batches-py",
    batch_sizes: tuple[int, ...] = (3, 2, 4, 1, 2),
    n_test: int = 4,
    seed: int = 0,
) -> Miniature:
    rng = np.random.default_rng(seed)
    location = root / folder
    location.mkdir(parents=True, exist_ok=True)
    n_train = sum(batch_sizes)
    images = _images(rng, n_train + n_test, 32, 3)
    labels = _labels(rng, n_train + n_test, 10)
    files, start = [], 0
    names = [f"data_batch_{i + 1}" for i in range(len(batch_sizes))] + ["test_batch"]
    for name, size in zip(names, list(batch_sizes) + [n_test], strict=True):
        sl = slice(start, start + size)
        start += size
        batch = {
            "batch_label": name,
            "labels": labels[sl].tolist(),
            "data": cifar_rows(images[sl]),
            "filenames": [f"img_{i}.png" for i in range(sl.start, sl.stop)],
        }
        files.append(_dump(location / name, batch))
    files.append(_dump(location / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}))
    return Miniature(location, images, labels, {"train": n_train, "test": n_test}, files)


def build_cifar100(
    root: Path,
    *,
    folder: str = "cifar-100-python",
    n_train: int = 9,
    n_test: int = 4,
    coarse: bool = False,
    seed: int = 0,
) -> Miniature:
    """Both label sets are written; the Miniature's labels are the fine or the coarse ones."""
    rng = np.random.default_rng(seed)
    location = root / folder
    location.mkdir(parents=True, exist_ok=True)
    images = _images(rng, n_train + n_test, 32, 3)
    fine = _labels(rng, n_train + n_test, 100)
    coarse_labels = (fine * 7 + 3) % 20  # any function of the fine label; differs from it
    files = []
    for name, sl in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        batch = {
            "filenames": [f"img_{i}.png" for i in range(len(fine[sl]))],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": fine[sl].tolist(),
            "coarse_labels": coarse_labels[sl].tolist(),
            "data": cifar_rows(images[sl]),
        }
        files.append(_dump(location / name, batch))
    files.append(_dump(location / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]}))
    labels = coarse_labels if coarse else fine
    return Miniature(location, images, labels, {"train": n_train, "test": n_test}, files)


# --- STL-10: headerless binaries -----------------------------------------------------------------


def stl_bytes(images: np.ndarray) -> bytes:
    """Each image's R, G, B planes in turn, every plane column by column (Fortran order)."""
    return b"".join(
        images[i, :, :, c].tobytes(order="F") for i in range(len(images)) for c in range(3)
    )


def build_stl10(
    root: Path,
    *,
    folder: str = "stl10_binary",
    n_train: int = 4,
    n_test: int = 3,
    seed: int = 0,
) -> Miniature:
    rng = np.random.default_rng(seed)
    location = root / folder
    location.mkdir(parents=True, exist_ok=True)
    images = _images(rng, n_train + n_test, 96, 3)
    labels = _labels(rng, n_train + n_test, 10)
    files = []
    for name, sl in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        x = location / f"{name}_X.bin"
        x.write_bytes(stl_bytes(images[sl]))
        y = location / f"{name}_y.bin"
        y.write_bytes((labels[sl] + 1).astype(np.uint8).tobytes())  # stored 1-based
        files += [x, y]
    return Miniature(location, images, labels, {"train": n_train, "test": n_test}, files)
