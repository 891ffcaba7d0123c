"""Memory-bounded k-reciprocal re-ranking against the dense reference and hand-computed cases.

Features are continuous random draws (numpy), so no two distances tie and the neighbour lists of
both implementations are determined; hypothesis drives sizes, k1, k2 and lambda, including k1 and
k2 larger than the number of items.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.evaluation import rerank as rerank_module
from benchmark.evaluation.reid import evaluate_reid
from benchmark.evaluation.rerank import rerank
from benchmark.evaluation.rerank_reference import rerank_dense

TOL = 1e-5


def _identity_features(
    rng: np.random.Generator, num_query: int, num_gallery: int, dim: int, num_ids: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features clustered by identity (so k-reciprocal sets and their expansion are non-trivial)."""
    centres = rng.normal(size=(num_ids, dim))
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q = centres[q_pids] + 0.6 * rng.normal(size=(num_query, dim))
    g = centres[g_pids] + 0.6 * rng.normal(size=(num_gallery, dim))
    return q, g, q_pids, g_pids


@settings(max_examples=40, deadline=None)
@given(
    num_query=st.integers(1, 20),
    num_gallery=st.integers(1, 60),
    dim=st.integers(1, 12),
    k1=st.integers(1, 40),
    k2=st.integers(1, 12),
    lambda_value=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_dense_reference(
    num_query: int, num_gallery: int, dim: int, k1: int, k2: int, lambda_value: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(num_query, dim))
    g = rng.normal(size=(num_gallery, dim))
    ours = rerank(q, g, k1, k2, lambda_value)
    ref = rerank_dense(q, g, k1, k2, lambda_value)
    assert ours.shape == (num_query, num_gallery) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


def test_clustered_features_exercise_expansion_and_match() -> None:
    rng = np.random.default_rng(7)
    q, g, _, _ = _identity_features(rng, 30, 150, 8, 12)
    feats = np.concatenate([q, g])
    # the data must make the 1/2-expansion rule add members, or the comparison proves little
    ranks = np.argsort(((feats[:, None] - feats[None]) ** 2).sum(-1), axis=1)[:, :21]
    grown = rerank_module._expanded_sets(ranks, 20)
    plain = rerank_module._reciprocal_sets(ranks, 20)
    assert (grown != plain).nnz > 0
    for k1, k2, lam in [(20, 6, 0.3), (10, 3, 0.5), (7, 1, 0.0)]:
        np.testing.assert_allclose(
            rerank(q, g, k1, k2, lam), rerank_dense(q, g, k1, k2, lam), rtol=0, atol=TOL
        )


def test_published_float32_precision_agrees() -> None:
    rng = np.random.default_rng(3)
    q, g, _, _ = _identity_features(rng, 25, 120, 32, 10)
    ref32 = rerank_dense(q, g, dtype=np.float32)
    np.testing.assert_allclose(rerank(q, g), ref32, rtol=0, atol=TOL)
    np.testing.assert_allclose(rerank(q, g, dtype=torch.float32), ref32, rtol=0, atol=TOL)


def test_block_sizes_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    q, g, _, _ = _identity_features(rng, 17, 90, 6, 9)
    whole = rerank(q, g)
    # one distance row per block (blocks straddle the query/gallery boundary), one query per
    # Jaccard block, tiny Jaccard entry budget and one row per gather batch
    monkeypatch.setattr(rerank_module, "_JACCARD_BLOCK_ENTRIES", 5)
    monkeypatch.setattr(rerank_module, "_GATHER_ELEMENTS", 1)
    tiny = rerank(q, g, block_bytes=1)
    np.testing.assert_allclose(tiny, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tiny, rerank_dense(q, g), rtol=0, atol=TOL)


def test_same_metrics_as_dense_reference() -> None:
    rng = np.random.default_rng(5)
    q, g, q_pids, g_pids = _identity_features(rng, 40, 200, 16, 15)
    q_cams = rng.integers(0, 3, q_pids.size)
    g_cams = rng.integers(0, 3, g_pids.size)
    ours = evaluate_reid(rerank(q, g), q_pids, g_pids, q_cams, g_cams)
    ref = evaluate_reid(rerank_dense(q, g), q_pids, g_pids, q_cams, g_cams)
    for key in ("mAP", "mINP", "R1", "R5", "R10"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_array_equal(ours["cmc"], ref["cmc"])


def test_lambda_one_is_the_row_normalised_distance() -> None:
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(11, 4))
    feats = np.concatenate([q, g])
    sq = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    # published: column j divided by its maximum, then transposed
    expected = (sq / sq.max(axis=0)).T[:6, 6:]
    np.testing.assert_allclose(rerank(q, g, lambda_value=1.0), expected, rtol=0, atol=1e-6)


def test_hand_computed_two_pairs() -> None:
    """Query 0.0; gallery 0.1, 10.0, 10.1 on a line, k1 = 1 (so round(k1/2) = 0), k2 = 1.

    Squared distances from the query: 0.01, 100, 102.01; from item 0.1: 0.01, 0, 98.01, 100.
    Expanded sets: {query, 0.1} for both of them, {10.0, 10.1} for the other two, so the query
    shares no column with 10.0 / 10.1 (Jaccard 1). V rows: query (1, a) / (1 + a) with
    a = exp(-0.01 / 102.01); item 0.1 (b, 1) / (1 + b) with b = exp(-0.01 / 100).
    """
    q = np.array([[0.0]])
    g = np.array([[0.1], [10.0], [10.1]])
    lam = 0.3
    a = math.exp(-0.01 / 102.01)
    b = math.exp(-0.01 / 100.0)
    v_q = np.array([1.0, a]) / (1 + a)
    v_1 = np.array([b, 1.0]) / (1 + b)
    s = np.minimum(v_q, v_1).sum()
    jac = 1 - s / (2 - s)
    original = np.array([0.01, 100.0, 102.01]) / 102.01
    expected = (1 - lam) * np.array([jac, 1.0, 1.0]) + lam * original
    got = rerank(q, g, k1=1, k2=1, lambda_value=lam)
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6)
    # with k2 = 2 the query and item 0.1 average the same two rows: identical V, Jaccard 0
    got2 = rerank(q, g, k1=1, k2=2, lambda_value=lam)
    np.testing.assert_allclose(got2[0, 0], lam * original[0], rtol=0, atol=1e-6)


