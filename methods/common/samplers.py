"""PK batch sampling over pseudo labels: each batch holds P classes with K images each.

Why a batch sampler: clustering methods relabel the data every epoch, so the classes change and
some are smaller than K; yielding whole batches guarantees every batch has P distinct classes x K
images (small classes cycle through their images) and never an outlier (label -1), whatever the
class sizes. All draws come from one numpy Generator, so a seeded sampler repeats exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _as_rng(generator: np.random.Generator | int) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(int(generator))


def _take(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k items of `pool` in random order: without repetition when it has k, else cycling through a
    shuffled copy."""
    shuffled = rng.permutation(pool)
    if len(shuffled) >= k:
        return shuffled[:k]
    return np.resize(shuffled, k)


class PKSampler(Sampler[list[int]]):
    """Batches of `batch_size // num_instances` pseudo classes x `num_instances` indices.

    Use as `DataLoader(data, batch_sampler=PKSampler(...))`. One pass visits every class once in a
    random order and drops the classes that would not fill a last batch (when there are fewer
    classes than P, each batch holds all of them). With `num_batches`, passes are chained until
    exactly that many batches are produced (an iteration-based epoch).

    With `camids`, the K images of a class are one random anchor plus K - 1 images from the
    class's other cameras where it has any (the Cluster Contrast sampler's cross-camera rule),
    else from the rest of the class.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        num_instances: int,
        generator: np.random.Generator | int,
        num_batches: int | None = None,
        camids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of num_instances "
                f"({num_instances})"
            )
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        keep = np.flatnonzero(labels >= 0)
        if keep.size == 0:
            raise ValueError("no labelled sample to draw from: every label is -1 (outlier)")
        order = keep[np.argsort(labels[keep], kind="stable")]
        classes, starts = np.unique(labels[order], return_index=True)
        self.classes = classes
        self.members = np.split(order, starts[1:])
        self.camids = None if camids is None else np.asarray(camids)
        if self.camids is not None and self.camids.shape != labels.shape:
            raise ValueError(f"camids shape {self.camids.shape} != labels shape {labels.shape}")
        self.num_instances = num_instances
        self.num_classes_per_batch = min(batch_size // num_instances, len(classes))
        self.num_batches = num_batches
        self.rng = _as_rng(generator)

    @property
    def batches_per_pass(self) -> int:
        return len(self.classes) // self.num_classes_per_batch

    def __len__(self) -> int:
        return self.num_batches if self.num_batches is not None else self.batches_per_pass

    def _instances(self, members: np.ndarray) -> np.ndarray:
        k = self.num_instances
        if self.camids is None:
            return _take(members, k, self.rng)
        anchor = members[self.rng.integers(len(members))]
        others = members[members != anchor]
        other_cams = others[self.camids[others] != self.camids[anchor]]
        pool = other_cams if other_cams.size else others
        if pool.size == 0:  # a single image
            return np.full(k, anchor)
        return np.concatenate(([anchor], _take(pool, k - 1, self.rng)))

    def _one_pass(self) -> Iterator[list[int]]:
        p = self.num_classes_per_batch
        order = self.rng.permutation(len(self.classes))
        for b in range(len(order) // p):
            chosen = order[b * p:(b + 1) * p]
            yield np.concatenate([self._instances(self.members[c]) for c in chosen]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        if self.num_batches is None:
            yield from self._one_pass()
            return
        produced = 0
        while produced < self.num_batches:
            for batch in self._one_pass():
                yield batch
                produced += 1
                if produced == self.num_batches:
                    return
