"""In-memory form of a loaded dataset, as the harness (never a method) sees it.

Identity and class labels live here; methods only ever receive `benchmark.data.unlabeled.UnlabeledView`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Kind = Literal["reid", "clustering"]


@dataclass(frozen=True)
class ReidSplit:
    """One split of a re-ID dataset: image files with identity and 0-based camera ids.

    `pids` keeps the dataset's own identity numbers (0 marks distractors in Market-style data);
    junk images (id -1) are dropped by the parsers and never appear here.
    """

    name: str
    paths: list[Path]
    pids: np.ndarray
    camids: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.pids) == len(self.camids)):
            raise ValueError(
                f"split {self.name}: {len(self.paths)} paths, {len(self.pids)} pids, "
                f"{len(self.camids)} camids"
            )

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def num_identities(self) -> int:
        return int(np.unique(self.pids).size)

    @property
    def num_cameras(self) -> int:
        return int(np.unique(self.camids).size)


@dataclass(frozen=True)
class ReidDataset:
    name: str
    train: ReidSplit
    query: ReidSplit
    gallery: ReidSplit
    root: Path | None = None
    kind: Kind = field(default="reid", init=False)

    def splits(self) -> dict[str, ReidSplit]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}


@dataclass(frozen=True)
class ClusteringDataset:
    """Images (N, H, W, C) uint8 with class labels; `parts` names the official train/test ranges.

    The deep-clustering protocol learns on train+test together; `parts` exists so that counts can be
    checked against the card per official split.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    parts: dict[str, slice]
    root: Path | None = None
    kind: Kind = field(default="clustering", init=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: images must be uint8 (N, H, W, C), got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        s = self.parts[name]
        return self.images[s], self.labels[s]


Dataset = ReidDataset | ClusteringDataset
