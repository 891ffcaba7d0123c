"""Feature memories for memory-based contrastive losses: one slot per cluster, or one per image.

Why here: the Cluster Contrast family keeps one centroid per pseudo class (Dai et al.: initialised
from the cluster means, updated by momentum from each training feature), the BUC family keeps one
slot per image or cluster (V <- (V + v) / 2). Both are the same update rule,
slot <- normalise(momentum * slot + (1 - momentum) * feature), applied per instance in batch order;
it is written once, vectorised over slots (a slot hit twice in a batch is updated twice, in order).
Memories are buffers, so they travel with `state_dict` into checkpoints.

Under torchrun an update first gathers every rank's slice of the global batch, in rank order, so
every rank's memory takes the update one process takes with the same global batch and the memories
never drift apart (`benchmark.engine.distributed.gather_rows`; the identity in one process).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.engine.distributed import gather_rows

UPDATES = ("instance", "hard")


def cluster_means(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean feature of each class 0..C-1 (C = labels.max() + 1); label -1 (outlier) is ignored."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features (N, D) and labels (N,) expected, got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    # Summed on the CPU: CUDA's index_add_ accumulates with atomics, in no fixed order.
    device = features.device
    labels, features = labels.detach().cpu().long(), features.detach().cpu()
    keep = labels >= 0
    if not bool(keep.any()):
        raise ValueError("no labelled feature: every label is -1")
    labels, features = labels[keep], features[keep]
    num = int(labels.max()) + 1
    sums = torch.zeros(num, features.shape[1], dtype=features.dtype)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"labels must be 0..{num - 1} without gaps; no member for {empty}")
    return (sums / counts.unsqueeze(1).to(features.dtype)).to(device)


def _occurrence_rank(slots: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same slot."""
    n = slots.numel()
    order = torch.argsort(slots, stable=True)
    ordered = slots[order]
    idx = torch.arange(n, device=slots.device)
    start = torch.ones(n, dtype=torch.bool, device=slots.device)
    start[1:] = ordered[1:] != ordered[:-1]
    group_start = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values
    rank = torch.empty_like(idx)
    rank[order] = idx - group_start
    return rank


@torch.no_grad()
def momentum_update_(
    bank: torch.Tensor, slots: torch.Tensor, features: torch.Tensor, momentum: float
) -> None:
    """In place, for each (slot, feature) in order: bank[slot] <- normalise(momentum * bank[slot]
    + (1 - momentum) * feature)."""
    slots = slots.to(bank.device).long()
    features = features.detach().to(bank.device, bank.dtype)
    rank = _occurrence_rank(slots)
    for r in range(int(rank.max()) + 1 if slots.numel() else 0):
        sel = rank == r
        s = slots[sel]
        bank[s] = F.normalize(momentum * bank[s] + (1.0 - momentum) * features[sel], dim=1)


class ClusterMemory(nn.Module):
    """One L2-normalised centroid per pseudo class (buffer `centroids`, (C, D)).

    `update="instance"`: every feature of the batch updates its centroid in turn (Cluster Contrast's
    momentum update); `update="hard"`: per class in the batch only its hardest feature (lowest
    cosine similarity to the centroid) does (the paper's batch-hard variant).
    """

    def __init__(
        self, centroids: torch.Tensor, *, momentum: float = 0.1, update: str = "instance"
    ) -> None:
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"unknown memory update {update!r}; choose from {', '.join(UPDATES)}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.update_rule = update
        self.register_buffer("centroids", F.normalize(centroids.detach().float(), dim=1).clone())

    @classmethod
    def from_features(
        cls, features: torch.Tensor, labels: torch.Tensor, **kwargs
    ) -> ClusterMemory:
        """Centroids initialised from the (normalised) cluster means of `features`."""
        return cls(cluster_means(features, labels), **kwargs)

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = F.normalize(gather_rows(features.detach().to(self.centroids)), dim=1)
        labels = gather_rows(labels.detach()).to(self.centroids.device).long()
        if self.update_rule == "hard":
            sims = (features * self.centroids[labels]).sum(1)
            classes = torch.unique(labels)
            # Per class, the index of its least similar feature (ties: the first one).
            big = torch.full((len(classes), len(labels)), float("inf"), device=sims.device)
            member = labels.unsqueeze(0) == classes.unsqueeze(1)
            hardest = torch.where(member, sims.unsqueeze(0), big).argmin(1)
            features, labels = features[hardest], classes
        momentum_update_(self.centroids, labels, features, self.momentum)


class InstanceMemory(nn.Module):
    """One L2-normalised slot per image (buffer `features`, (N, D)); momentum 0.5 gives BUC's
    v <- normalise((v + f) / 2)."""

    def __init__(self, features: torch.Tensor, *, momentum: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("features", F.normalize(features.detach().float(), dim=1).clone())

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @torch.no_grad()
    def update(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        momentum_update_(
            self.features, gather_rows(indices.detach()),
            F.normalize(gather_rows(features.detach().float()), dim=1), self.momentum
        )

    def cluster_centroids(self, labels: torch.Tensor) -> torch.Tensor:
        """Normalised mean slot of each class 0..C-1 (for a cluster-level memory after merging)."""
        return F.normalize(cluster_means(self.features, labels), dim=1)
