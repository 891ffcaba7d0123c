"""Re-ID metrics checked against evaluators written here from the definitions, and hand-computed cases.

The brute-force evaluator below never sorts: a match's rank is counted straight from the
definition (valid gallery items whose (distance, index) is smaller). The official Market-1501 AP
is checked against a transcription of the MATLAB loop (compute_AP.m), which walks the ranked list
with old_recall / old_precision, a different formulation from the engine's closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import benchmark.evaluation.reid as reid
from benchmark.evaluation.reference_eval import evaluate_reid_classic
from benchmark.evaluation.reid import evaluate_reid, evaluate_reid_features

# ------------------------------------------------------------------ brute force from the definitions


def brute_ranks(dist_row, q_pid, q_cam, g_pids, g_cams):
    """0-based ranks of the true matches among the valid items, ascending; no sorting involved."""
    valid = ~((g_pids == q_pid) & (g_cams == q_cam))
    ranks = []
    for j in np.flatnonzero(valid & (g_pids == q_pid)):
        before = 0
        for i in np.flatnonzero(valid):
            if dist_row[i] < dist_row[j] or (dist_row[i] == dist_row[j] and i < j):
                before += 1
        ranks.append(before)
    return sorted(ranks)


def matlab_official_ap(ranked_labels):
    """Transcription of Market-1501's compute_AP.m loop; ranked_labels: 1 = good, 0 = other."""
    ngood = sum(ranked_labels)
    old_recall, old_precision, ap, intersect = 0.0, 1.0, 0.0, 0
    for j, good in enumerate(ranked_labels):
        intersect += good
        recall = intersect / ngood
        precision = intersect / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        if intersect == ngood:
            break
    return ap


def brute_evaluate(
    distmat, q_pids, g_pids, q_cams, g_cams, max_rank, ap="non-interpolated", unmatched="skip"
):
    aps, inps, curves = [], [], []
    depth = max(max_rank, 10)
    for i in range(distmat.shape[0]):
        ranks = brute_ranks(distmat[i], q_pids[i], q_cams[i], g_pids, g_cams)
        if not ranks:
            if unmatched == "zero":
                aps.append(0.0)
                inps.append(0.0)
                curves.append(np.zeros(depth))
            continue
        if ap == "non-interpolated":
            aps.append(np.mean([(k + 1) / (r + 1) for k, r in enumerate(ranks)]))
        else:
            labels = [0] * (ranks[-1] + 1)
            for r in ranks:
                labels[r] = 1
            aps.append(matlab_official_ap(labels))
        inps.append(len(ranks) / (ranks[-1] + 1))
        curves.append(np.array([1.0 if ranks[0] <= t else 0.0 for t in range(depth)]))
    if not aps:
        return None
    curve = np.mean(curves, axis=0)
    return {"mAP": np.mean(aps), "mINP": np.mean(inps), "cmc": curve[:max_rank], "R1": curve[0],
            "R5": curve[4], "R10": curve[9], "num_query_evaluated": len(aps)}


def random_labels(rng, nq, ng, n_ids, n_cams):
    return (rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng),
            rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng))


def assert_same(result, expected, tol=1e-12):
    for key in ("mAP", "mINP", "R1", "R5", "R10"):
        assert result[key] == pytest.approx(expected[key], abs=tol), key
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=tol)
    assert result["num_query_evaluated"] == expected["num_query_evaluated"]


@st.composite
def reid_problems(draw, max_q=7, max_g=22):
    nq = draw(st.integers(1, max_q))
    ng = draw(st.integers(1, max_g))
    n_ids = draw(st.integers(1, 5))
    n_cams = draw(st.integers(1, 3))
    def ints(n, hi):
        return np.array(draw(st.lists(st.integers(0, hi), min_size=n, max_size=n)))

    q_pids, g_pids = ints(nq, n_ids), ints(ng, n_ids)  # id 0 plays the distractor
    q_cams, g_cams = ints(nq, n_cams - 1), ints(ng, n_cams - 1)
    if draw(st.booleans()):  # few distinct values: many exact ties
        dist = ints(nq * ng, 3).reshape(nq, ng).astype(draw(st.sampled_from([np.float32, np.float64])))
    else:
        values = st.floats(-5, 5, allow_nan=False, width=32)
        dist = np.array(draw(st.lists(values, min_size=nq * ng, max_size=nq * ng)), dtype=np.float32)
        dist = dist.reshape(nq, ng)
    return dist, q_pids, g_pids, q_cams, g_cams