def test_k_larger_than_the_data() -> None:
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    got = rerank(q, g, k1=50, k2=30)
    np.testing.assert_allclose(got, rerank_dense(q, g, k1=50, k2=30), rtol=0, atol=TOL)
    # every item is in every k-reciprocal set and every query expansion averages all rows, so all
    # V rows are equal and the Jaccard term vanishes
    feats = np.concatenate([q, g])
    sq = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, 0.3 * (sq / sq.max(axis=1, keepdims=True))[:2, 2:], atol=1e-6)


def test_torch_tensors_and_float32_inputs() -> None:
    rng = np.random.default_rng(8)
    q, g, _, _ = _identity_features(rng, 10, 40, 5, 6)
    expected = rerank(q, g)
    got = rerank(torch.from_numpy(q), torch.from_numpy(g))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    got32 = rerank(q.astype(np.float32), g.astype(np.float32))
    np.testing.assert_allclose(got32, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    ("q", "g", "kwargs", "message"),
    [
        (np.zeros((3, 4)), np.zeros((5, 3)), {}, "dimension 4 but gallery features 3"),
        (np.zeros(4), np.zeros((5, 4)), {}, "query features must be a 2-D array"),
        (np.zeros((0, 4)), np.zeros((5, 4)), {}, "query features are empty"),
        (np.full((2, 2), np.nan), np.zeros((5, 2)), {}, "query features contain NaN"),
        (np.ones((2, 2)), np.ones((3, 2)), {}, "all features are identical"),
        (np.eye(2), np.eye(2), {"k1": 0}, "k1 must be an integer >= 1"),
        (np.eye(2), np.eye(2), {"k2": 2.5}, "k2 must be an integer >= 1"),
        (np.eye(2), np.eye(2), {"lambda_value": 1.5}, "lambda_value must lie in [0, 1]"),
    ],
)
def test_bad_input_is_named(q, g, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rerank(q, g, **kwargs)
