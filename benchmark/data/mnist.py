"""MNIST from the idx files people have on disk: gzipped as downloaded, or unpacked by torchvision.

The idx header (magic number, dimensions, payload size) is checked rather than trusted: a truncated
download, or a labels file where an images file belongs, would otherwise become silently wrong
pixels. Plain files are preferred when both forms are present, because that is what torchvision
unpacks and reads.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import register_dataset
from benchmark.data.types import ClusteringDataset

NUM_CLASSES = 10
IDX_UBYTE = 0x08  # idx element-type code for unsigned bytes, the only type MNIST uses

# part -> (images stem, labels stem), in the order the parts are concatenated
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` if present, else `folder/stem.gz`, else None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_ubyte(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with `ndim` dimensions (gzip if the name ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DatasetFileError(path, "file not found") from None
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetFileError(
            path, f"cannot read (corrupt or truncated download?): {exc}"
        ) from None

    header = 4 + 4 * ndim
    expected_magic = (IDX_UBYTE << 8) | ndim
    if len(data) < 4:
        raise DatasetFileError(
            path, f"truncated: {len(data)} bytes, shorter than the idx magic number"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DatasetFileError(
            path,
            f"idx magic number is 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimensions): not an MNIST "
            f"{'images' if ndim == 3 else 'labels'} file",
        )
    if len(data) < header:
        raise DatasetFileError(path, f"truncated: {len(data)} bytes, the idx header needs {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload < size:
        raise DatasetFileError(
            path, f"truncated: header promises {dims} = {size} bytes of data, file holds {payload}"
        )
    if payload > size:
        raise DatasetFileError(
            path, f"{payload - size} bytes after the {dims} data the header describes"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _read_part(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FILES[part]
    paths = []
    for stem in (images_stem, labels_stem):
        path = idx_file(folder, stem)
        if path is None:
            raise DatasetFileError(folder / stem, "file not found (neither plain nor .gz)")
        paths.append(path)
    images_path, labels_path = paths
    images = read_idx_ubyte(images_path, 3)
    labels = read_idx_ubyte(labels_path, 1)
    if len(labels) != len(images):
        raise DatasetFileError(
            labels_path, f"{len(labels)} labels, but {images_path.name} holds {len(images)} images"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DatasetFileError(
            labels_path, f"label {int(labels.max())} outside 0..{NUM_CLASSES - 1}"
        )
    return images, labels


def locate(root: Path, card: ProtocolCard) -> Path | None:
    """First folder of the card holding every idx file, each either plain or gzipped."""
    for folder in card.folders:
        candidate = root / folder
        if candidate.is_dir() and all(idx_file(candidate, m) for m in card.markers):
            return candidate
    return None


@register_dataset("mnist", locate=locate)
def load(location: Path, card: ProtocolCard) -> ClusteringDataset:
    """Train (60,000) then test (10,000) images as (N, 28, 28, 1) uint8, labels 0..9."""
    train_x, train_y = _read_part(location, "train")
    test_x, test_y = _read_part(location, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetFileError(
            location,
            f"train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}",
        )
    images = np.concatenate([train_x, test_x])[..., np.newaxis]
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    n_train = len(train_x)
    return ClusteringDataset(
        name=card.name,
        images=images,
        labels=labels,
        num_classes=NUM_CLASSES,
        parts={"train": slice(0, n_train), "test": slice(n_train, len(images))},
        root=location,
    )
