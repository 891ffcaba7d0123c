"""Pseudo labels from distances or features: DBSCAN and agglomerative clustering (scikit-learn).

Every clustering-based method turns its per-epoch clustering into integer pseudo labels with -1
for samples left out (DBSCAN's noise). Keeping the conversion here means that every adapter treats
sparse distance matrices, outliers and label numbering the same way.

A sparse distance matrix is read as "absent entry = not a neighbour", which equals the dense matrix
exactly when every absent pair is farther than eps. For the k-reciprocal Jaccard distance an absent
pair has distance 1, so eps < 1 is required with sparse input. Stored zeros (identical encodings)
are distances of 0 and stay neighbours: the matrix is never passed through `eliminate_zeros`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN, AgglomerativeClustering

from methods.common.knn import FeatureMatrix, check_features


def _check_square(dist: np.ndarray | sp.spmatrix | sp.sparray) -> None:
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"distance matrix must be square (N x N), got shape {dist.shape}")
    if dist.shape[0] == 0:
        raise ValueError("distance matrix is empty")


def within_radius(dist: sp.spmatrix | sp.sparray, eps: float) -> sp.csr_matrix:
    """The stored entries <= eps of a sparse distance matrix, explicit zeros kept."""
    csr = sp.csr_matrix(dist)
    csr.sum_duplicates()  # duplicates would otherwise be read as two neighbours
    keep = csr.data <= eps
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=csr.shape[0]))])
    return sp.csr_matrix((csr.data[keep], csr.indices[keep], indptr), shape=csr.shape)


def dbscan_pseudo_labels(
    dist: np.ndarray | sp.spmatrix | sp.sparray,
    eps: float = 0.6,
    min_samples: int = 4,
    seed: int | None = None,
) -> np.ndarray:
    """DBSCAN on a precomputed distance matrix: int64 labels 0..C-1, -1 for outliers.

    dist: dense (N, N) or sparse; for sparse input, absent entries are non-neighbours and eps must
    be below 1 (absent Jaccard pairs are at distance 1). Neighbourhoods are dist <= eps and include
    the sample itself, as in scikit-learn. DBSCAN is deterministic; `seed` is accepted so that all
    pseudo-labelling functions share one signature, and is not used.
    """
    del seed
    if not 0 < eps:
        raise ValueError(f"eps must be positive, got {eps}")
    if not isinstance(min_samples, (int, np.integer)) or min_samples < 1:
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
    _check_square(dist)
    if sp.issparse(dist):
        if eps >= 1:
            raise ValueError(
                f"eps={eps} >= 1 with a sparse distance matrix: absent pairs (distance 1) would be "
                "neighbours in the dense matrix; pass the dense matrix or use eps < 1"
            )
        data = sp.csr_matrix(dist).data
        if data.size and (not np.isfinite(data).all() or data.min() < 0):
            raise ValueError("distance matrix holds negative, NaN or infinite entries")
        matrix = within_radius(dist, eps)
    else:
        matrix = np.asarray(dist)
        if not np.isfinite(matrix).all() or matrix.min() < 0:
            raise ValueError("distance matrix holds negative, NaN or infinite entries")
    labels = DBSCAN(eps=eps, min_samples=int(min_samples), metric="precomputed").fit_predict(matrix)
    return labels.astype(np.int64)


def agglomerative_pseudo_labels(
    features: FeatureMatrix,
    n_clusters: int,
    linkage: Literal["ward", "complete", "average", "single"] = "average",
    connectivity: np.ndarray | sp.spmatrix | sp.sparray | None = None,
    metric: str = "euclidean",
) -> np.ndarray:
    """Agglomerative clustering of features into exactly `n_clusters` groups: int64 labels 0..C-1.

    linkage and metric are scikit-learn's ("ward" needs "euclidean"); connectivity optionally
    restricts merges to a (sparse) neighbour graph, e.g. a kNN graph.
    """
    x = check_features(features)
    n = x.shape[0]
    if not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be an integer in [1, N={n}], got {n_clusters!r}")
    if linkage == "ward" and metric != "euclidean":
        raise ValueError(f"ward linkage needs metric='euclidean', got {metric!r}")
    if connectivity is not None and connectivity.shape != (n, n):
        raise ValueError(f"connectivity must be (N, N) = ({n}, {n}), got {connectivity.shape}")
    model = AgglomerativeClustering(
        n_clusters=int(n_clusters), linkage=linkage, metric=metric, connectivity=connectivity
    )
    return model.fit_predict(x).astype(np.int64)
