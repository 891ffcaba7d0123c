"""Selective updates of a cluster memory: which of a batch's features move their class centroid.

Why a module of its own: Cluster Contrast moves a centroid with every feature of its class (or, in
its first version, with the hardest one: `ClusterMemory(update="hard")`); GCL + SCL (Jia et al.,
AAAI 2022, Eq. 6) moves it with the top-k features *least similar* to it, arguing that the single
hardest one is often a clustering error, and compares that with an average and a random pick
(its Table 3). Any memory-based method can ask the same question, so the selection rules live here,
next to `methods.common.memory`, whose momentum update they feed and whose behaviour they leave as
it is.

All selections are returned in *rank-major* order: first each class's rank-1 pick, then each
class's rank-2 pick, ...; classes in ascending label order within a rank. Fed to
`momentum_update_`, which applies a slot's updates in the order they are listed, this applies
Eq. 6 for i = 1, ..., k in turn.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from methods.common.memory import cluster_means, momentum_update_

POLICIES = ("topk", "random", "average")


def _check(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> None:
    if features.ndim != 2 or centroids.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"features (B, D) and centroids (C, D) must share D, got {tuple(features.shape)} and "
            f"{tuple(centroids.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch size {features.shape[0]}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= centroids.shape[0]):
        raise ValueError(f"labels must lie in [0, {centroids.shape[0]})")


def _rank_within_class(labels: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank): `order` lists the batch grouped by label ascending, each group sorted by `key`
    ascending (ties by batch position); rank[p] is the position of order[p] inside its group."""
    order = np.lexsort((np.arange(labels.size), key, labels))
    grouped = labels[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, grouped.size]))
    return order, np.arange(grouped.size) - group_start


def _rank_major(order: np.ndarray, rank: np.ndarray, labels: np.ndarray, k: int) -> torch.Tensor:
    keep = rank < k
    chosen, chosen_rank = order[keep], rank[keep]
    ordered = chosen[np.lexsort((labels[chosen], chosen_rank))]
    return torch.from_numpy(ordered.astype(np.int64))


@torch.no_grad()
def centroid_similarity(
    features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Cosine similarity of each feature with its own class centroid (centroids taken as given)."""
    _check(features, labels, centroids)
    f = F.normalize(features.detach().float(), dim=1)
    return (f * centroids.detach().float().to(f.device)[labels.to(f.device).long()]).sum(1)


@torch.no_grad()
def least_similar(
    features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, k: int
) -> torch.Tensor:
    """Batch indices of the k features of each class least similar to its centroid (all of a class
    with fewer than k), rank-major: the least similar of every class first. Ties: batch order."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    sims = centroid_similarity(features, labels, centroids).cpu().double().numpy()
    lab = labels.detach().cpu().long().numpy()
    order, rank = _rank_within_class(lab, sims)
    return _rank_major(order, rank, lab, int(k))


def random_pick(labels: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Batch indices of k features per class drawn uniformly without replacement (all of a class
    with fewer than k), rank-major."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    lab = labels.detach().cpu().long().numpy()
    order, rank = _rank_within_class(lab, rng.random(lab.size))
    return _rank_major(order, rank, lab, int(k))


def select_queries(
    policy: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    k: int,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The batch indices a policy lets update the memory: "topk" the k least similar per class,
    "random" k random ones per class, "average" every index (in batch order)."""
    if policy == "topk":
        return least_similar(features, labels, centroids, k)
    if policy == "random":
        return random_pick(labels, k, rng)
    if policy == "average":
        _check(features, labels, centroids)
        return torch.arange(labels.numel())
    raise ValueError(f"unknown memory policy {policy!r}; choose from {', '.join(POLICIES)}")


@torch.no_grad()
def selective_update_(
    centroids: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    selected: torch.Tensor,
    *,
    momentum: float,
    average: bool = False,
) -> None:
    """In place: move centroids with the selected features, each renormalised.

    average=False: centroid <- normalise(momentum * centroid + (1 - momentum) * q) for each selected
    q in the listed order (Eq. 6 of GCL + SCL with rank-major selections). average=True: once per
    class, with q the mean of its selected normalised features (the "Average" policy).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    _check(features, labels, centroids)
    selected = selected.to(torch.long).cpu()
    if selected.numel() == 0:
        return
    feats = F.normalize(features.detach().float(), dim=1).cpu()[selected]
    labs = labels.detach().long().cpu()[selected]
    if average:
        classes, inverse = torch.unique(labs, return_inverse=True)
        feats, labs = cluster_means(feats, inverse), classes
    momentum_update_(centroids, labs, feats, momentum)
