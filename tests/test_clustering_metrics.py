"""Clustering accuracy (Hungarian), NMI / ARI and the seeded k-means protocol.

Accuracy is checked against an exhaustive search over cluster-to-class maps; NMI and ARI against
their textbook formulas on hand-made tables and against label-permutation invariance.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.evaluation.clustering import (
    cluster_accuracy,
    clustering_metrics,
    evaluate_clustering_features,
    kmeans_cluster,
)


def _brute_force_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best accuracy over every one-to-one map of clusters to classes (padded to a square)."""
    classes = {c: i for i, c in enumerate(np.unique(y_true))}
    clusters = {c: i for i, c in enumerate(np.unique(y_pred))}
    t = np.array([classes[c] for c in y_true])
    p = np.array([clusters[c] for c in y_pred])
    m = max(len(classes), len(clusters))
    best = 0
    for perm in itertools.permutations(range(m)):
        best = max(best, int((np.asarray(perm)[p] == t).sum()))
    return best / len(t)


labelings = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
        st.lists(st.integers(-3, 2), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(labelings)
def test_accuracy_equals_exhaustive_search(pair: tuple[list[int], list[int]]) -> None:
    y_true, y_pred = map(np.asarray, pair)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(_brute_force_accuracy(y_true, y_pred))


def test_accuracy_hand_cases() -> None:
    # clusters 1 -> class 0 (2 right), 0 -> class 1 (2 right), 2 -> class 2 (1 right)
    assert cluster_accuracy([0, 0, 0, 1, 1, 2], [1, 1, 0, 0, 0, 2]) == pytest.approx(5 / 6)
    # more clusters than classes: two clusters stay unmatched
    assert cluster_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(0.5)
    # one cluster for four classes
    assert cluster_accuracy([0, 1, 2, 3], [7, 7, 7, 7]) == pytest.approx(0.25)
    # perfect up to renaming, with string labels
    assert cluster_accuracy(["a", "a", "b"], ["x", "x", "y"]) == 1.0


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_nmi_and_ari_against_textbook_formulas() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    table = np.zeros((3, 3))
    np.add.at(table, (y_true, y_pred), 1)
    n = table.sum()
    mi = sum(
        table[i, j] / n * math.log(table[i, j] * n / (table[i].sum() * table[:, j].sum()))
        for i in range(3)
        for j in range(3)
        if table[i, j] > 0
    )
    nmi = mi / ((_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    index = comb(table).sum()
    a, b = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected_index = a * b / comb(n)
    ari = (index - expected_index) / ((a + b) / 2 - expected_index)
    got = clustering_metrics(y_true, y_pred)
    assert got["NMI"] == pytest.approx(nmi)
    assert got["ARI"] == pytest.approx(ari)
    assert got["ACC"] == pytest.approx(0.7)
    assert got["NMI_average"] == "arithmetic"


@settings(max_examples=60, deadline=None)
@given(labelings, st.randoms(use_true_random=False))
def test_metrics_invariant_to_renaming_clusters(pair, rnd) -> None:
    y_true, y_pred = map(np.asarray, pair)
    values = np.unique(y_pred)
    shuffled = list(range(100, 100 + values.size))
    rnd.shuffle(shuffled)
    renamed = np.array([shuffled[int(np.searchsorted(values, v))] for v in y_pred])
    a, b = clustering_metrics(y_true, y_pred), clustering_metrics(y_true, renamed)
    for key in ("ACC", "NMI", "ARI"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert clustering_metrics(y_true, y_true)["ACC"] == 1.0


def _blobs(seed: int, per_class: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 10 * rng.normal(size=(4, 5))
    labels = np.repeat(np.arange(4), per_class)
    return centres[labels] + rng.normal(size=(labels.size, 5)), labels


def test_kmeans_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))  # no cluster structure: the result depends on the init
    a = kmeans_cluster(x, 5, seed=3, n_init=2)
    np.testing.assert_array_equal(a, kmeans_cluster(x, 5, seed=3, n_init=2))
    assert any(not np.array_equal(a, kmeans_cluster(x, 5, seed=s, n_init=2)) for s in range(4, 12))


def test_protocol_recovers_separated_classes() -> None:
    x, y = _blobs(1)
    out = evaluate_clustering_features(x, y, seed=0)
    assert out["k"] == 4 and out["seed"] == 0 and out["kmeans_n_init"] == 10
    assert out["ACC"] == 1.0 and out["NMI"] == pytest.approx(1.0) and out["ARI"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cluster_accuracy([0, 1], [0]), "y_true has 2 labels but y_pred has 1"),
        (lambda: cluster_accuracy([[0, 1]], [[0, 1]]), "labels must be 1-D"),
        (lambda: cluster_accuracy([], []), "no labels"),
        (lambda: kmeans_cluster(np.zeros((3, 2)), 4, 0), "n_clusters must lie in"),
        (lambda: kmeans_cluster(np.full((3, 2), np.nan), 2, 0), "NaN"),
        (lambda: evaluate_clustering_features(np.zeros((3, 2)), [0, 1], 0), "need features"),
    ],
)
def test_bad_input_is_named(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
