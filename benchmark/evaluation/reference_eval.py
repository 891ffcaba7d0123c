"""The classic per-query re-ID evaluator, kept as the yardstick for `benchmark.evaluation.reid`.

It is written the way torchreid's and fast-reid's Python evaluators work (a full argsort of each
query's row, a 0/1 match vector over the kept gallery, cumulative sums), because that is what
published numbers were computed with. The tests compare the fast engine against it and `perf`
times it. Two differences from those libraries, both deliberate: the argsort is stable, so that
ties follow the documented rule (distance, then gallery index), and rows are sorted one at a time
so the reference itself does not need a second matrix of the full size.
The protocol variants (official Market-1501 AP, CUHK03 single-gallery-shot CMC with its exact
draw specification) are the ones documented in `benchmark.evaluation.reid`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _average_precision(raw: np.ndarray, ap: str) -> float:
    """AP of one query from its 0/1 match vector in ranking order (at least one match)."""
    hits = np.cumsum(raw)
    positions = np.flatnonzero(raw)  # 0-based ranks of the matches
    precision = hits[positions] / (positions + 1.0)
    if ap == "non-interpolated":
        return float(precision.mean())
    # Official Market-1501 (compute_AP.m): trapezoid between the precision just before each match
    # and the precision at it; before the first item the precision is taken as 1.
    previous = np.array([1.0 if r == 0 else (k / r) for k, r in enumerate(positions)])
    return float(((previous + precision) / 2).mean())


def evaluate_reid_classic(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    *,
    ap: str = "non-interpolated",
    cmc: str = "all-shot",
    cmc_repeats: int = 10,
    seed: int = 0,
    unmatched: str | None = None,
    kind: str = "stable",
) -> dict[str, Any]:
    """mAP, mINP, CMC by sorting every query's row; `evaluate_reid`'s options and metric keys.

    `kind` is passed to np.argsort ("stable" follows the documented tie rule; "quicksort" is what
    torchreid and fast-reid use).
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    if unmatched is None:
        unmatched = "zero" if ap == "market-official" else "skip"
    nq, _ = distmat.shape
    depth = max(max_rank, 10)
    gallery_ids = np.unique(g_pids)
    rng = np.random.default_rng(seed)
    all_ap, all_inp, all_cmc = [], [], []
    n_matched = 0
    for i in range(nq):
        if cmc == "cuhk03-single-gallery-shot":  # drawn for every query so the stream stays aligned
            u = rng.random((cmc_repeats, gallery_ids.size))
        order = np.argsort(distmat[i], kind=kind)
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        ranked = order[keep]
        raw = (g_pids[ranked] == q_pids[i]).astype(np.int64)
        if not raw.any():
            if unmatched == "zero":
                all_ap.append(0.0)
                all_inp.append(0.0)
                all_cmc.append(np.zeros(depth))
            continue
        n_matched += 1
        all_ap.append(_average_precision(raw, ap))
        hardest = np.flatnonzero(raw)[-1]
        all_inp.append(raw.sum() / (hardest + 1.0))
        if cmc == "cuhk03-single-gallery-shot":
            all_cmc.append(_single_gallery_shot_cmc(i, ranked, raw, g_pids, gallery_ids, u, depth))
        else:
            all_cmc.append(_first_match_curve(raw, depth))
    if not all_ap:
        raise ValueError("no query has a true match in the gallery")
    curve = np.mean(all_cmc, axis=0)
    return {
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "cmc": curve[:max_rank],
        "R1": float(curve[0]),
        "R5": float(curve[4]),
        "R10": float(curve[9]),
        "num_query_evaluated": len(all_ap),
        "num_query_skipped": nq - len(all_ap),
        "num_query_without_match": nq - n_matched,
    }


def _single_gallery_shot_cmc(
    query: int,
    ranked: np.ndarray,
    raw: np.ndarray,
    g_pids: np.ndarray,
    gallery_ids: np.ndarray,
    u: np.ndarray,
    depth: int,
) -> np.ndarray:
    """torchreid's eval_cuhk03 loop, with the draws of `u` (repeats x identities) made explicit."""
    eligible: dict[int, list[int]] = defaultdict(list)  # gallery indices in gallery order
    for g in np.sort(ranked):
        eligible[int(g_pids[g])].append(int(g))
    position = {int(g): r for r, g in enumerate(ranked)}  # rank in the full kept ranking
    curve = np.zeros(depth)
    for draws in u:
        picked = []
        for p, pid in enumerate(gallery_ids):
            items = eligible.get(int(pid))
            if items:
                picked.append(items[int(np.floor(draws[p] * len(items)))])
        picked.sort(key=lambda g: position[g])
        sub_raw = raw[[position[g] for g in picked]]
        curve += _first_match_curve(sub_raw, depth)
    return curve / len(u)


def _first_match_curve(raw: np.ndarray, depth: int) -> np.ndarray:
    """1 from the first match on; past the end of a short gallery the match stays found."""
    out = np.ones(depth)
    cum = np.minimum(np.cumsum(raw), 1)
    n = min(depth, cum.size)
    out[:n] = cum[:n]
    return out