# ------------------------------------------------------------------ property tests


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=reid_problems(),
    max_rank=st.integers(1, 12),
    block=st.integers(1, 4),
    ap=st.sampled_from(["non-interpolated", "market-official"]),
    unmatched=st.sampled_from(["skip", "zero"]),
)
def test_matches_brute_force(problem, max_rank, block, ap, unmatched):
    dist, q_pids, g_pids, q_cams, g_cams = problem
    expected = brute_evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank, ap, unmatched)
    if expected is None:
        with pytest.raises(ValueError, match="no query has a true match"):
            evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank, ap=ap, unmatched=unmatched,
                          block_rows=block)
        return
    result = evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, max_rank, ap=ap, unmatched=unmatched,
                           block_rows=block)
    assert_same(result, expected)
    assert result["cmc"].shape == (max_rank,) and result["cmc"].dtype == np.float64
    assert result["num_query_evaluated"] + result["num_query_skipped"] == dist.shape[0]
    assert 0.0 <= result["mINP"] <= 1.0 and 0.0 <= result["mAP"] <= 1.0


@settings(max_examples=60, deadline=None)
@given(
    problem=reid_problems(), seed=st.integers(0, 2**16), repeats=st.integers(1, 4), block=st.integers(1, 3)
)
def test_cuhk03_single_shot_matches_reference_loop(problem, seed, repeats, block):
    """Same draws (the documented specification), same numbers as the per-query reference loop."""
    dist, q_pids, g_pids, q_cams, g_cams = problem
    kwargs = dict(cmc="cuhk03-single-gallery-shot", cmc_repeats=repeats, seed=seed)
    try:
        expected = evaluate_reid_classic(dist, q_pids, g_pids, q_cams, g_cams, 8, **kwargs)
    except ValueError:
        return
    result = evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, 8, block_rows=block, **kwargs)
    assert_same(result, expected)


@pytest.mark.parametrize("pull", [2.5, 0.3])  # trained-like, and weak (most of a row kept)
@pytest.mark.parametrize("route", ["keep", "whole", "passes", "chosen"])
def test_both_candidate_routes_on_larger_galleries(monkeypatch, route, pull):
    """Rows with the hardest match near the top and deep down, through each way of counting:
    only the items up to a match taken out and sorted ("keep"), whole rows sorted ("whole"),
    the deepest matches counted by comparison passes ("passes"), and the mix that the sampled
    cost estimate chooses per row ("chosen")."""
    forced = {"keep": "_COST_COPY", "whole": "_COST_KEEP", "passes": "_COST_SORT"}
    if route in forced:
        monkeypatch.setattr(reid, forced[route], 1e9)
    rng = np.random.default_rng(3)
    nq, ng = 30, 3000
    g_pids = rng.integers(0, 60, ng)
    g_cams = rng.integers(0, 6, ng)
    q_pids = rng.integers(1, 60, nq)
    q_cams = rng.integers(0, 6, nq)
    dist = rng.standard_normal((nq, ng)).astype(np.float32)
    dist[q_pids[:, None] == g_pids[None, :]] -= np.float32(pull)
    dist[::7] = np.round(dist[::7] * 4) / 4  # some rows full of exact ties
    expected = evaluate_reid_classic(dist, q_pids, g_pids, q_cams, g_cams, 50)
    for dtype in (np.float32, np.float64):
        for threads in (1, 3):  # blocks shared between threads: same numbers
            result = evaluate_reid(dist.astype(dtype), q_pids, g_pids, q_cams, g_cams, 50,
                                   block_rows=8, threads=threads)
            assert_same(result, expected)


def test_classic_reference_agrees_with_brute_force_on_tie_free_input():
    rng = np.random.default_rng(11)
    dist = rng.random((40, 300))
    q_pids, g_pids = rng.integers(0, 12, 40), rng.integers(0, 12, 300)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 300)
    expected = brute_evaluate(dist, q_pids, g_pids, q_cams, g_cams, 20)
    for kind in ("stable", "quicksort"):  # quicksort: torchreid's / fast-reid's argsort
        assert_same(evaluate_reid_classic(dist, q_pids, g_pids, q_cams, g_cams, 20, kind=kind), expected)
    assert_same(evaluate_reid(dist, q_pids, g_pids, q_cams, g_cams, 20), expected)
    official = brute_evaluate(dist, q_pids, g_pids, q_cams, g_cams, 20, "market-official", "zero")
    classic_official = evaluate_reid_classic(dist, q_pids, g_pids, q_cams, g_cams, 20, ap="market-official")
    assert_same(classic_official, official)


# ------------------------------------------------------------------ hand-computed cases


def _one_query(dist_row, g_pids, g_cams, q_pid=1, q_cam=0, **kwargs):
    dist = np.array([dist_row], dtype=np.float64)
    return evaluate_reid(dist, [q_pid], g_pids, [q_cam], g_cams, 5, **kwargs)


