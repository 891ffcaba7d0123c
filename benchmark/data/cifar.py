"""CIFAR-10, CIFAR-100 (100 fine classes) and CIFAR-100-20 (the 20 super-classes) from the official
"python version" pickles.

The pickles are read with an unpickler that only admits what the official files contain (numpy
arrays, plain containers): a pickle is code, and these files are fetched from mirrors. Every field
the loader relies on (row width, label count and range) is checked so that a damaged or mislabelled
batch names itself instead of producing wrong images.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import register_dataset
from benchmark.data.types import ClusteringDataset

SIDE = 32
ROW_BYTES = 3 * SIDE * SIDE  # one image: the R, G and B planes of 32x32, each row-major

CIFAR10_FILES = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}
CIFAR100_FILES = {"train": ("train",), "test": ("test",)}

# Globals the official pickles (Python 2 cPickle of numpy arrays) and re-pickled copies refer to.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),  # a numpy scalar, should a copy hold one
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _ForbiddenGlobal(
                f"refusing to load global {module}.{name}: a CIFAR batch holds only numpy arrays, "
                "lists and strings"
            )
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR batch pickle as a dict with str keys (Python 2 strings decoded as latin-1)."""
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetFileError(path, "file not found") from None
    except OSError as exc:
        raise DatasetFileError(path, f"cannot read: {exc}") from None
    except _ForbiddenGlobal as exc:
        raise DatasetFileError(path, str(exc)) from None
    except Exception as exc:  # damaged pickles fail in many ways (EOFError, ValueError, ...)
        raise DatasetFileError(
            path, f"not a readable CIFAR batch pickle (truncated or damaged?): {exc}"
        ) from None
    if not isinstance(batch, dict):
        raise DatasetFileError(path, f"expected a dict, the pickle holds a {type(batch).__name__}")
    return batch


def batch_images_labels(
    path: Path, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one batch file."""
    batch = read_batch(path)
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetFileError(path, f"no {key!r} entry (has {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != ROW_BYTES
    ):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DatasetFileError(
            path, f"'data' must be uint8 rows of {ROW_BYTES} bytes, got {dtype} {shape}"
        )
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetFileError(path, f"{label_key!r} is not a list of integers: {exc}") from None
    if labels.shape != (len(data),):
        raise DatasetFileError(
            path,
            f"{label_key!r} has shape {labels.shape}, expected one label per image ({len(data)})",
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFileError(
            path,
            f"{label_key!r} values span {labels.min()}..{labels.max()}, "
            f"outside 0..{num_classes - 1}",
        )
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar(
    location: Path,
    card: ProtocolCard,
    files: dict[str, tuple[str, ...]],
    label_key: str,
    num_classes: int,
) -> ClusteringDataset:
    """Train batches in order, then the test batch; `parts` marks where each ends."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    parts: dict[str, slice] = {}
    start = 0
    for part, names in files.items():
        for name in names:
            x, y = batch_images_labels(location / name, label_key, num_classes)
            images.append(x)
            labels.append(y)
        stop = sum(len(y) for y in labels)
        parts[part] = slice(start, stop)
        start = stop
    return ClusteringDataset(
        name=card.name,
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        num_classes=num_classes,
        parts=parts,
        root=location,
    )


@register_dataset("cifar10")
def load_cifar10(location: Path, card: ProtocolCard) -> ClusteringDataset:
    return load_cifar(location, card, CIFAR10_FILES, "labels", 10)


@register_dataset("cifar100")
def load_cifar100(location: Path, card: ProtocolCard) -> ClusteringDataset:
    return load_cifar(location, card, CIFAR100_FILES, "fine_labels", 100)


@register_dataset("cifar100-coarse")
def load_cifar100_coarse(location: Path, card: ProtocolCard) -> ClusteringDataset:
    return load_cifar(location, card, CIFAR100_FILES, "coarse_labels", 20)
