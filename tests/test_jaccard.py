"""The fast k-reciprocal Jaccard distance and the pseudo-labelling built on it.

Checked against independent references: a hand-worked ranking for the k-reciprocal sets and the 2/3
expansion rule, the direct dense implementation (per-sample loops, its own ranking, sum(min)/sum(max)
without the rows-sum-to-1 shortcut) for every pair, brute-force argsort for the kNN, and properties
(requested cluster counts, explicit zeros kept as neighbours, results independent of block sizes).
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

import methods.common.jaccard as jaccard_mod
from benchmark.evaluation.perf_pseudo_labels import (
    PseudoLabelScale,
    reid_like_features,
    rows_for_scale,
)
from methods.common.clustering import agglomerative_pseudo_labels, dbscan_pseudo_labels
from methods.common.jaccard import (
    encode,
    expanded_sets,
    half_depth,
    jaccard_distance,
    jaccard_from_neighbours,
    reciprocal_masks,
)
from methods.common.jaccard_reference import (
    dense_ranking,
    expanded_set,
    jaccard_distance_dense_reference,
    k_reciprocal_set,
)
from methods.common.knn import knn

# ------------------------------------------------------------------ helpers


def as_dense(dist: sp.csr_matrix) -> np.ndarray:
    """Sparse Jaccard matrix with absent pairs at their distance, 1."""
    out = np.ones(dist.shape)
    coo = dist.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


def unambiguous(features: np.ndarray, depths: list[int]) -> bool:
    """Whether a float32 search must cut every neighbour list at depth d where float64 does.

    A float32 dot product of unit vectors in D dimensions is within D * 2^-24 of the exact one, so
    two similarities can swap only if they are closer than twice that."""
    x = features.astype(np.float64)
    sims = np.sort(x @ x.T, axis=1)[:, ::-1]
    gaps = [sims[:, d - 1] - sims[:, d] for d in depths if d < sims.shape[1]]
    return not gaps or float(np.min(gaps)) > 2 * x.shape[1] * 2.0**-24


def reid_features(n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    features, ids, _ = reid_like_features(n, max(1, n // 17), dim, seed)
    return features, ids


# ------------------------------------------------------------------ hand-worked sets

# k1 = 6, so the half sets use the first h = round(3) + 1 = 4 entries. Row i lists N(i, 6).
HAND_RANKING = np.array(
    [
        [0, 1, 2, 3, 6, 5],
        [1, 0, 2, 7, 3, 4],
        [2, 0, 1, 5, 4, 3],
        [3, 4, 5, 6, 7, 2],
        [4, 3, 5, 6, 7, 1],
        [5, 2, 4, 6, 7, 3],
        [6, 0, 3, 4, 5, 7],
        [7, 1, 6, 5, 4, 3],
    ]
)
# Worked by hand:
# R(0) = {0, 1, 2, 6}: 3 and 5 are in N(0, 6) but 0 is not in N(3, 6) or N(5, 6).
# R_half(0) = {0, 1, 2}, R_half(1) = {0, 1, 2, 7}, R_half(2) = {0, 1, 2, 5}: overlaps with R(0) are
# 3/3, 3/4, 3/4 > 2/3 -> accepted; R_half(6) = {3, 4, 6} overlaps 1/3 -> rejected.
# R*(0) = {0, 1, 2, 6} | {7} | {5} = {0, 1, 2, 5, 6, 7}.
# R(6) = {0, 3, 4, 5, 6, 7} (6 is in all their lists). R_half(5) = {2, 4, 5} overlaps R(6) in
# {4, 5}: exactly 2/3, which is NOT more than 2/3, so 2 stays out; R_half(0) = {0, 1, 2} (1/3) and
# R_half(7) = {1, 7} (1/2) are rejected; R_half(3) = {3, 4, 6}, R_half(4) = {3, 4, 5, 6} add nothing.
# R*(6) = {0, 3, 4, 5, 6, 7}.
HAND_R = {0: {0, 1, 2, 6}, 6: {0, 3, 4, 5, 6, 7}}
HAND_HALF = {0: {0, 1, 2}, 1: {0, 1, 2, 7}, 2: {0, 1, 2, 5}, 5: {2, 4, 5}, 6: {3, 4, 6}, 7: {1, 7}}
HAND_EXPANDED = {0: {0, 1, 2, 5, 6, 7}, 6: {0, 3, 4, 5, 6, 7}}


def test_half_depth_follows_numpy_rounding() -> None:
    assert half_depth(30) == 16
    assert half_depth(6) == 4
    assert half_depth(5) == 3  # np.around(2.5) == 2 (half to even), as the published code rounds
    assert half_depth(7) == 5
    assert half_depth(1) == 1


def test_integer_form_of_the_two_thirds_rule_matches_the_float_form() -> None:
    # The fast path tests 3 * overlap > 2 * size; the published code tests overlap > 2/3 * size.
    for size in range(0, 400):
        for overlap in range(size + 1):
            assert (3 * overlap > 2 * size) == (overlap > 2 / 3 * size), (overlap, size)


def test_hand_worked_reciprocal_sets_reference() -> None:
    for i, expected in HAND_R.items():
        assert k_reciprocal_set(HAND_RANKING, i, 6) == expected
    for q, expected in HAND_HALF.items():
        assert k_reciprocal_set(HAND_RANKING, q, 4) == expected
    for i, expected in HAND_EXPANDED.items():
        assert expanded_set(HAND_RANKING, i, 6) == expected


def test_hand_worked_reciprocal_sets_fast() -> None:
    recip, recip_half = reciprocal_masks(HAND_RANKING, 6)
    for i, expected in HAND_R.items():
        assert set(HAND_RANKING[i][recip[i]].tolist()) == expected
    for q, expected in HAND_HALF.items():
        assert set(HAND_RANKING[q, :4][recip_half[q]].tolist()) == expected
    sets = expanded_sets(HAND_RANKING, 6)
    for i, expected in HAND_EXPANDED.items():
        assert set(sets[i].indices.tolist()) == expected


@st.composite
def rankings(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Random neighbour lists (self first, like a real search) with clustered structure."""
    n = draw(st.integers(2, 32))
    k1 = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, max(1, n // 6), size=n)
    out = np.empty((n, k1), dtype=np.int64)
    for i in range(n):
        score = rng.random(n) + (groups == groups[i])  # group mates tend to come first
        score[i] = 3.0
        out[i] = np.argsort(-score)[:k1]
    return out, k1


@settings(max_examples=40, deadline=None)
@given(rankings())
def test_expanded_sets_equal_reference_on_random_rankings(case: tuple[np.ndarray, int]) -> None:
    ranking, k1 = case
    sets = expanded_sets(ranking, k1)
    for i in range(ranking.shape[0]):
        assert set(sets[i].indices.tolist()) == expanded_set(ranking, i, k1)


# ------------------------------------------------------------------ kNN


@pytest.mark.parametrize("backend,block_rows", [("cpu", 1024), ("cpu", 7), ("faiss-flat", 1024),
                                                ("torch", 13)])
def test_knn_matches_brute_force(backend: str, block_rows: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((203, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = 17
    sims, idx = knn(x, k, backend=backend, block_rows=block_rows)
    exact = x.astype(np.float64) @ x.astype(np.float64).T
    top = -np.sort(-exact, axis=1)[:, :k]
    assert sims.shape == idx.shape == (203, k) and idx.dtype == np.int64
    np.testing.assert_allclose(sims, top, atol=1e-5)  # the k largest, in descending order
    np.testing.assert_allclose(np.take_along_axis(exact, idx, 1), sims, atol=1e-5)  # and theirs
    assert all(len(set(row)) == k for row in idx.tolist())


def test_knn_whole_ranking_and_bad_k() -> None:
    x, _ = reid_features(40, 8)
    _, idx = knn(x, 40, block_rows=9)
    assert sorted(idx[5].tolist()) == list(range(40))
    with pytest.raises(ValueError, match="k must be"):
        knn(x, 41)
    with pytest.raises(ValueError, match="k must be"):
        knn(x, 0)
    with pytest.raises(ValueError, match="unknown knn backend 'annoy'"):
        knn(x, 3, backend="annoy")


# ------------------------------------------------------------------ Jaccard: fast == reference


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray]:
    """(features, identities, fast Jaccard, dense reference Jaccard) for 510 re-ID-like samples."""
    x, ids = reid_features(510, 32, seed=2)
    assert unambiguous(x, [30, 16, 6])  # so the float32 search cuts the lists where float64 does
    return x, ids, jaccard_distance(x), jaccard_distance_dense_reference(x)


def test_jaccard_equals_dense_reference_on_every_pair(clustered) -> None:
    _, _, fast, ref = clustered
    np.testing.assert_allclose(as_dense(fast), ref, rtol=0, atol=1e-6)
    # every stored entry is < 1, and every pair with reference distance < 1 is stored
    assert fast.data.max() < 1.0
    assert fast.nnz == int((ref < 1.0).sum())


def test_jaccard_diagonal_is_stored_as_exact_zero_and_matrix_is_symmetric() -> None:
    x, _ = reid_features(150, 32, seed=2)
    dist = jaccard_distance(x, k1=12, k2=4)
    n = x.shape[0]
    rows = np.repeat(np.arange(n), np.diff(dist.indptr))
    diag = dist.indices == rows
    assert diag.sum() == n  # one stored diagonal entry per row
    assert np.all(dist.data[diag] == 0.0)
    assert abs(dist - dist.T).max() == 0.0
    assert np.all(dist.data >= 0.0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(8, 80),
    k1=st.integers(1, 30),
    k2_fraction=st.floats(0.0, 1.0),
    dim=st.sampled_from([4, 16, 48]),
    seed=st.integers(0, 10_000),
)
def test_jaccard_equals_reference_hypothesis(
    n: int, k1: int, k2_fraction: float, dim: int, seed: int
) -> None:
    assume(k1 <= n)
    k2 = max(1, round(k1 * k2_fraction))
    features, _, _ = reid_like_features(n, max(1, n // 10), dim, seed)
    ref = jaccard_distance_dense_reference(features, k1, k2)
    # The same neighbour lists on both sides (the reference's own dense ranking), so near-ties in
    # the search cannot make the comparison flaky; the full pipeline is compared where the
    # float32 search cannot reorder any list boundary.
    sims, ranking = dense_ranking(features, k1)
    fast = jaccard_from_neighbours(features, np.take_along_axis(sims, ranking, 1), ranking, k1, k2)
    np.testing.assert_allclose(as_dense(fast), ref, rtol=0, atol=1e-6)
    if unambiguous(features, [k1, half_depth(k1), k2]):
        np.testing.assert_allclose(as_dense(jaccard_distance(features, k1, k2)), ref, rtol=0, atol=1e-6)


def test_encoding_rows_sum_to_one() -> None:
    x, _ = reid_features(200, 32, seed=4)
    sims, ranking = knn(x, 20)
    v = encode(x, sims, ranking, 20, 6)
    np.testing.assert_allclose(np.asarray(v.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert v.data.min() > 0


def test_block_sizes_do_not_change_the_result_and_memory_stays_below_dense(monkeypatch) -> None:
    x, _ = reid_features(2000, 2048, seed=5)  # 2048-d like a ResNet-50: realistic sparsity
    sims, ranking = knn(x, 30)
    default = jaccard_from_neighbours(x, sims, ranking)
    monkeypatch.setattr(jaccard_mod, "_BLOCK_ELEMENTS", 1 << 16)  # 32 rows per block
    monkeypatch.setattr(jaccard_mod, "_PAIR_BUDGET", 1 << 13)
    tracemalloc.start()
    small = jaccard_from_neighbours(x, sims, ranking)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (default != small).nnz == 0 and default.nnz == small.nnz
    dense_bytes = x.shape[0] ** 2 * 8
    assert peak < dense_bytes / 2, f"peak {peak} bytes vs one dense float64 matrix {dense_bytes}"



def test_threads_share_blocks_without_changing_the_result(monkeypatch) -> None:
    x, _ = reid_features(500, 256, seed=9)
    monkeypatch.setattr(jaccard_mod, "_BLOCK_ELEMENTS", 1 << 13)  # 16 rows per block: 32 blocks
    sims, ranking = knn(x, 20, block_rows=37)  # 14 row blocks through the heap-update thread
    one = jaccard_from_neighbours(x, sims, ranking, 20, 6, num_threads=1)
    four = jaccard_from_neighbours(x, sims, ranking, 20, 6, num_threads=4)
    assert (one != four).nnz == 0 and one.nnz == four.nnz
    reference = jaccard_distance_dense_reference(x, 20, 6)
    np.testing.assert_allclose(as_dense(four), reference, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ DBSCAN


def test_dbscan_labels_identical_sparse_vs_dense_reference(clustered) -> None:
    _, ids, fast_dist, ref_dist = clustered
    fast = dbscan_pseudo_labels(fast_dist)
    ref = dbscan_pseudo_labels(ref_dist)
    assert fast.dtype == np.int64
    assert np.array_equal(fast, ref)
    # a realistic picture, not a degenerate one: several clusters, clusters follow identities
    assert fast.max() + 1 >= 10
    kept = fast >= 0
    assert kept.mean() > 0.8
    assert adjusted_rand_score(ids[kept], fast[kept]) > 0.6


def test_dbscan_keeps_explicit_zero_distances_as_neighbours() -> None:
    # Samples 0-3 are identical (distance 0, stored explicitly); 4 and 5 are 0.5 from 0 only.
    n = 6
    rows = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5]
    cols = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 5, 0]
    vals = [0.0] * 4 + [0.5, 0.5] + [0.0] * 12 + [0.0, 0.5, 0.0, 0.5]
    dist = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    assert dist.nnz == len(vals)  # explicit zeros are stored
    dense = np.ones((n, n))
    dense[rows, cols] = vals
    labels = dbscan_pseudo_labels(dist, eps=0.6, min_samples=4)
    assert labels.tolist() == [0, 0, 0, 0, 0, 0]  # 0-3 core through their zeros; 4, 5 reach 0
    assert np.array_equal(labels, dbscan_pseudo_labels(dense, eps=0.6, min_samples=4))
    # dropping the zeros would leave nothing with 4 neighbours: everything noise
    dropped = dist.copy()
    dropped.eliminate_zeros()
    assert dbscan_pseudo_labels(dropped, eps=0.6, min_samples=4).tolist() == [-1] * n


def test_dbscan_sparse_needs_eps_below_one_and_clean_input() -> None:
    dist = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="eps=1.0 >= 1"):
        dbscan_pseudo_labels(dist, eps=1.0)
    with pytest.raises(ValueError, match="square"):
        dbscan_pseudo_labels(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="negative, NaN"):
        dbscan_pseudo_labels(np.array([[0.0, np.nan], [np.nan, 0.0]]))


# ------------------------------------------------------------------ agglomerative


@pytest.mark.parametrize("linkage", ["average", "ward", "complete", "single"])
@pytest.mark.parametrize("n_clusters", [1, 7, 40])
def test_agglomerative_returns_requested_number_of_clusters(linkage: str, n_clusters: int) -> None:
    x, _ = reid_features(120, 16, seed=7)
    labels = agglomerative_pseudo_labels(x, n_clusters, linkage=linkage)
    assert labels.dtype == np.int64 and labels.shape == (120,)
    assert sorted(np.unique(labels).tolist()) == list(range(n_clusters))


@pytest.mark.filterwarnings("ignore:the number of connected components")
def test_agglomerative_with_knn_connectivity_separates_clear_groups() -> None:
    rng = np.random.default_rng(8)
    centres = np.eye(3, 10) * 5
    x = np.repeat(centres, 20, axis=0) + 0.1 * rng.standard_normal((60, 10))
    truth = np.repeat(np.arange(3), 20)
    _, idx = knn((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), 5)
    graph = sp.csr_matrix(
        (np.ones(idx.size), (np.repeat(np.arange(60), 5), idx.ravel())), shape=(60, 60)
    )
    labels = agglomerative_pseudo_labels(x, 3, linkage="average", connectivity=graph)
    assert adjusted_rand_score(truth, labels) == 1.0
    with pytest.raises(ValueError, match="n_clusters"):
        agglomerative_pseudo_labels(x, 61)
    with pytest.raises(ValueError, match="connectivity"):
        agglomerative_pseudo_labels(x, 3, connectivity=sp.eye(5))


# ------------------------------------------------------------------ bad input


def test_bad_input_gets_clear_errors() -> None:
    x, _ = reid_features(50, 8)
    with pytest.raises(ValueError, match="L2-normalised"):
        jaccard_distance(x * 2.0)
    with pytest.raises(ValueError, match="k2=7 must not exceed k1=6"):
        jaccard_distance(x, k1=6, k2=7)
    with pytest.raises(ValueError, match="k1=51 exceeds"):
        jaccard_distance(x, k1=51)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        jaccard_distance(bad)
    with pytest.raises(ValueError, match="2-D"):
        jaccard_distance(x[0])
    sims, ranking = knn(x, 10)
    with pytest.raises(ValueError, match="fewer than k1"):
        jaccard_from_neighbours(x, sims, ranking, k1=20)


def test_torch_input_gives_the_same_matrix() -> None:
    x, _ = reid_features(90, 16, seed=9)
    a = jaccard_distance(x, 10, 3)
    b = jaccard_distance(torch.from_numpy(x), 10, 3)
    assert abs(a - b).max() < 1e-12 and a.nnz == b.nnz


# ------------------------------------------------------------------ perf rows


def test_perf_rows_have_the_perf_table_fields_and_agree() -> None:
    from benchmark.evaluation.perf import Row

    tiny = PseudoLabelScale("tiny", 260, 15, 64, True)
    rows = rows_for_scale(tiny, seed=0, fresh_process=False)
    fields = {f.name for f in dataclasses.fields(Row)}
    assert [set(r) for r in rows] == [fields] * 6
    assert [r["task"] for r in rows] == [
        f"pseudo-labels ({phase})"
        for phase in ("kNN", "kNN", "Jaccard", "DBSCAN", "total", "total")
    ]
    floor = rows[1]  # the kNN beside the bare products it multiplies out, in the same process
    assert floor["reference"].startswith("GEMM floor") and floor["reference_seconds"] > 0
    assert floor["ours_seconds"] == rows[0]["ours_seconds"] and floor["target_met"] is not None
    total, published = rows[-2:]
    assert total["max_metric_diff"] == pytest.approx(0.0, abs=1e-12)  # 1 - ARI
    assert total["max_distance_diff"] < 1e-6
    assert total["ours_seconds"] == pytest.approx(
        sum(r["ours_seconds"] for r in (rows[0], rows[2], rows[3])))
    # the published-structure pipeline gives the same clusters, and is timed beside ours
    assert published["reference"] == "published structure, timed here"
    assert published["max_metric_diff"] == pytest.approx(0.0, abs=1e-12)
    assert "labels identical" in published["note"]
    assert published["ratio"] == pytest.approx(published["ours_seconds"]
                                               / published["reference_seconds"])
    with pytest.raises(ValueError, match="unknown pseudo-labelling scale"):
        from benchmark.evaluation.perf_pseudo_labels import pseudo_labelling_rows

        pseudo_labelling_rows("huge", 0)