def test_hand_case_ap_inp_cmc():
    # gallery (distance, id, cam): the same-camera image of id 1 is removed; distractors stay.
    # ranking of valid items: 0.1 id1 | 0.2 id0 | 0.3 id1 | 0.4 id2 | 0.5 id0 | 0.6 id1
    # matches at ranks 0, 2, 5 -> AP = (1/1 + 2/3 + 3/6) / 3 = 13/18; INP = 3/6; R1 = 1.
    row = [0.3, 0.05, 0.1, 0.2, 0.4, 0.5, 0.6]
    g_pids = [1, 1, 1, 0, 2, 0, 1]
    g_cams = [1, 0, 2, 1, 1, 1, 1]
    r = _one_query(row, g_pids, g_cams)
    assert r["mAP"] == pytest.approx(13 / 18)
    assert r["mINP"] == pytest.approx(0.5)
    np.testing.assert_array_equal(r["cmc"], [1, 1, 1, 1, 1])
    # the official Market AP on the same ranking: (1/3) * sum over matches of (prev + p) / 2
    # ranks 0, 2, 5: p = 1, 2/3, 1/2; prev = 1 (rank 0), 1/2, 2/5 -> (1 + 7/12 + 9/20) / 3
    official = _one_query(row, g_pids, g_cams, ap="market-official")
    assert official["mAP"] == pytest.approx((1 + 7 / 12 + 9 / 20) / 3)
    assert official["protocol"]["ap"] == "market-official"


def test_hand_case_official_ap_with_first_match_not_on_top():
    # matches at valid ranks 1 and 3: p = 1/2, 2/4; prev = 0/1, 1/3
    # -> ((0 + 1/2)/2 + (1/3 + 1/2)/2) / 2 = 1/3
    row = [0.1, 0.2, 0.3, 0.4]
    g_pids, g_cams = [2, 1, 3, 1], [1, 1, 1, 1]
    assert _one_query(row, g_pids, g_cams, ap="market-official")["mAP"] == pytest.approx(1 / 3)
    assert _one_query(row, g_pids, g_cams)["mAP"] == pytest.approx(0.5)  # (1/2 + 2/4) / 2
    assert matlab_official_ap([0, 1, 0, 1]) == pytest.approx(1 / 3)


def test_official_variant_counts_unmatched_queries_as_zero():
    dist = np.array([[0.1, 0.2], [0.1, 0.2]])
    # query 0 (id 1, cam 0) matches gallery 0 at rank 0; query 1 (id 5) has no match
    r = evaluate_reid(dist, [1, 5], [1, 2], [0, 0], [1, 1], 2, ap="market-official")
    assert r["mAP"] == pytest.approx(0.5) and r["R1"] == pytest.approx(0.5)
    assert (r["num_query_evaluated"], r["num_query_skipped"], r["num_query_without_match"]) == (2, 0, 1)
    assert r["protocol"]["unmatched_queries"] == "counted-as-zero"
    standard = evaluate_reid(dist, [1, 5], [1, 2], [0, 0], [1, 1], 2)
    assert standard["mAP"] == pytest.approx(1.0)
    assert (standard["num_query_evaluated"], standard["num_query_skipped"]) == (1, 1)


def test_ties_are_broken_by_gallery_index():
    # negative and match at the same distance: the lower gallery index ranks first
    assert _one_query([0.5, 0.5], [2, 1], [1, 1])["mAP"] == pytest.approx(0.5)
    assert _one_query([0.5, 0.5], [1, 2], [1, 1])["mAP"] == pytest.approx(1.0)
    protocol = evaluate_reid(np.array([[0.5, 0.5]]), [1], [2, 1], [0], [1, 1], 1)["protocol"]
    assert protocol["ties"].startswith("stable")


def test_distractors_are_negatives_and_same_camera_items_are_removed():
    # same-camera image of the query's id sits first but is removed; the distractor is not
    row = [0.0, 0.1, 0.2]
    r = _one_query(row, [1, 0, 1], [0, 1, 1])
    assert r["mAP"] == pytest.approx(0.5) and r["R1"] == 0.0 and r["cmc"][1] == 1.0


def test_cuhk03_single_shot_hand_case_without_sampling_effect():
    # every gallery identity has one eligible image: the draw is forced; query's match is 3rd
    row = [0.3, 0.1, 0.2, 0.05]
    g_pids, g_cams = [1, 2, 3, 1], [1, 1, 1, 0]  # gallery 3: same id + same cam -> not eligible
    r = _one_query(row, g_pids, g_cams, cmc="cuhk03-single-gallery-shot", cmc_repeats=7)
    np.testing.assert_array_equal(r["cmc"], [0, 0, 1, 1, 1])
    assert r["protocol"]["cmc_repeats"] == 7


