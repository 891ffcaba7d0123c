"""Bottom-up merging (methods.common.merging) against hand-computed cases and independent
references: brute-force linkages from scipy's cdist, and scipy's single-linkage hierarchy for BUC's
min rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import DisjointSet, fcluster, linkage
from scipy.spatial.distance import cdist

from methods.common.merging import (
    MergeSchedule,
    apply_merges,
    cluster_count,
    cluster_distances,
    merge_step,
    merges_per_step,
    select_merges,
)

# Three clusters on a line (second coordinate 0): A = {11, 10}, B = {6, 15}, C = {7}.
#   min:      d(A,B) = min(5, 4, 4, 5) = 4, d(A,C) = min(4, 3) = 3, d(B,C) = min(1, 8) = 1 -> (B, C)
#   max:      d(A,B) = 5,                   d(A,C) = 4,             d(B,C) = 8             -> (A, C)
#   centroid: means 10.5, 10.5, 7:  d(A,B) = 0, d(A,C) = 3.5, d(B,C) = 3.5                 -> (A, B)
#   average:  d(A,B) = (5+4+4+5)/4 = 4.5,   d(A,C) = (4+3)/2 = 3.5, d(B,C) = (1+8)/2 = 4.5
LINE = np.array([[11, 0], [10, 0], [6, 0], [15, 0], [7, 0]], dtype=np.float32)
LINE_LABELS = np.array([0, 0, 1, 1, 2])
HAND = {
    "min": [[0, 4, 3], [4, 0, 1], [3, 1, 0]],
    "max": [[0, 5, 4], [5, 0, 8], [4, 8, 0]],
    "centroid": [[0, 0, 3.5], [0, 0, 3.5], [3.5, 3.5, 0]],
    "average": [[0, 4.5, 3.5], [4.5, 0, 4.5], [3.5, 4.5, 0]],
}
CLOSEST = {"min": (1, 2), "max": (0, 2), "centroid": (0, 1)}


@pytest.mark.parametrize("link", sorted(HAND))
def test_linkages_match_hand_computation(link: str) -> None:
    got = cluster_distances(LINE, LINE_LABELS, link)
    np.testing.assert_allclose(got, np.array(HAND[link], dtype=float), atol=1e-9)


@pytest.mark.parametrize("link", sorted(CLOSEST))
def test_each_linkage_merges_its_own_closest_pair(link: str) -> None:
    dist = cluster_distances(LINE, LINE_LABELS, link)
    assert select_merges(dist, 1).tolist() == [list(CLOSEST[link])]
    new = merge_step(LINE_LABELS, dist, 1)
    a, b = CLOSEST[link]
    merged = np.isin(LINE_LABELS, [a, b])
    assert len(set(new[merged])) == 1 and len(set(new[~merged])) == 1
    assert new[merged][0] != new[~merged][0]


def _brute_force(x: np.ndarray, labels: np.ndarray, link: str, metric: str) -> np.ndarray:
    num = labels.max() + 1
    out = np.zeros((num, num))
    for i, j in itertools.product(range(num), repeat=2):
        a, b = x[labels == i].astype(np.float64), x[labels == j].astype(np.float64)
        if link == "centroid":
            out[i, j] = cdist(a.mean(0, keepdims=True), b.mean(0, keepdims=True), metric)[0, 0]
        else:
            d = cdist(a, b, metric)
            out[i, j] = {"min": d.min, "max": d.max, "average": d.mean}[link]()
    np.fill_diagonal(out, 0.0)
    return out


@pytest.mark.parametrize("link", ["min", "max", "average", "centroid"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_blockwise_linkage_equals_brute_force(link: str, metric: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 5)).astype(np.float32)
    labels = np.r_[np.arange(20), rng.integers(0, 20, size=50)]  # sizes 1..many, every id used
    rng.shuffle(labels)
    # working_memory tiny: many row blocks, clusters split across blocks
    got = cluster_distances(x, labels, link, metric=metric, working_memory=0.001)
    np.testing.assert_allclose(got, _brute_force(x, labels, link, metric), rtol=1e-5, atol=1e-5)


def test_diversity_term_changes_the_choice_when_sizes_differ() -> None:
    # Cluster 0 has 3 members, clusters 1 and 2 one each. d(0,1) = 1.00, d(1,2) = 1.02, d(0,2) = 2.
    labels = np.array([0, 0, 0, 1, 2])
    dist = np.array([[0, 1.0, 2.0], [1.0, 0, 1.02], [2.0, 1.02, 0]])
    # lambda = 0: (0, 1) at 1.00 beats (1, 2) at 1.02.
    assert select_merges(dist, 1, sizes=np.bincount(labels)).tolist() == [[0, 1]]
    # lambda = 0.05: (0, 1) -> 1.00 + 0.05 * (3 + 1) = 1.20; (1, 2) -> 1.02 + 0.05 * (1 + 1) = 1.12.
    assert select_merges(dist, 1, sizes=np.bincount(labels), size_penalty=0.05).tolist() == [[1, 2]]
    assert merge_step(labels, dist, 1, size_penalty=0.05).tolist() == [0, 0, 0, 1, 1]
    assert merge_step(labels, dist, 1, size_penalty=0.0).tolist() == [0, 0, 0, 0, 1]
    # Break-even: 1.00 + 4 lambda = 1.02 + 2 lambda at lambda = 0.01; just below, (0, 1) still wins.
    sizes = np.bincount(labels)
    assert select_merges(dist, 1, sizes=sizes, size_penalty=0.009).tolist() == [[0, 1]]
    assert select_merges(dist, 1, sizes=sizes, size_penalty=0.011).tolist() == [[1, 2]]


def test_union_find_never_merges_more_than_asked() -> None:
    # 0, 1, 2 are mutually closest (a triangle of pairs 0.1, 0.2, 0.3); 3 and 4 are far apart.
    big = 10.0
    dist = np.full((5, 5), big)
    dist[0, 1] = dist[1, 0] = 0.1
    dist[1, 2] = dist[2, 1] = 0.2
    dist[0, 2] = dist[2, 0] = 0.3
    dist[3, 4] = dist[4, 3] = 5.0
    np.fill_diagonal(dist, 0)
    labels = np.arange(5)
    # Two merges: (0,1) then (1,2); the pair (0,2) is already joined and must not count as a third.
    assert select_merges(dist, 2).tolist() == [[0, 1], [1, 2]]
    assert merge_step(labels, dist, 2).tolist() == [0, 0, 0, 1, 2]
    # Three merges: (0,2) is skipped, the next is (3,4) at 5.0.
    assert select_merges(dist, 3).tolist() == [[0, 1], [1, 2], [3, 4]]
    assert merge_step(labels, dist, 3).tolist() == [0, 0, 0, 1, 1]


@settings(max_examples=60, deadline=None)
@given(
    num=st.integers(2, 25),
    data=st.data(),
)
def test_merge_step_performs_exactly_n_merges(num: int, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # few distinct values: many ties and many pairs inside already-joined groups
    dist = rng.integers(0, 4, size=(num, num)).astype(float)
    dist = np.minimum(dist, dist.T)
    n = data.draw(st.integers(0, num - 1))
    sizes = rng.integers(1, 5, size=num)
    penalty = data.draw(st.sampled_from([0.0, 0.3]))
    pairs = select_merges(dist, n, sizes=sizes, size_penalty=penalty)
    assert len(pairs) == n
    # Reference: the same rule written directly: every pair, sorted, a fresh union-find.
    ranked = sorted(
        (dist[i, j] + penalty * (sizes[i] + sizes[j]), i, j)
        for i in range(num) for j in range(i + 1, num)
    )
    ref = DisjointSet(range(num))
    expected = []
    for _, i, j in ranked:
        if len(expected) == n:
            break
        if ref.merge(i, j):
            expected.append([i, j])
    assert pairs.tolist() == expected
    labels = np.repeat(np.arange(num), sizes)
    new = apply_merges(labels, pairs)
    assert new.max() + 1 == num - n
    assert sorted(set(new.tolist())) == list(range(num - n))
    # every old cluster stays whole
    for c in range(num):
        assert len(set(new[labels == c].tolist())) == 1


def test_infinite_pairs_are_never_merged() -> None:
    dist = np.full((4, 4), np.inf)
    np.fill_diagonal(dist, 0)
    dist[0, 1] = dist[1, 0] = 1.0
    assert select_merges(dist, 3).tolist() == [[0, 1]]


def test_single_linkage_steps_follow_scipy_hierarchy_and_count_rule() -> None:
    """Without the diversity term, merging the n closest pairs by minimum distance from singletons
    is Kruskal's algorithm, so after t steps the partition is scipy's single-linkage tree cut at
    N - t * n clusters."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    n = merges_per_step(300, 0.05)
    assert n == 15
    tree = linkage(x.astype(np.float64), "single")
    labels = np.arange(300)
    for t in range(1, 12):
        labels = merge_step(labels, cluster_distances(x, labels, "min"), n)
        assert labels.max() + 1 == 300 - t * n == cluster_count(300, 0.05, t)
        ref = fcluster(tree, t=300 - t * n, criterion="maxclust")
        # same partition: a bijection between the two label sets
        pairs = set(zip(labels.tolist(), ref.tolist()))
        assert len(pairs) == labels.max() + 1 == len(set(ref.tolist()))


