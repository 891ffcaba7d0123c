"""Bottom-up cluster merging, the pseudo-labelling step of BUC (Lin et al., AAAI 2019) and the
methods built on it (similarity guidance: an individual-group distance; FGU: minimum / maximum /
centroid linkage).

Why these pieces are separate: the family shares one procedure and differs in one place. Every image
starts as its own cluster; after some training, a merge step joins the n closest pairs of current
clusters (n = N * merge fraction, so after t steps there are N - t * n clusters) and training goes
on. What "closest" means is the part each paper changes. So the dissimilarity between clusters
(`cluster_distances`, or an adapter's own C x C matrix), the merge rule (`merge_step`, with BUC's
diversity term lambda * (|A| + |B|)), the count rule (`merges_per_step`, `cluster_count`) and the
epoch layout of a merging run (`MergeSchedule`) are written once each and composed by the adapters.

The merge rule: candidate pairs (i < j) are ranked by dissimilarity plus the diversity term,
computed once per step from the cluster sizes at the start of the step (as BUC does), ties broken by
the lower pair index; a union-find walks the ranking and skips pairs whose clusters are already
joined, so a step performs exactly n merges (one merge = two current groups become one), never more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.cluster.hierarchy import DisjointSet
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import pairwise_distances, pairwise_distances_chunked

from methods.common.knn import FeatureMatrix, check_features

Linkage = Literal["min", "max", "average", "centroid"]
LINKAGES = ("min", "max", "average", "centroid")
METRICS = ("euclidean", "sqeuclidean", "cosine")

# How the block reductions of `cluster_distances` combine sample distances into a cluster distance.
_REDUCE: dict[str, tuple[np.ufunc, float]] = {
    "min": (np.minimum, np.inf),
    "max": (np.maximum, -np.inf),
    "average": (np.add, 0.0),
}


# -- labels and counts ----------------------------------------------------------------------------
def check_labels(
    labels: np.ndarray, n_samples: int | None = None, name: str = "labels"
) -> np.ndarray:
    """`labels` as a 1-D int64 array of cluster ids 0..C-1, every id used (no outliers, no gaps).

    Raises ValueError naming what is wrong."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of cluster ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer cluster ids, got dtype {arr.dtype}")
    if n_samples is not None and arr.size != n_samples:
        raise ValueError(f"{name}: {arr.size} labels for {n_samples} samples")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError(
            f"{name}: negative id {int(arr.min())}; bottom-up merging keeps every sample in a "
            "cluster (give outliers their own singleton clusters)"
        )
    counts = np.bincount(arr)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"{name}: ids must be 0..{counts.size - 1} without gaps; unused {missing}")
    return arr


def cluster_sizes(labels: np.ndarray) -> np.ndarray:
    """Number of members of each cluster 0..C-1."""
    return np.bincount(check_labels(labels))


def merges_per_step(n_samples: int, merge_fraction: float) -> int:
    """n = floor(N * merge fraction), the number of merges one step performs (BUC's m_p * N)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0.0 < merge_fraction < 1.0:
        raise ValueError(f"merge_fraction must lie in (0, 1), got {merge_fraction}")
    n = int(n_samples * merge_fraction)
    if n < 1:
        raise ValueError(
            f"merge_fraction {merge_fraction} of {n_samples} samples is less than one merge per "
            "step"
        )
    return n


def cluster_count(n_samples: int, merge_fraction: float, step: int) -> int:
    """Clusters after `step` merge steps starting from singletons: N - step * n."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    count = n_samples - step * merges_per_step(n_samples, merge_fraction)
    if count < 1:
        raise ValueError(
            f"{step} merge steps of {merges_per_step(n_samples, merge_fraction)} merges would "
            f"leave {count} clusters of {n_samples} samples; use fewer steps or a smaller merge "
            "fraction"
        )
    return count