def test_cuhk03_single_shot_hand_case_with_sampling():
    # id 1 has two eligible images (0.1 and 0.5), id 2 one (0.3). Drawing 0.1 puts the match first,
    # drawing 0.5 second. By the documented specification the image of id 1 (the first identity)
    # in repeat r is eligible[floor(u[0, r, 0] * 2)], u from default_rng(seed).random((1, R, 2)).
    seed, repeats = 123, 40
    u = np.random.default_rng(seed).random((1, repeats, 2))
    first_drawn = u[0, :, 0] < 0.5  # index 0 in gallery order is the 0.1 image
    r = _one_query([0.1, 0.3, 0.5], [1, 2, 1], [1, 1, 1], cmc="cuhk03-single-gallery-shot",
                   cmc_repeats=repeats, seed=seed)
    assert r["R1"] == pytest.approx(first_drawn.mean())
    assert r["cmc"][1] == 1.0
    # and the all-shot mAP is untouched by the variant: ranks 0 and 2 -> (1 + 2/3) / 2
    assert r["mAP"] == pytest.approx(5 / 6)


def test_r1_r5_r10_exist_below_max_rank_ten():
    r = _one_query([0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [1] + [2] * 8, [1] * 9)
    assert len(r["cmc"]) == 5 and r["R5"] == 0.0 and r["R10"] == 1.0


# ------------------------------------------------------------------ inputs


def test_dtypes_memmap_and_tensors_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(2)
    dist = rng.integers(0, 50, (25, 60)).astype(np.float64)
    labels = random_labels(rng, 25, 60, n_ids=8, n_cams=3)
    expected = brute_evaluate(dist, *labels, 10)
    path = tmp_path / "dist.npy"
    np.save(path, dist.astype(np.float32))
    variants = [dist.astype(np.float16), dist.astype(np.int32), np.asfortranarray(dist),
                np.load(path, mmap_mode="r"), torch.from_numpy(dist.astype(np.float32))]
    for variant in variants:
        assert_same(evaluate_reid(variant, *labels, 10), expected)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_features_path_equals_distance_path(metric):
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((30, 16)), rng.standard_normal((200, 16))
    labels = random_labels(rng, 30, 200, n_ids=10, n_cams=3)
    dist = cdist(q, g, metric)  # scipy, float64: an independent distance
    expected = brute_evaluate(dist, *labels, 20)
    for block in (None, 7):
        r = evaluate_reid_features(q.astype(np.float32), g, *labels, 20, metric=metric, device="cpu",
                                   block_rows=block)
        assert_same(r, expected, tol=1e-9)
        assert r["protocol"]["distance"] == f"{metric} (float64)" and r["protocol"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_and_cpu_give_the_same_numbers():
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((300, 64)), rng.standard_normal((3000, 64))
    labels = random_labels(rng, 300, 3000, n_ids=100, n_cams=6)
    for kwargs in ({}, {"cmc": "cuhk03-single-gallery-shot"}, {"ap": "market-official"}):
        cpu = evaluate_reid_features(q, g, *labels, metric="cosine", device="cpu", **kwargs)
        gpu = evaluate_reid_features(
            q, g, *labels, metric="cosine", device="cuda", block_rows=64, **kwargs
        )
        assert_same(gpu, cpu, tol=1e-6)
        dist = torch.from_numpy(cdist(q, g, "cosine")).cuda()
        assert_same(evaluate_reid(dist, *labels, **kwargs), cpu, tol=1e-6)


def test_bad_inputs_name_what_is_wrong():
    dist = np.zeros((2, 3))
    good = ([1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="g_pids has 2 entries but there are 3 gallery items"):
        evaluate_reid(dist, [1, 2], [1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="q_camids must hold integer ids"):
        evaluate_reid(dist, [1, 2], [1, 2, 3], [0.5, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_reid(np.zeros(3), *good)
    nan = dist.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN distances \(query rows \[1\]\)"):
        evaluate_reid(nan, *good)
    with pytest.raises(ValueError, match="ap must be one of"):
        evaluate_reid(dist, *good, ap="interpolated")
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_reid(dist, *good, max_rank=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate_reid(np.zeros((0, 3)), [], [1, 2, 3], [], [1, 1, 1])
    with pytest.raises(ValueError, match="q_feats have 4 dimensions but g_feats have 5"):
        evaluate_reid_features(np.ones((2, 4)), np.ones((3, 5)), *good, device="cpu")
    with pytest.raises(ValueError, match="g_feats holds NaN"):
        evaluate_reid_features(np.ones((2, 4)), np.full((3, 4), np.nan), *good, device="cpu")