def test_counts_follow_n_minus_t_n_with_the_diversity_term() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(203, 4)).astype(np.float32)
    n = merges_per_step(203, 0.07)  # floor(14.21) = 14
    assert n == 14
    labels = np.arange(203)
    for t in range(1, 14):
        labels = merge_step(labels, cluster_distances(x, labels), n, size_penalty=0.005)
        assert np.bincount(labels).sum() == 203
        assert labels.max() + 1 == 203 - t * 14 == cluster_count(203, 0.07, t)
    with pytest.raises(ValueError, match="would leave"):
        cluster_count(203, 0.07, 15)


def test_relabelling_keeps_cluster_order() -> None:
    labels = np.array([3, 0, 2, 1, 4, 4])
    new = apply_merges(labels, np.array([[1, 3], [0, 4]]))
    # components {0, 4}, {1, 3}, {2}: numbered by their smallest old id -> 0, 1, 2
    assert new.tolist() == [1, 0, 2, 1, 0, 0]


def test_merge_schedule_maps_epochs_to_stages() -> None:
    s = MergeSchedule(first_epochs=3, step_epochs=2, merge_steps=2)
    assert s.num_epochs == 7
    stages = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [s.locate(e) for e in range(7)] == stages
    assert [e for e in range(7) if s.merges_before(e)] == [3, 5]
    with pytest.raises(ValueError, match="epoch 7"):
        s.locate(7)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 2, 2]), "without gaps"),
        (np.array([0, -1, 1]), "negative id"),
        (np.array([[0, 1]]), "1-D"),
        (np.array([0.0, 1.0]), "integer"),
    ],
)
def test_bad_labels_are_named(labels: np.ndarray, message: str) -> None:
    x = np.zeros((labels.size, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        cluster_distances(x, labels)


def test_bad_inputs_raise_clear_errors() -> None:
    labels = np.arange(3)
    with pytest.raises(ValueError, match="3 x 3"):
        merge_step(labels, np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="at most 2"):
        merge_step(labels, np.zeros((3, 3)), 3)
    with pytest.raises(ValueError, match="linkage"):
        cluster_distances(np.zeros((3, 2), np.float32), labels, "ward")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels: 2 labels for 3 samples"):
        cluster_distances(np.zeros((3, 2), np.float32), np.arange(2))
    with pytest.raises(ValueError, match="less than one merge"):
        merges_per_step(10, 0.05)
