"""Pseudo-label quality: contingency-table pair counts against brute-force pair enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.evaluation.pseudo_labels import pseudo_label_quality


def _brute_force(pseudo: np.ndarray, truth: np.ndarray, outlier: int) -> dict[str, float]:
    keep = [i for i in range(len(pseudo)) if pseudo[i] != outlier]
    tp = pred = true = 0
    for i, j in itertools.combinations(keep, 2):
        same_p = pseudo[i] == pseudo[j]
        same_t = truth[i] == truth[j]
        pred += same_p
        true += same_t
        tp += same_p and same_t
    clusters_of: dict[int, set[int]] = {}
    for i in keep:
        clusters_of.setdefault(int(truth[i]), set()).add(int(pseudo[i]))
    nan = float("nan")
    return {
        "precision": tp / pred if pred else nan,
        "recall": tp / true if true else nan,
        "fscore": 2 * tp / (pred + true) if pred + true else nan,
        "expansion": float(np.mean([len(c) for c in clusters_of.values()])) if keep else nan,
        "num_clusters": len({int(pseudo[i]) for i in keep}),
        "outlier_fraction": 1 - len(keep) / len(pseudo),
    }


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


labelings = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-1, 7), min_size=n, max_size=n),
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
    )
)


@settings(max_examples=120, deadline=None)
@given(labelings)
def test_matches_brute_force_pairs(pair: tuple[list[int], list[int]]) -> None:
    pseudo, truth = map(np.asarray, pair)
    got = pseudo_label_quality(pseudo, truth)
    want = _brute_force(pseudo, truth, -1)
    for key, value in want.items():
        assert _same(float(got[key]), float(value)), (key, got[key], value)
    assert got["num_outliers"] == int((pseudo == -1).sum())


@settings(max_examples=50, deadline=None)
@given(labelings, st.integers(1, 10), st.integers(0, 2**31))
def test_outliers_do_not_change_the_clustered_metrics(pair, extra: int, seed: int) -> None:
    pseudo, truth = map(np.asarray, pair)
    rng = np.random.default_rng(seed)
    more_pseudo = np.concatenate([pseudo, np.full(extra, -1)])
    more_truth = np.concatenate([truth, rng.integers(0, 6, extra)])
    order = rng.permutation(more_pseudo.size)
    a = pseudo_label_quality(pseudo, truth)
    b = pseudo_label_quality(more_pseudo[order], more_truth[order])
    for key in ("precision", "recall", "fscore", "expansion", "NMI", "ARI", "num_clusters"):
        assert _same(float(a[key]), float(b[key])), key
    assert b["num_outliers"] == a["num_outliers"] + extra


def test_hand_computed_case() -> None:
    # identities A A A B B C ; pseudo 0 0 1 1 -1 1
    truth = np.array([10, 10, 10, 20, 20, 30])
    pseudo = np.array([0, 0, 1, 1, -1, 1])
    got = pseudo_label_quality(pseudo, truth)
    # clustered: A0 A0 A1 B1 C1 -> predicted pairs: (A0,A0) + 3 in cluster 1 = 4; TP = 1
    # true pairs among clustered: A has 3 -> 3; B and C one each -> 0
    assert got["precision"] == pytest.approx(1 / 4)
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["fscore"] == pytest.approx(2 / 7)
    assert got["expansion"] == pytest.approx((2 + 1 + 1) / 3)
    assert got["num_clusters"] == 2
    assert got["outlier_fraction"] == pytest.approx(1 / 6)
    perfect = pseudo_label_quality(truth, truth, outlier_label=None)
    assert (perfect["precision"], perfect["recall"], perfect["expansion"], perfect["NMI"]) == (1, 1, 1, 1)


def test_degenerate_labelings() -> None:
    truth = np.array([0, 0, 1, 1])
    singletons = pseudo_label_quality(np.arange(4), truth)
    assert math.isnan(singletons["precision"]) and singletons["recall"] == 0
    assert singletons["fscore"] == 0 and singletons["expansion"] == 2
    none = pseudo_label_quality(np.full(4, -1), truth)
    assert none["num_clusters"] == 0 and none["outlier_fraction"] == 1
    assert all(math.isnan(none[k]) for k in ("precision", "recall", "fscore", "expansion", "NMI"))


def test_large_input_without_quadratic_cost() -> None:
    n = 500_000  # 1.25e11 pairs: only the contingency table makes this feasible
    idx = np.arange(n)
    got = pseudo_label_quality(idx // 5, idx // 10)  # each identity split into two clusters of 5
    assert got["precision"] == 1.0
    assert got["recall"] == pytest.approx(2 * 10 / 45)
    assert got["expansion"] == 2.0 and got["num_clusters"] == n // 5


@pytest.mark.parametrize(
    ("pseudo", "truth", "message"),
    [
        ([0, 1], [0], "2 pseudo labels but 1 true labels"),
        ([[0]], [[0]], "must be 1-D"),
        ([], [], "no samples"),
    ],
)
def test_bad_input_is_named(pseudo, truth, message) -> None:
    with pytest.raises(ValueError, match=message):
        pseudo_label_quality(pseudo, truth)
