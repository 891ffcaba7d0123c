"""Validation splits carved from training data: what a sweep tunes on instead of the test split.

Integrity rule 1 of DESIGN.md: no test-split number reaches model selection or tuning. A sweep
therefore never touches the dataset's query, gallery or (for clustering) the part it will be scored
on: `carve_validation` reads only the training split and returns a smaller training set plus a
validation set made from held-out training data, whose labels are the hold-out's own.

- re-ID: a seeded fraction of the training *identities* is held out, so that no validation identity
  is ever trained on (the test protocol's identities are disjoint from training ones too). For each
  held-out identity seen by at least two cameras, one image per camera becomes a query and the rest
  go to the gallery; an identity seen by one camera can never be matched under the single-query
  protocol (same-camera matches are excluded), so all its images are gallery distractors.
- clustering: a seeded, class-stratified fraction of the images is held out; the method learns on
  the rest and the hold-out is clustered with k-means (k = number of classes) for the objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.data.types import ClusteringDataset, Dataset, ReidDataset, ReidSplit

DEFAULT_FRACTION = 0.2


@dataclass(frozen=True)
class ValidationSplit:
    """`train` feeds the method (its `train` split / its images); `validation` is evaluated."""

    train: Dataset
    validation: Dataset
    description: dict[str, Any] = field(default_factory=dict)
    # indices of the held-out images in the source: its training split (re-ID) or its images
    # (clustering), sorted
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def carve_validation(
    dataset: Dataset, *, seed: int, fraction: float = DEFAULT_FRACTION
) -> ValidationSplit:
    """Hold out `fraction` of the training identities (re-ID) or images (clustering), seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if isinstance(dataset, ReidDataset):
        return _carve_reid(dataset, seed, fraction)
    if isinstance(dataset, ClusteringDataset):
        return _carve_clustering(dataset, seed, fraction)
    raise TypeError(f"cannot carve a validation split from a {type(dataset).__name__}")


def _subset(split: ReidSplit, name: str, index: np.ndarray) -> ReidSplit:
    index = np.sort(index)
    return ReidSplit(name=name, paths=[split.paths[i] for i in index], pids=split.pids[index].copy(),
                     camids=split.camids[index].copy())


def _carve_reid(dataset: ReidDataset, seed: int, fraction: float) -> ValidationSplit:
    train = dataset.train  # the only split read: query and gallery are never touched
    ids = np.unique(train.pids)
    ids = ids[ids > 0] if (ids > 0).any() else ids  # a distractor id 0, if any, stays in training
    rng = np.random.default_rng([seed, 0x5A11])
    multi_camera = np.array([np.unique(train.camids[train.pids == i]).size > 1 for i in ids])
    held_count = max(2, int(round(fraction * ids.size)))
    if held_count >= ids.size or multi_camera.sum() < 2:
        raise ValueError(
            f"{dataset.name}: cannot hold out {fraction:.0%} of {ids.size} training identities for "
            f"validation (need at least 2 seen by two cameras and some left to train on)"
        )
    held = rng.choice(ids, size=held_count, replace=False)
    held_mask = np.isin(train.pids, held)
    query_idx, gallery_idx = [], []
    for pid in np.sort(held):
        own = np.flatnonzero(train.pids == pid)
        cams = np.unique(train.camids[own])
        if cams.size < 2:
            gallery_idx.extend(own.tolist())
            continue
        for cam in cams:
            in_cam = own[train.camids[own] == cam]
            pick = int(rng.choice(in_cam))
            query_idx.append(pick)
            gallery_idx.extend(int(i) for i in in_cam if i != pick)
    kept = _subset(train, "train", np.flatnonzero(~held_mask))
    carved = ReidDataset(
        name=f"{dataset.name} (validation carved from train)",
        train=kept,
        query=_subset(train, "validation-query", np.asarray(query_idx, dtype=np.int64)),
        gallery=_subset(train, "validation-gallery", np.asarray(gallery_idx, dtype=np.int64)),
        root=dataset.root,
    )
    description = {
        "source": "training split only",
        "held_out": "identities",
        "fraction": fraction,
        "seed": seed,
        "train_images": kept.num_images,
        "train_identities": kept.num_identities,
        "validation_identities": int(held.size),
        "validation_query_images": len(query_idx),
        "validation_gallery_images": len(gallery_idx),
        "query_rule": "one image per (identity, camera) of held-out identities seen by >= 2 cameras",
    }
    return ValidationSplit(train=carved, validation=carved, description=description,
                           held_out=np.flatnonzero(held_mask))


def _carve_clustering(dataset: ClusteringDataset, seed: int, fraction: float) -> ValidationSplit:
    rng = np.random.default_rng([seed, 0x5A11])
    held = []
    for c in np.unique(dataset.labels):
        members = np.flatnonzero(dataset.labels == c)
        count = int(round(fraction * members.size))
        if count < 1 or count >= members.size:
            raise ValueError(
                f"{dataset.name}: class {c} has {members.size} images, too few to hold out "
                f"{fraction:.0%} for validation"
            )
        held.append(rng.choice(members, size=count, replace=False))
    held_idx = np.sort(np.concatenate(held))
    kept_idx = np.setdiff1d(np.arange(len(dataset.labels)), held_idx)

    description = {
        "source": "all images (the deep-clustering protocol learns on train+test)",
        "held_out": "images, stratified by class",
        "fraction": fraction,
        "seed": seed,
        "train_images": int(kept_idx.size),
        "validation_images": int(held_idx.size),
    }
    return ValidationSplit(train=clustering_part(dataset, kept_idx, "training part"),
                           validation=clustering_part(dataset, held_idx, "validation part"),
                           description=description, held_out=held_idx)


def clustering_part(dataset: ClusteringDataset, index: np.ndarray, name: str) -> ClusteringDataset:
    """The images at `index` (in that order) as a dataset of their own."""
    return ClusteringDataset(
        name=f"{dataset.name} ({name})", images=dataset.images[index],
        labels=dataset.labels[index], num_classes=dataset.num_classes,
        parts={"all": slice(0, index.size)}, root=dataset.root,
    )


def without_images(dataset: ClusteringDataset, excluded: np.ndarray, name: str) -> ClusteringDataset:
    """The dataset less the images at `excluded` (dataset order kept): what a clustering cell
    scores when some images' labels selected or tuned its model (DESIGN.md, integrity rule 1)."""
    keep = np.setdiff1d(np.arange(len(dataset.labels)), np.asarray(excluded, dtype=np.int64))
    return clustering_part(dataset, keep, name)
