"""`digits`: scikit-learn's bundled 8x8 handwritten digits, the clustering set every machine has.

It is real data (the 1,797-image test set of UCI's "Optical Recognition of Handwritten Digits",
written by 13 people), so the quick and CI profiles can run the clustering protocol without any
download. The data lives inside scikit-learn, so the data root is ignored. Pixel values are counts
0..16 (ink in a 4x4 block of the original 32x32 bitmap); they are mapped to uint8 by
round(v * 255 / 16), halves rounded up, so that 0 -> 0 and 16 -> 255 like any other 8-bit image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.cards import ProtocolCard
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import register_dataset
from benchmark.data.types import ClusteringDataset

NUM_CLASSES = 10
MAX_COUNT = 16
DATA_FILE = "digits.csv.gz"


def sklearn_data_folder() -> Path:
    """The folder in the installed scikit-learn that holds digits.csv.gz."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    return Path(spec.origin).parent / "datasets" / "data"


def locate(root: Path, card: ProtocolCard) -> Path | None:
    """scikit-learn's data folder, whatever the data root."""
    folder = sklearn_data_folder()
    return folder if (folder / DATA_FILE).is_file() else None


def counts_to_uint8(counts: np.ndarray) -> np.ndarray:
    """round(v * 255 / 16) with halves rounded up, in integer arithmetic."""
    as_int = counts.astype(np.int64)
    return ((as_int * 255 + MAX_COUNT // 2) // MAX_COUNT).astype(np.uint8)


@register_dataset("digits", locate=locate)
def load(location: Path, card: ProtocolCard) -> ClusteringDataset:
    """All 1,797 digits as (N, 8, 8, 1) uint8 in one part, "all": there is no official split."""
    from sklearn.datasets import load_digits  # lazy: every CLI command imports the loader modules

    bunch = load_digits()
    counts = np.asarray(bunch.images)
    if counts.min() < 0 or counts.max() > MAX_COUNT or not np.array_equal(counts, np.round(counts)):
        raise DatasetFileError(
            location / DATA_FILE, f"pixel values must be whole counts 0..{MAX_COUNT}"
        )
    images = counts_to_uint8(counts)[..., np.newaxis]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return ClusteringDataset(
        name=card.name,
        images=images,
        labels=labels,
        num_classes=NUM_CLASSES,
        parts={"all": slice(0, len(images))},
        root=location,
    )
