"""Clustering metrics of the deep-clustering protocol (ACC, NMI, ARI) and its k-means step.

Papers report unsupervised image-clustering accuracy under the best one-to-one map of clusters to
classes (Hungarian algorithm), after k-means with k = number of classes on the learnt features.
NMI has several normalisations in use (arithmetic, geometric, max...); the one used is recorded in
the result so that numbers are only compared like with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

NMI_AVERAGE = "arithmetic"
KMEANS_N_INIT = 10


def _check_labelings(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels must be 1-D, got y_true {t.shape} and y_pred {p.shape}")
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no labels to evaluate")
    return t, p


def cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples correct under the best one-to-one map of clusters to classes.

    Works for any number of clusters and classes: with more clusters than classes the surplus
    clusters match nothing (their samples count as errors), and vice versa.
    """
    t, p = _check_labelings(y_true, y_pred)
    counts = contingency_matrix(t, p)  # classes x clusters
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / t.size)


def clustering_metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """{"ACC", "NMI", "ARI"} in [0, 1] (ARI can be negative) and "NMI_average", the normalisation."""
    t, p = _check_labelings(y_true, y_pred)
    return {
        "ACC": cluster_accuracy(t, p),
        "NMI": float(normalized_mutual_info_score(t, p, average_method=NMI_AVERAGE)),
        "ARI": float(adjusted_rand_score(t, p)),
        "NMI_average": NMI_AVERAGE,
    }


def kmeans_cluster(
    features: Any, n_clusters: int, seed: int, n_init: int = KMEANS_N_INIT
) -> np.ndarray:
    """k-means labels (scikit-learn, k-means++ init, `n_init` restarts, seeded: same seed, same labels)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {x.shape}")
    if not 1 <= n_clusters <= x.shape[0]:
        raise ValueError(
            f"n_clusters must lie in [1, {x.shape[0]}] for {x.shape[0]} samples, got {n_clusters}"
        )
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    return km.fit_predict(x).astype(np.int64)


def evaluate_clustering_features(
    features: Any, labels: Any, seed: int, n_init: int = KMEANS_N_INIT
) -> dict[str, Any]:
    """The deep-clustering protocol: k-means with k = number of classes, then ACC / NMI / ARI.

    The returned dict also records "k", "seed", "kmeans_n_init" and "NMI_average".
    """
    y = np.asarray(labels)
    x = np.asarray(features)
    if y.ndim != 1 or x.ndim != 2 or y.size != x.shape[0]:
        raise ValueError(f"need features (n, d) and n labels, got {x.shape} and {y.shape}")
    k = int(np.unique(y).size)
    pred = kmeans_cluster(x, k, seed, n_init=n_init)
    return {**clustering_metrics(y, pred), "k": k, "seed": int(seed), "kmeans_n_init": int(n_init)}