# -- dissimilarity between clusters ---------------------------------------------------------------
def cluster_distances(
    features: FeatureMatrix,
    labels: np.ndarray,
    linkage: Linkage = "min",
    *,
    metric: str = "euclidean",
    working_memory: float | None = None,
) -> np.ndarray:
    """The C x C dissimilarity between the clusters 0..C-1 of `labels`, float64, symmetric, zero
    diagonal.

    linkage: "min" (single linkage: the closest pair of members, BUC's D(A, B)), "max" (complete
    linkage: the farthest pair), "average" (mean over all member pairs), "centroid" (distance
    between the cluster means). metric: "euclidean" (BUC: ||v_a - v_b||), "sqeuclidean" or
    "cosine", computed by scikit-learn.

    Sample distances are computed in row blocks (scikit-learn's `pairwise_distances_chunked`,
    `working_memory` in MiB) and folded into the cluster matrix block by block, so memory is
    O(C^2 + block * N), never N x N.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; choose from {', '.join(LINKAGES)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    x = check_features(features)
    labels = check_labels(labels, x.shape[0])
    order = np.argsort(labels, kind="stable")
    xs, ls = x[order], labels[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])  # first row of each cluster 0..C-1
    sizes = np.diff(np.r_[starts, ls.size])
    num = starts.size

    if linkage == "centroid":
        means = np.add.reduceat(xs.astype(np.float64), starts, axis=0) / sizes[:, None]
        out = pairwise_distances(means, metric=metric)
        return _symmetric(out, np.minimum)

    ufunc, fill = _REDUCE[linkage]
    out = np.full((num, num), fill, dtype=np.float64)
    row = 0
    singletons = num == ls.size
    for block in pairwise_distances_chunked(xs, metric=metric, working_memory=working_memory):
        if linkage == "average":
            block = block.astype(np.float64)
        rows = ls[row:row + block.shape[0]]
        # (rows, C): reduced over each cluster's columns (nothing to reduce for singletons)
        by_cluster = block if singletons else ufunc.reduceat(block, starts, axis=1)
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        if first.size < rows.size:  # (clusters in block, C): reduced over each cluster's rows
            by_cluster = ufunc.reduceat(by_cluster, first, axis=0)
        ids = rows[first]
        out[ids] = ufunc(out[ids], by_cluster)
        row += block.shape[0]
    if linkage == "average":
        out /= np.outer(sizes, sizes)
    # Blocked products can differ in the last bit between d(a, b) and d(b, a).
    return _symmetric(out, ufunc if linkage != "average" else None)


def _symmetric(matrix: np.ndarray, combine: Callable | None) -> np.ndarray:
    matrix = combine(matrix, matrix.T) if combine is not None else (matrix + matrix.T) / 2.0
    np.fill_diagonal(matrix, 0.0)
    return matrix


# -- the merge rule -------------------------------------------------------------------------------
def _check_matrix(cluster_dist: np.ndarray, num: int | None = None) -> np.ndarray:
    """`cluster_dist` as a square float64 matrix (C x C when `num` = C is given)."""
    dist = np.asarray(cluster_dist, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1] or dist.shape[0] == 0:
        raise ValueError(
            f"cluster_dist: expected a non-empty square matrix, got shape {dist.shape}"
        )
    if num is not None and dist.shape[0] != num:
        raise ValueError(
            f"cluster_dist: expected a {num} x {num} matrix for {num} clusters, got {dist.shape}"
        )
    if np.isnan(dist).any():
        raise ValueError("cluster_dist: holds NaN")
    return dist


def _ranked_candidates(
    dist: np.ndarray, penalty: np.ndarray, count: int, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest finite penalised pairs (i < j), ordered by (value, i, j); fewer when
    fewer exist. Scans the upper triangle in row blocks, keeping per block every pair that ties
    with or beats the block's count-th value, so no pair of the global top `count` is lost."""
    num = dist.shape[0]
    cand_val, cand_i, cand_j = [], [], []
    cols = np.arange(num)
    for start in range(0, num - 1, block_rows):
        stop = min(start + block_rows, num - 1)
        vals = dist[start:stop] + penalty[start:stop, None] + penalty[None, :]
        vals[cols[None, :] <= np.arange(start, stop)[:, None]] = np.inf  # keep j > i only
        flat = vals.ravel()
        finite = np.flatnonzero(np.isfinite(flat))
        if finite.size == 0:
            continue
        if finite.size > count:
            threshold = np.partition(flat[finite], count - 1)[count - 1]
            finite = finite[flat[finite] <= threshold]
        rows, js = np.divmod(finite, num)
        cand_val.append(flat[finite])
        cand_i.append(rows + start)
        cand_j.append(js)
    if not cand_val:
        return np.empty(0), np.empty((0, 2), dtype=np.int64)
    val, i, j = np.concatenate(cand_val), np.concatenate(cand_i), np.concatenate(cand_j)
    order = np.lexsort((j, i, val))[:count]
    return val[order], np.stack([i[order], j[order]], axis=1)


