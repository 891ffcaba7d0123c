"""Harmonic-centrality scores of samples in feature space, and the "information nodes" they pick.

Why here: a sample close to many others is a trustworthy representative of its cluster, the kind
of node a label-refinement step can query (Li et al., "Pseudo labels refinement with intra-camera
similarity", Eq. 1, after Marchiori and Latora's harmonic centrality). The score sums inverse
distances to the k nearest neighbours, each shifted by the mean distance so that a near-duplicate
neighbour cannot dominate (1 / 0). Distances are Euclidean, computed by torch in row blocks so the
N x N matrix never exists at once; the self-distance is neither a neighbour nor part of the mean.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from methods.common.knn import FeatureMatrix, check_features

OFFSETS = ("all", "knn")


def harmonic_centrality(
    features: FeatureMatrix,
    k: int = 15,
    *,
    offset: Literal["all", "knn"] = "all",
    block_rows: int = 1024,
) -> np.ndarray:
    """score(i) = sum over the k nearest neighbours j != i of 1 / (dist(i, j) + mean(dist)).

    offset: "all" takes mean(dist) over every pair i != j; "knn" over the N x k neighbour
    distances that the sums use. Returns float64 scores (N,). When every distance is 0 (all
    features identical) no node stands out: the scores are all 0.
    """
    if offset not in OFFSETS:
        raise ValueError(f"unknown offset {offset!r}; choose from {', '.join(OFFSETS)}")
    if isinstance(features, torch.Tensor) and features.is_cuda:
        x = features.detach().float()
    else:
        x = torch.from_numpy(check_features(features))
    n = x.shape[0]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an integer in [1, N - 1 = {n - 1}], got {k!r}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    neighbours = torch.empty(n, int(k), dtype=torch.float64, device=x.device)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        dist = torch.cdist(x[start:stop], x).clamp_(min=0).double()
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = 0.0  # exactly 0, whatever the matmul rounding
        total += dist.sum()
        dist[rows, rows + start] = float("inf")
        neighbours[start:stop] = torch.topk(dist, int(k), dim=1, largest=False).values
    mean = total / (n * (n - 1)) if offset == "all" else neighbours.mean()
    if float(mean) <= 0.0:
        return np.zeros(n)
    return (1.0 / (neighbours + mean)).sum(dim=1).cpu().numpy()


def information_nodes(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices of the nodes whose score is above the mean score, highest score first (ties: lower
    index first). With `groups` (one non-negative id per node, e.g. cluster labels), each node is
    compared with the mean of its own group instead of the global mean."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    if groups is None:
        threshold = np.full_like(scores, scores.mean())
    else:
        groups = np.asarray(groups)
        if groups.shape != scores.shape or (groups.size and groups.min() < 0):
            raise ValueError("groups must be one non-negative id per score")
        sums = np.bincount(groups, weights=scores)
        counts = np.bincount(groups)
        threshold = (sums / np.maximum(counts, 1))[groups]
    chosen = np.flatnonzero(scores > threshold)
    return chosen[np.lexsort((chosen, -scores[chosen]))]
