"""STL-10's labelled images from the official binary release (stl10_binary/).

The files have no header: an image is 3 x 96 x 96 bytes, each colour plane stored column by column
(Matlab order), and labels are single bytes 1..10. Without a header nothing but the file size can
reveal truncation, so sizes are checked before anything is reshaped. The 100,000 unlabeled images
(unlabeled_X.bin, 2.6 GB) are not loaded: the clustering protocol here uses the 13,000 labelled
ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import register_dataset
from benchmark.data.types import ClusteringDataset

NUM_CLASSES = 10
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE

FILES: dict[str, tuple[str, str]] = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
}


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetFileError(path, "file not found") from None
    except OSError as exc:
        raise DatasetFileError(path, f"cannot read: {exc}") from None


def read_images(path: Path) -> np.ndarray:
    """(N, 96, 96, 3) uint8, upright: row r, column c of the image is [r, c]."""
    raw = _read_bytes(path)
    if raw.size == 0 or raw.size % IMAGE_BYTES:
        raise DatasetFileError(
            path,
            f"{raw.size} bytes is not a whole number of {SIDE}x{SIDE}x3 images "
            f"({IMAGE_BYTES} bytes each): truncated or not an STL-10 image file",
        )
    # (N, channel, column, row) as stored -> (N, row, column, channel)
    return raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1)


def read_labels(path: Path, count: int, images_name: str) -> np.ndarray:
    """0-based int64 labels; the file stores 1..10, one byte per image."""
    raw = _read_bytes(path)
    if raw.size != count:
        raise DatasetFileError(path, f"{raw.size} labels, but {images_name} holds {count} images")
    if raw.size and (raw.min() < 1 or raw.max() > NUM_CLASSES):
        raise DatasetFileError(
            path, f"labels span {raw.min()}..{raw.max()}, expected 1..{NUM_CLASSES}"
        )
    return raw.astype(np.int64) - 1


@register_dataset("stl10")
def load(location: Path, card: ProtocolCard) -> ClusteringDataset:
    """Train (5,000) then test (8,000) labelled images; unlabeled_X.bin is not read."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    parts: dict[str, slice] = {}
    start = 0
    for part, (x_name, y_name) in FILES.items():
        x = read_images(location / x_name)
        y = read_labels(location / y_name, len(x), x_name)
        images.append(x)
        labels.append(y)
        parts[part] = slice(start, start + len(x))
        start += len(x)
    return ClusteringDataset(
        name=card.name,
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        num_classes=NUM_CLASSES,
        parts=parts,
        root=location,
    )