def select_merges(
    cluster_dist: np.ndarray,
    n_merges: int,
    *,
    sizes: np.ndarray | None = None,
    size_penalty: float = 0.0,
    block_rows: int = 1024,
) -> np.ndarray:
    """The pairs of clusters that one merge step joins, in the order they are joined: (k, 2) int64.

    Pairs (i < j; only the upper triangle is read) are ranked by cluster_dist[i, j] +
    size_penalty * (sizes[i] + sizes[j]), ties by the lower (i, j); walking the ranking, a pair
    whose clusters are already joined is skipped, and the walk stops after `n_merges` merges.
    k < n_merges only when the finite pairs run out (pairs at +inf are never merged).
    """
    dist = _check_matrix(cluster_dist)
    num = dist.shape[0]
    if not isinstance(n_merges, (int, np.integer)) or n_merges < 0:
        raise ValueError(f"n_merges must be a non-negative integer, got {n_merges!r}")
    if n_merges > num - 1:
        raise ValueError(f"cannot make {n_merges} merges among {num} clusters (at most {num - 1})")
    if size_penalty < 0:
        raise ValueError(f"size_penalty must be >= 0, got {size_penalty}")
    if sizes is None:
        if size_penalty:
            raise ValueError("size_penalty needs the cluster sizes")
        sizes = np.zeros(num)
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (num,):
        raise ValueError(f"sizes: expected {num} cluster sizes, got shape {sizes.shape}")
    if n_merges == 0:
        return np.empty((0, 2), dtype=np.int64)
    penalty = size_penalty * sizes

    # Most of the first pairs usually join new clusters; widen the candidate list until the
    # union-find has made n_merges merges or every finite pair has been seen.
    total = num * (num - 1) // 2
    count = min(4 * n_merges, total)
    while True:
        _, pairs = _ranked_candidates(dist, penalty, count, block_rows)
        groups = DisjointSet(range(num))
        joined = []
        for a, b in pairs.tolist():
            if groups.merge(a, b):
                joined.append((a, b))
                if len(joined) == n_merges:
                    break
        exhausted = len(pairs) < count or count == total
        if len(joined) == n_merges or exhausted:
            return np.array(joined, dtype=np.int64).reshape(-1, 2)
        count = min(2 * count, total)


def apply_merges(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Labels after joining the given cluster pairs: 0..C'-1, numbered by the smallest old id in
    each new cluster (so the order of clusters is kept)."""
    labels = check_labels(labels)
    num = int(labels.max()) + 1
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num):
        raise ValueError(
            f"pairs: cluster ids must lie in [0, {num}), got {pairs.min()}..{pairs.max()}"
        )
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num, num))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max() + 1, num, dtype=np.int64)
    np.minimum.at(first, component, np.arange(num))
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[component][labels]


def merge_step(
    labels: np.ndarray,
    cluster_dist: np.ndarray,
    n_merges: int,
    size_penalty: float = 0.0,
) -> np.ndarray:
    """One bottom-up merge step: new labels 0..C'-1 with C' = C - n_merges (fewer merges only when
    `cluster_dist` has fewer finite pairs). `cluster_dist` is C x C over the clusters of `labels`;
    size_penalty is BUC's diversity weight lambda, applied to the current cluster sizes."""
    labels = check_labels(labels)
    sizes = np.bincount(labels)
    dist = _check_matrix(cluster_dist, sizes.size)
    pairs = select_merges(dist, n_merges, sizes=sizes, size_penalty=size_penalty)
    return apply_merges(labels, pairs)



def linkage_merge_step(
    features: np.ndarray,
    labels: np.ndarray,
    linkage: str,
    metric: str,
    merge_fraction: float,
    size_penalty: float = 0.0,
) -> np.ndarray:
    """BUC's step: `merges_per_step` merges of the closest clusters under `linkage` over
    `features` (`cluster_distances`), with the diversity term `size_penalty`."""
    dist = cluster_distances(features, labels, linkage, metric=metric)
    n = merges_per_step(len(labels), merge_fraction)
    return merge_step(labels, dist, n, size_penalty=size_penalty)


# -- the epoch layout of a merging run ------------------------------------------------------------
@dataclass(frozen=True)
class MergeSchedule:
    """Stage 0 trains `first_epochs` on singletons; each of the `merge_steps` later stages starts
    with a merge and trains `step_epochs`. Epochs are numbered through all stages, so the harness's
    per-epoch checkpoints and resume cover the whole run."""

    first_epochs: int
    step_epochs: int
    merge_steps: int

    def __post_init__(self) -> None:
        if self.first_epochs < 1 or self.step_epochs < 1 or self.merge_steps < 0:
            raise ValueError(
                f"MergeSchedule needs first_epochs >= 1, step_epochs >= 1, merge_steps >= 0; got "
                f"{self.first_epochs}, {self.step_epochs}, {self.merge_steps}"
            )

    @property
    def num_epochs(self) -> int:
        return self.first_epochs + self.merge_steps * self.step_epochs

    def locate(self, epoch: int) -> tuple[int, int]:
        """(stage, epoch within the stage) of a run epoch; stage s trains after s merges."""
        if not 0 <= epoch < self.num_epochs:
            raise ValueError(f"epoch {epoch} outside the run's 0..{self.num_epochs - 1}")
        if epoch < self.first_epochs:
            return 0, epoch
        stage, within = divmod(epoch - self.first_epochs, self.step_epochs)
        return stage + 1, within

    def merges_before(self, epoch: int) -> bool:
        """Whether a merge step starts this epoch (the first epoch of every stage but the first)."""
        stage, within = self.locate(epoch)
        return stage > 0 and within == 0
