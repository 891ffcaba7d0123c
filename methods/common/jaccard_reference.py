"""Direct, dense k-reciprocal Jaccard distance, written from the definition for checking and timing.

This is the yardstick for `methods.common.jaccard`: it builds every set with explicit per-sample
loops and Python sets, fills dense N x N matrices the way the published code does, computes the
neighbour ranking by its own dense matrix product and sort (not faiss), and evaluates the Jaccard
distance as 1 - sum(min) / sum(max) without assuming rows sum to 1. It is slow (per-sample loops)
and needs O(N^2) memory: use it for tests and for the `perf` comparison only.
`loop_jaccard_published_structure` does the same work in the published code's structure (numpy
per-sample loops on a flat-index ranking), the side `perf` times beside ours.
See `methods.common.jaccard` for the definition and Cluster Contrast's list lengths.
"""

from __future__ import annotations

import numpy as np

from methods.common.jaccard import check_k, half_depth
from methods.common.knn import FeatureMatrix, check_features, check_normalised


def dense_ranking(
    features: np.ndarray, k: int, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Full similarity matrix (N x N, `dtype`) and the first k columns of each row's ranking.

    Ties are broken by the lower index (a stable sort of the descending similarities).
    """
    x = features.astype(dtype)
    sims = x @ x.T
    n = sims.shape[0]
    ranking = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        row = sims[i]
        top = np.argpartition(-row, k - 1)[:k] if k < n else np.arange(n)
        threshold = row[top].min()
        # everything tied with the k-th value competes, so ties resolve to the lower index
        contenders = np.flatnonzero(row >= threshold)
        order = np.lexsort((contenders, -row[contenders]))
        ranking[i] = contenders[order[:k]]
    return sims, ranking


def k_reciprocal_set(ranking: np.ndarray, i: int, k: int) -> set[int]:
    """{j in N(i, k) : i in N(j, k)}, N(., k) being the first k entries of a ranking row."""
    return {int(j) for j in ranking[i, :k] if i in ranking[j, :k]}


def expanded_set(ranking: np.ndarray, i: int, k1: int) -> set[int]:
    """R*(i): R(i, k1) plus the half set of each candidate that overlaps R(i, k1) by more than 2/3."""
    core = k_reciprocal_set(ranking, i, k1)
    h = half_depth(k1)
    expanded = set(core)
    for q in core:
        half = k_reciprocal_set(ranking, q, h)
        if len(half & core) > 2.0 / 3.0 * len(half):
            expanded |= half
    return expanded


def jaccard_distance_dense_reference(
    features: FeatureMatrix, k1: int = 30, k2: int = 6, dtype: type = np.float64
) -> np.ndarray:
    """Dense N x N k-reciprocal Jaccard distance (pairs sharing nothing get exactly 1).

    dtype sets the precision of the N x N matrices (float32 halves the memory at Market scale, as
    the published code runs it).
    """
    x = check_features(features)
    check_normalised(x)
    check_k(x.shape[0], k1, k2)
    sims, ranking = dense_ranking(x, k1, dtype)
    return dense_jaccard_from_ranking(sims, ranking, k1, k2)


def dense_jaccard_from_ranking(
    sims: np.ndarray, ranking: np.ndarray, k1: int, k2: int
) -> np.ndarray:
    """The Jaccard step of the reference, from the dense similarities and the (N, >= k1) ranking."""
    n = sims.shape[0]
    dtype = sims.dtype
    v = np.zeros((n, n), dtype=dtype)
    for i in range(n):
        members = np.array(sorted(expanded_set(ranking, i, k1)), dtype=np.int64)
        weights = np.exp(-(2.0 - 2.0 * sims[i, members].astype(np.float64)))
        v[i, members] = weights / weights.sum()

    if k2 > 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[ranking[i, :k2]].mean(axis=0)
        v = v_qe
        del v_qe

    row_sums = v.sum(axis=1, dtype=np.float64)
    nz_rows, nz_cols = np.nonzero(v)
    by_col = np.argsort(nz_cols, kind="stable")
    holders = np.split(nz_rows[by_col], np.cumsum(np.bincount(nz_cols, minlength=n))[:-1])
    del nz_rows, nz_cols, by_col  # holders[c]: the rows with a non-zero in column c
    dist = np.ones((n, n), dtype=dtype)
    for i in range(n):
        overlap = np.zeros(n, dtype=np.float64)
        for c in np.flatnonzero(v[i]):
            rows = holders[c]
            overlap[rows] += np.minimum(v[i, c], v[rows, c])
        shared = np.flatnonzero(overlap)
        # sum(max) = |v_i|_1 + |v_j|_1 - sum(min)
        union = row_sums[i] + row_sums[shared] - overlap[shared]
        dist[i, shared] = 1.0 - overlap[shared] / union
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def loop_jaccard_published_structure(
    features: np.ndarray, ranking: np.ndarray, k1: int, k2: int
) -> np.ndarray:
    """Dense float32 Jaccard distance computed the way Cluster Contrast's code is structured.

    The issue's 21.7 s yardstick was measured on one machine at one time; this reproduces the same
    work here so that `perf` can time both pipelines side by side: per-sample numpy loops for the
    reciprocal sets and their expansion, distances of each sample to its expanded set by a small
    matrix product, dense N x N float32 encodings, query expansion by row means, an inverted index
    built by scanning every column of the dense encoding, and a per-sample loop that accumulates
    the minima over the rows sharing each non-zero column. `ranking` is the (N, >= k1) kNN list of
    a flat index search. The definitions and list lengths are those of `methods.common.jaccard`.
    """
    x = check_features(features)
    n = x.shape[0]
    lists = np.ascontiguousarray(ranking[:, :k1], dtype=np.int64)
    h = half_depth(k1)

    def reciprocal(i: int, depth: int) -> np.ndarray:
        forward = lists[i, :depth]
        backward = lists[forward, :depth]
        return forward[np.where(backward == i)[0]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        core = reciprocal(i, k1)
        expanded = core
        for candidate in core:
            half = reciprocal(int(candidate), h)
            if len(np.intersect1d(half, core)) > 2.0 / 3.0 * len(half):
                expanded = np.append(expanded, half)
        expanded = np.unique(expanded)
        d = 2.0 - 2.0 * (x[expanded] @ x[i]).astype(np.float64)
        weights = np.exp(-d)
        v[i, expanded] = weights / weights.sum()
    if k2 > 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[lists[i, :k2]].mean(axis=0)
        v = v_qe
        del v_qe
    holders = [np.where(v[:, c] != 0)[0] for c in range(n)]
    dist = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        overlap = np.zeros(n, dtype=np.float32)
        for c in np.where(v[i] != 0)[0]:
            rows = holders[c]
            overlap[rows] += np.minimum(v[i, c], v[rows, c])
        dist[i] = 1.0 - overlap / (2.0 - overlap)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist
