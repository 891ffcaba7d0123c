"""Exact re-ID ranking metrics (mAP, mINP, CMC) without argsorting the distance matrix.

Why it is built this way: the classic evaluators (torchreid, fast-reid) argsort every row of the
query x gallery distance matrix and then build an equally large int matrix of matches; at MSMT17
scale (11,659 x 82,161) that is tens of GB and tens of seconds. But mAP, mINP and CMC depend only
on the positions of the true matches in each query's ranking, and the position of a match is the
number of valid gallery items ranked before it. Per query:

1. its same-identity gallery items come from the identity groups (no scan of the row);
2. only items not farther than a match can sit in front of it: one comparison pass takes out
   the items not farther than the last match counted by sorting (the hardest one, unless step
   3 counts it by passes). For a trained model the matches are near the top, so these are few;
3. only those items are sorted (numpy's SIMD sort; taken out by a boolean mask, or the row
   sorted whole when they are most of it, as with an untrained network's features), and a
   batched searchsorted of the match distances into them gives, per match, the items strictly
   closer and the items at exactly its distance. A stray hard match deep in a trained model's
   ranking is instead counted by two comparison passes over the row, which costs far less than
   sorting down to it; a sample of each row decides the split by estimated cost, and every
   choice gives the same exact counts. The query's own identity is counted the same way and
   subtracted, and exact ties with a negative (rare) are settled by gallery index.
Blocks of queries are independent and their work releases the GIL, so threads share the blocks;
memory stays bounded because queries are processed in blocks, each thread reusing its scratch
buffers (a fresh large array costs a page fault per 4 KiB). On an accelerator (a torch tensor
on a GPU, or `evaluate_reid_features` there) each block's rows are instead sorted whole on the
device and searched with one batched torch.searchsorted, with no per-row Python loop.

Protocol (the field's standard, as torchreid / fast-reid implement it):
- for each query, gallery items with the same identity AND the same camera are removed;
  distractors (id 0) and every other identity stay in the ranking as negatives;
- a query with no remaining true match is skipped and left out of the means (or, with
  `unmatched="zero"`, counted as 0 everywhere);
- AP is non-interpolated: mean over the matches of precision at each match's rank;
- mINP (Ye et al., TPAMI 2021): mean over queries of (#matches / rank of the hardest match);
- CMC(k): fraction of queries whose first true match is within the top k.
Ties are broken by gallery index: the ranking is the stable sort of (distance, gallery index),
which is what `np.argsort(row, kind="stable")` gives. (torchreid and fast-reid use the default,
unstable argsort, so on tied distances their order depends on numpy's sort implementation.)
NaN distances are rejected.

Variants that papers use and that every result records under "protocol":
- `ap="market-official"`: the Market-1501 MATLAB evaluation (compute_AP.m): AP by the trapezoid
  rule, i.e. for the k-th match at rank r (1-based) it adds (1/M) * ((k-1)/(r-1) + k/r) / 2, with
  (k-1)/(r-1) read as 1 when r = 1; the official script averages over all queries, so queries
  without a match count as 0 (`unmatched` defaults to "zero" for this variant);
- `cmc="cuhk03-single-gallery-shot"`: the classic CUHK03 CMC: for each query and each of
  `cmc_repeats` repeats, one gallery image is drawn per gallery identity (the query's own identity
  only from other cameras; id 0 counts as one identity, as in torchreid's eval_cuhk03), the rank
  of the drawn true match among the drawn images is taken, and CMC is averaged over repeats.
  The draws are specified exactly so that they are reproducible: `u = rng.random((nq, repeats,
  P))` in query order from `np.random.default_rng(seed)`, P = number of distinct gallery
  identities (ascending); the drawn image of identity p is its floor(u * n)-th eligible image in
  gallery order. mAP and mINP stay all-shot, as in torchreid.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

APVariant = Literal["non-interpolated", "market-official"]
CMCVariant = Literal["all-shot", "cuhk03-single-gallery-shot"]
Unmatched = Literal["skip", "zero"]
Metric = Literal["cosine", "euclidean"]

AP_VARIANTS: tuple[str, ...] = ("non-interpolated", "market-official")
CMC_VARIANTS: tuple[str, ...] = ("all-shot", "cuhk03-single-gallery-shot")
TIE_RULE = "stable sort by (distance, gallery index)"

# Distance-matrix elements handled per block of queries: bounds the per-block temporaries (a float
# copy of non-float input; on an accelerator, the sorted block) to tens of MB whatever the size.
_BLOCK_ELEMENTS = 1 << 23
# Rows are sorted in groups of about _GROUP_ELEMENTS items (padded).
_GROUP_ELEMENTS = 1 << 20
# The split between sorting and comparison passes (see `_counts_before_cpu`): a row sample of
# up to _SAMPLE_RUNS runs of 16 columns, at most this many matches counted by passes, and the
# measured costs per gallery item (ns on the 2-core reference machine; only ratios matter).
_SAMPLE_RUNS = 48
_MAX_COUNTED_BY_PASSES = 16
_COST_SORT = 8.0  # numpy's SIMD sort, per sorted item
_COST_COPY = 0.6  # copying the row to sort it whole
_COST_KEEP = 0.7  # the comparison pass that takes the items up to a threshold out ...
_COST_KEEP_PER_ITEM = 11.0  # ... plus this per item taken (boolean indexing mispredicts)
_COST_PASSES = 0.7  # one match counted: a "<" pass and a "<=" pass
# The CMC curve is computed at least this deep so that R10 exists whatever `max_rank` is.
_MIN_CURVE = 10


@dataclass(frozen=True)
class _Labels:
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


def _as_int_labels(values: Any, name: str, expected: int, axis_name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != expected:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {expected} {axis_name}")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_labels(nq: int, ng: int, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> _Labels:
    return _Labels(
        q_pids=_as_int_labels(q_pids, "q_pids", nq, "queries"),
        g_pids=_as_int_labels(g_pids, "g_pids", ng, "gallery items"),
        q_camids=_as_int_labels(q_camids, "q_camids", nq, "queries"),
        g_camids=_as_int_labels(g_camids, "g_camids", ng, "gallery items"),
    )


@dataclass(frozen=True)
class _GalleryGroups:
    """Gallery items grouped by identity, so each query reaches its own identity without a scan."""

    pids: np.ndarray  # distinct gallery ids, ascending
    starts: np.ndarray  # first position of each id in `order`
    counts: np.ndarray  # images per id
    order: np.ndarray  # gallery indices sorted by (id, index)
    camids: np.ndarray

    @classmethod
    def build(cls, g_pids: np.ndarray, g_camids: np.ndarray) -> _GalleryGroups:
        order = np.argsort(g_pids, kind="stable")
        pids, starts, counts = np.unique(g_pids[order], return_index=True, return_counts=True)
        return cls(pids=pids, starts=starts, counts=counts, order=order, camids=g_camids)

    def group_of(self, q_pids: np.ndarray) -> np.ndarray:
        """Index of each query's identity among the gallery ids, -1 where it has no gallery image."""
        if self.pids.size == 0:
            return np.full(q_pids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.pids, q_pids)
        pos_c = np.minimum(pos, self.pids.size - 1)
        return np.where(self.pids[pos_c] == q_pids, pos_c, -1)

    def same_identity(self, group: np.ndarray, q_camids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per query: gallery indices of its identity (padded), and which of them are matches.

        Returns (gidx, in_group, is_match), each (B, K) with K the largest group in the block;
        `gidx` is ascending within a row (pads repeat index 0 and are off in `in_group`).
        """
        count = np.where(group >= 0, self.counts[np.maximum(group, 0)], 0)
        width = max(int(count.max()) if count.size else 0, 1)  # >= 1 keeps column 0 addressable
        cols = np.arange(width)
        in_group = cols[None, :] < count[:, None]
        slots = np.where(in_group, self.starts[np.maximum(group, 0)][:, None] + cols[None, :], 0)
        gidx = self.order[slots] if self.order.size else np.zeros(slots.shape, dtype=np.int64)
        is_match = in_group & (self.camids[gidx] != q_camids[:, None])
        return gidx, in_group, is_match


def _sorted_matches(d_same: np.ndarray, gidx: np.ndarray, is_match: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each row's true-match distances in ranking order (ties by gallery index), then the rest."""
    key = np.where(is_match, d_same, 0)
    perm = np.lexsort((key, ~is_match), axis=-1)  # stable: equal keys keep gallery order
    return np.take_along_axis(d_same, perm, 1), np.take_along_axis(gidx, perm, 1)


class _Scratch:
    """Per-thread buffers reused from block to block by the CPU counts of one evaluation.

    A fresh large array costs a page fault per 4 KiB on first touch, which at these sizes costs
    more than the comparisons and the sort themselves.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def buffer(self, name: str, size: int, dtype: np.dtype) -> np.ndarray:
        """A flat array of `size` items of `dtype`, this thread's own, reused between calls."""
        key = f"{name}-{np.dtype(dtype).str}"
        buf = getattr(self._local, key, None)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 1), dtype=dtype)
            setattr(self._local, key, buf)
        return buf[:size]


def _sample_columns(num_gallery: int) -> np.ndarray:
    """Runs of 16 adjacent columns (one cache line of float32) spread evenly over the gallery."""
    runs = np.linspace(0, max(num_gallery - 16, 0), max(1, min(_SAMPLE_RUNS, num_gallery // 64)))
    cols = (runs.astype(np.int64)[:, None] + np.arange(16)).ravel()
    return np.unique(np.minimum(cols, num_gallery - 1))


def _sort_cost(fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cost per gallery item of sorting the items up to a threshold, whether the row is better
    sorted whole) for thresholds at `fraction` of the row."""
    whole = np.full(fraction.shape, _COST_COPY + _COST_SORT)
    taken = _COST_KEEP + _COST_KEEP_PER_ITEM * fraction + _COST_SORT * fraction
    return np.minimum(whole, taken), whole <= taken


def _plan_rows(
    part: np.ndarray, m: np.ndarray, n: np.ndarray, num_gallery: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many of its matches are counted by sorting (the rest by comparison passes),
    and whether the sorted items are the whole row. Chosen by the estimated cost in element
    operations, from the matches' estimated ranks in a sample of the row."""
    sample = np.sort(np.ascontiguousarray(part[:, _sample_columns(num_gallery)]), axis=1)
    before = torch.searchsorted(torch.from_numpy(sample), torch.from_numpy(m), right=True).numpy()
    fraction = before / sample.shape[1]  # estimated share of the row up to each match
    rows = np.arange(len(n))
    best_cost = np.full(len(n), np.inf)
    sorted_matches = n.copy()
    for j in range(min(_MAX_COUNTED_BY_PASSES, m.shape[1]) + 1):  # j deepest matches by passes
        split = n - j
        cost, _ = _sort_cost(fraction[rows, np.maximum(split - 1, 0)])
        cost = _COST_PASSES * j + np.where(split > 0, cost, 0.0)
        better = (split >= 0) & (cost < best_cost)
        best_cost[better] = cost[better]
        sorted_matches[better] = split[better]
    _, whole = _sort_cost(fraction[rows, np.maximum(sorted_matches - 1, 0)])
    return sorted_matches, (sorted_matches > 0) & whole


def _counts_before_cpu(
    d: np.ndarray,
    m_dist: np.ndarray,
    n_match: np.ndarray,
    own: np.ndarray,
    n_own: np.ndarray,
    scratch: _Scratch,
) -> tuple[np.ndarray, np.ndarray]:
    """Per match: valid negatives strictly closer, and valid negatives at exactly its distance.

    Only items not farther than a match can sit before it. A row's matches are split in two: up
    to the split, the items not farther than the last of them are taken out (one comparison
    pass) and sorted (numpy's SIMD sort), or, when that is most of the row (weak features), the
    row is sorted whole; each of the few matches past the split (a trained model's stray hard
    match deep in the ranking) is counted by two comparison passes over the row instead, which
    is far cheaper than sorting down to it. The split comes from a cost estimate on a sample of
    the row (`_plan_rows`); every choice gives the same exact counts. Rows are grouped by how
    many items they sort, so each group is one padded matrix: one sort call and one batched
    searchsorted. The query's own identity (matches and removed same-camera items; `own`
    sorted per row, +inf pads) is counted the same way and subtracted.
    """
    num_rows, num_gallery = d.shape
    rows = np.flatnonzero(n_match)
    closer = np.zeros(m_dist.shape, dtype=np.int64)
    tied = np.zeros(m_dist.shape, dtype=np.int64)
    if rows.size == 0:
        return closer, tied
    part = d if rows.size == num_rows else d[rows]
    m_rows = np.ascontiguousarray(m_dist[rows])
    n = n_match[rows]
    split, whole = _plan_rows(part, m_rows, n, num_gallery)
    # counts over the whole row, before the own identity is subtracted: (R, K) strictly
    # closer and not farther
    lt = np.zeros(m_rows.shape, dtype=np.int64)
    le = np.zeros(m_rows.shape, dtype=np.int64)
    for i in np.flatnonzero(split < n):  # the deep matches, by comparison passes
        row = part[i]
        for k in range(split[i], n[i]):
            lt[i, k] = np.count_nonzero(row < m_rows[i, k])
            le[i, k] = np.count_nonzero(row <= m_rows[i, k])

    to_sort = np.flatnonzero(split > 0)
    kept = np.full(to_sort.size, num_gallery, dtype=np.int64)
    taken: dict[int, np.ndarray] = {}  # slot -> the row's items up to its split match
    for slot, i in enumerate(to_sort):
        if not whole[i]:
            row = part[i]
            taken[slot] = row[row <= m_rows[i, split[i] - 1]]
            kept[slot] = taken[slot].size

    def count(group: np.ndarray) -> None:
        """`group`: slots in `to_sort` with similar kept counts; fills their lt / le."""
        at = to_sort[group]
        size = kept[group]
        sort_whole = bool(whole[at[0]])
        width = num_gallery if sort_whole else int(size.max())
        near = scratch.buffer("near", group.size * width, d.dtype).reshape(group.size, width)
        if sort_whole:
            np.take(part, at, axis=0, out=near, mode="clip")  # "clip": no buffered copy
        else:
            near.fill(np.inf)
            for pos, (slot, c) in enumerate(zip(group, size)):
                near[pos, :c] = taken.pop(slot)
        near.sort(axis=1)
        m = torch.from_numpy(m_rows[at])
        near_t = torch.from_numpy(near)
        # +inf pads must not count as <= a +inf match: clip to the sizes
        size_t = torch.from_numpy(size)[:, None]
        below = torch.searchsorted(near_t, m).numpy()
        upto = torch.minimum(torch.searchsorted(near_t, m, right=True), size_t).numpy()
        sorted_part = np.arange(m_rows.shape[1])[None, :] < split[at][:, None]
        lt[at] = np.where(sorted_part, below, lt[at])
        le[at] = np.where(sorted_part, upto, le[at])

    whole_first = np.lexsort((kept, ~whole[to_sort]))  # whole rows, then the rest by size
    widths = np.maximum(kept[whole_first], 1)
    num_whole = int(np.count_nonzero(whole[to_sort]))
    for lo, hi in ((0, num_whole), (num_whole, whole_first.size)):  # a group never mixes them
        start = lo
        while start < hi:  # at most _GROUP_ELEMENTS padded items (or one row) a group
            cost = np.arange(1, hi - start + 1) * widths[start:hi]
            stop = start + max(1, int(np.searchsorted(cost, _GROUP_ELEMENTS, side="right")))
            count(np.sort(whole_first[start:stop]))
            start = stop

    own_t = torch.from_numpy(np.ascontiguousarray(own[rows]))
    m_t = torch.from_numpy(m_rows)
    n_own_t = torch.from_numpy(n_own[rows])[:, None]
    own_lt = torch.searchsorted(own_t, m_t).numpy()
    own_le = torch.minimum(torch.searchsorted(own_t, m_t, right=True), n_own_t).numpy()
    closer[rows] = lt - own_lt
    tied[rows] = (le - own_le) - (lt - own_lt)
    return closer, tied


def _counts_before_torch(
    blk: torch.Tensor, m_dist: np.ndarray, own: np.ndarray, n_own: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The same counts on an accelerator: whole rows sorted, then batched searchsorted."""
    ordered = torch.sort(blk, dim=1).values
    m_t = torch.from_numpy(np.ascontiguousarray(m_dist)).to(blk.device)
    own_t = torch.from_numpy(own).to(blk.device)
    n_own_t = torch.from_numpy(n_own).to(blk.device)[:, None]
    lt = torch.searchsorted(ordered, m_t) - torch.searchsorted(own_t, m_t)
    # a +inf match would also count the +inf pads as <=: clip to the group size
    own_le = torch.minimum(torch.searchsorted(own_t, m_t, right=True), n_own_t)
    le = torch.searchsorted(ordered, m_t, right=True) - own_le
    return lt.cpu().numpy(), (le - lt).cpu().numpy()


def _block_match_ranks(
    blk: torch.Tensor,
    gidx: np.ndarray,
    in_group: np.ndarray,
    is_match: np.ndarray,
    row0: int,
    scratch: _Scratch,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of every true match for one block of queries.

    Returns (ranks, n_match): ranks (B, K), ascending per row and padded with -1, and the number
    of matches per row. The rank of the k-th match in (distance, index) order is k plus the
    valid negatives before it: those strictly closer, plus those at exactly its distance with a
    smaller gallery index (found explicitly; exact ties are rare).
    """
    on_cpu = blk.device.type == "cpu"
    d = blk.numpy() if on_cpu else None
    has_nan = np.isnan(d.min()) if d is not None else bool(torch.isnan(blk).any())
    if has_nan:
        rows = torch.isnan(blk).any(dim=1).nonzero().flatten().cpu().numpy() + row0
        raise ValueError(f"distance matrix has NaN distances (query rows {rows[:5].tolist()})")
    n_match = is_match.sum(axis=1)
    if not n_match.any():
        return np.full(gidx.shape, -1, dtype=np.int64), n_match
    if d is not None:
        d_same = np.take_along_axis(d, gidx, 1)
    else:
        d_same = blk.gather(1, torch.from_numpy(gidx).to(blk.device)).cpu().numpy()
    m_dist, m_idx = _sorted_matches(d_same, gidx, is_match)
    own = np.sort(np.where(in_group, d_same, np.inf), axis=1)
    n_own = in_group.sum(axis=1)
    if d is not None:
        closer, tied = _counts_before_cpu(d, m_dist, n_match, own, n_own, scratch)
    else:
        closer, tied = _counts_before_torch(blk, m_dist, own, n_own)
    k = np.arange(gidx.shape[1])[None, :]
    valid = k < n_match[:, None]
    ranks = np.where(valid, k + closer, -1)
    for b, j in zip(*np.nonzero(valid & (tied > 0))):
        if d is not None:
            cols = np.flatnonzero(d[b] == m_dist[b, j])
        else:
            cols = torch.nonzero(blk[b] == blk[b, int(m_idx[b, j])]).flatten().cpu().numpy()
        cols = cols[~np.isin(cols, gidx[b][in_group[b]])]
        ranks[b, j] += int(np.count_nonzero(cols < m_idx[b, j]))
    return ranks, n_match


def _cuhk03_block(
    blk: torch.Tensor,
    groups: _GalleryGroups,
    group: np.ndarray,
    gidx: np.ndarray,
    is_match: np.ndarray,
    n_match: np.ndarray,
    u: np.ndarray,
    depth: int,
) -> np.ndarray:
    """Single-gallery-shot CMC curve (B, depth) of one block, averaged over the repeats in `u`."""
    n_rows, repeats, n_ids = u.shape
    curve = np.zeros((n_rows, depth))
    has = np.flatnonzero(n_match > 0)
    if has.size == 0:
        return curve
    u = u[has]
    pos = np.floor(u * groups.counts[None, None, :]).astype(np.int64)
    sel = groups.order[groups.starts[None, None, :] + pos]  # (H, R, P) gallery indices
    own = group[has]
    # The query's own identity: draw among its matches (other cameras), in gallery order.
    compact = np.argsort(~is_match[has], axis=1, kind="stable")
    own_pos = np.floor(u[np.arange(has.size), :, own] * n_match[has][:, None]).astype(np.int64)
    own_idx = gidx[has][np.arange(has.size)[:, None], np.take_along_axis(compact, own_pos, 1)]
    sel[np.arange(has.size), :, own] = own_idx
    sel_t = torch.from_numpy(sel.reshape(has.size, -1)).to(blk.device)
    rows_t = torch.from_numpy(has).to(blk.device)
    d = blk[rows_t].gather(1, sel_t).cpu().numpy().reshape(sel.shape)
    d_own = d[np.arange(has.size), :, own][..., None]
    before = (d < d_own) | ((d == d_own) & (sel < own_idx[..., None]))
    rank = before.sum(axis=2)  # (H, R), 0-based
    curve[has] = (rank[:, :, None] <= np.arange(depth)[None, None, :]).mean(axis=1)
    return curve


def _check_options(ap: str, cmc: str, cmc_repeats: int, unmatched: str | None, max_rank: int) -> str:
    if ap not in AP_VARIANTS:
        raise ValueError(f"ap must be one of {AP_VARIANTS}, got {ap!r}")
    if cmc not in CMC_VARIANTS:
        raise ValueError(f"cmc must be one of {CMC_VARIANTS}, got {cmc!r}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if cmc == "cuhk03-single-gallery-shot" and int(cmc_repeats) < 1:
        raise ValueError(f"cmc_repeats must be >= 1, got {cmc_repeats}")
    if unmatched is None:
        unmatched = "zero" if ap == "market-official" else "skip"
    if unmatched not in ("skip", "zero"):
        raise ValueError(f"unmatched must be 'skip' or 'zero', got {unmatched!r}")
    return unmatched


def _evaluate_blocks(
    blocks: Iterator[tuple[int, torch.Tensor]],
    labels: _Labels,
    max_rank: int,
    ap: str,
    cmc: str,
    cmc_repeats: int,
    seed: int,
    unmatched: str,
    extra_protocol: dict[str, Any],
    threads: int | None,
) -> dict[str, Any]:
    nq = labels.q_pids.size
    threads = _available_cores() if threads is None else max(1, int(threads))
    groups = _GalleryGroups.build(labels.g_pids, labels.g_camids)
    depth = max(int(max_rank), _MIN_CURVE)
    ap_all = np.zeros(nq)
    inp_all = np.zeros(nq)
    curve_all = np.zeros((nq, depth))
    matched = np.zeros(nq, dtype=bool)
    rng = np.random.default_rng(seed) if cmc == "cuhk03-single-gallery-shot" else None
    scratch = _Scratch()

    def evaluate_block(start: int, blk: torch.Tensor, u: np.ndarray | None) -> None:
        stop = start + blk.shape[0]
        group = groups.group_of(labels.q_pids[start:stop])
        gidx, in_group, is_match = groups.same_identity(group, labels.q_camids[start:stop])
        ranks, n_match = _block_match_ranks(blk, gidx, in_group, is_match, start, scratch)
        has = n_match > 0
        matched[start:stop] = has
        k = np.arange(ranks.shape[1], dtype=np.float64)[None, :]
        valid = k < n_match[:, None]
        r = np.where(valid, ranks, 0).astype(np.float64)  # pads (-1) never divide
        precision = np.where(valid, (k + 1) / (r + 1), 0.0)
        if ap == "market-official":
            previous = np.where(r > 0, k / np.maximum(r, 1), 1.0)
            per_match = np.where(valid, (previous + precision) / 2, 0.0)
        else:
            per_match = precision
        denom = np.maximum(n_match, 1)
        ap_all[start:stop] = np.where(has, per_match.sum(axis=1) / denom, 0.0)
        hardest = r[np.arange(len(n_match)), np.maximum(n_match - 1, 0)]
        inp_all[start:stop] = np.where(has, n_match / (hardest + 1.0), 0.0)
        if u is not None:
            curve_all[start:stop] = _cuhk03_block(blk, groups, group, gidx, is_match, n_match, u, depth)
        else:
            first = np.where(has, ranks[:, 0], depth)
            curve_all[start:stop] = first[:, None] <= np.arange(depth)[None, :]

    # Blocks write disjoint rows of the outputs, and their numpy / torch work releases the GIL,
    # so `threads` threads share them; the CUHK03 draws are made here, in block order, so the
    # result does not depend on the threads. At most 2 blocks per thread are in flight.
    with ThreadPoolExecutor(threads, thread_name_prefix="evaluate") as pool:
        pending: list[Future] = []
        for start, blk in blocks:
            u = None
            if rng is not None:
                u = rng.random((blk.shape[0], int(cmc_repeats), groups.pids.size))
            if blk.device.type != "cpu" or threads == 1:
                evaluate_block(start, blk, u)  # an accelerator works through its own queue
                continue
            pending.append(pool.submit(evaluate_block, start, blk, u))
            if len(pending) >= 2 * threads:
                pending.pop(0).result()
        for future in pending:
            future.result()
    n_matched = int(matched.sum())
    counted = np.ones(nq, dtype=bool) if unmatched == "zero" else matched
    n_counted = int(counted.sum())
    if n_counted == 0:
        raise ValueError(
            "no query has a true match in the gallery (same identity, other camera): nothing to evaluate"
        )
    curve = curve_all[counted].sum(axis=0) / n_counted
    protocol: dict[str, Any] = {
        "ap": ap,
        "cmc": cmc,
        "unmatched_queries": "counted-as-zero" if unmatched == "zero" else "skipped",
        "removed": "same identity and same camera as the query",
        "ties": TIE_RULE,
    }
    if cmc == "cuhk03-single-gallery-shot":
        protocol.update(cmc_repeats=int(cmc_repeats), cmc_seed=int(seed))
    protocol.update(extra_protocol)
    return {
        "mAP": float(ap_all[counted].sum() / n_counted),
        "mINP": float(inp_all[counted].sum() / n_counted),
        "cmc": curve[: int(max_rank)].copy(),
        "R1": float(curve[0]),
        "R5": float(curve[4]),
        "R10": float(curve[9]),
        "num_query_evaluated": n_counted,
        "num_query_skipped": nq - n_counted,
        "num_query_without_match": nq - n_matched,
        "protocol": protocol,
    }


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _rows_per_block(num_query: int, num_gallery: int, block_rows: int | None) -> int:
    """`block_rows`, or about _BLOCK_ELEMENTS items a block, in a number of blocks that the
    cores share evenly (the blocks are the unit of work of the evaluation's threads)."""
    if block_rows is not None:
        if int(block_rows) < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    cores = _available_cores()
    blocks = -(-num_query * max(num_gallery, 1) // _BLOCK_ELEMENTS)
    blocks = -(-blocks // cores) * cores
    return max(1, -(-num_query // blocks))


def _as_float_block(block: np.ndarray) -> torch.Tensor:
    if block.dtype == np.float16:
        block = block.astype(np.float32)
    elif block.dtype.kind in "iub":
        block = block.astype(np.float64)
    elif block.dtype not in (np.float32, np.float64):
        raise ValueError(f"distance matrix must be real-valued, got dtype {block.dtype}")
    block = np.ascontiguousarray(block)
    with warnings.catch_warnings():  # read-only inputs (memmaps) are fine: nothing writes to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(block)


def _distmat_blocks(distmat: np.ndarray | torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, distmat.shape[0], rows):
        block = distmat[start : start + rows]
        if isinstance(block, torch.Tensor):
            block = block.detach()
            if not block.is_floating_point():
                block = block.double()
            elif block.dtype in (torch.float16, torch.bfloat16):
                block = block.float()
            yield start, block.contiguous()
        else:
            yield start, _as_float_block(block)


def evaluate_reid(
    distmat: np.ndarray | torch.Tensor,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    ap: APVariant = "non-interpolated",
    cmc: CMCVariant = "all-shot",
    cmc_repeats: int = 10,
    seed: int = 0,
    unmatched: Unmatched | None = None,
    block_rows: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """mAP, mINP and CMC of a query x gallery distance matrix (smaller = more similar).

    Returns a dict: "mAP", "mINP" (floats in [0, 1]), "cmc" (float64 array of length `max_rank`;
    entry k-1 is CMC at rank k), "R1", "R5", "R10", "num_query_evaluated", "num_query_skipped",
    "num_query_without_match" and "protocol" (which AP / CMC variant, the tie rule, ...).
    `distmat` may be a numpy array (or memmap) or a torch tensor on any device; it is read in
    blocks of `block_rows` queries and never copied whole; on the CPU, `threads` (default: the
    cores this process may use) share each block's rows. See the module docstring for the
    definitions and the variants.
    """
    unmatched = _check_options(ap, cmc, cmc_repeats, unmatched, max_rank)
    if not isinstance(distmat, torch.Tensor):
        distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(distmat.shape)}")
    nq, ng = distmat.shape
    if nq == 0 or ng == 0:
        raise ValueError(f"distmat is empty ({nq} queries x {ng} gallery items)")
    labels = _check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
    blocks = _distmat_blocks(distmat, _rows_per_block(nq, ng, block_rows))
    return _evaluate_blocks(blocks, labels, max_rank, ap, cmc, cmc_repeats, seed, unmatched, {}, threads)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" means the GPU when torch sees one, else the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_features(x: Any, name: str, device: torch.device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dimensions), got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _feature_distance_blocks(
    q_feats: torch.Tensor, g_feats: torch.Tensor, metric: Metric, rows: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Query x gallery distances in float64, one block of `rows` queries at a time.

    cosine: 1 - <q, g> / (|q| |g|) (a zero vector is at distance 1 from everything);
    euclidean: |q - g|, whose ranking equals the squared distance's.
    """
    if metric == "cosine":
        g_unit = torch.nn.functional.normalize(g_feats, dim=1)
    for start in range(0, q_feats.shape[0], rows):
        q = q_feats[start : start + rows]
        if metric == "cosine":
            yield start, 1.0 - torch.nn.functional.normalize(q, dim=1) @ g_unit.T
        else:
            yield start, torch.cdist(q, g_feats)


def evaluate_reid_features(
    q_feats: Any,
    g_feats: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    metric: Metric = "cosine",
    device: str | torch.device = "auto",
    ap: APVariant = "non-interpolated",
    cmc: CMCVariant = "all-shot",
    cmc_repeats: int = 10,
    seed: int = 0,
    unmatched: Unmatched | None = None,
    block_rows: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """`evaluate_reid` straight from features, without ever holding the full distance matrix.

    Distances are computed in float64 per block of queries on `device` ("auto": CUDA when
    available), so CPU and GPU give the same numbers to rounding. The result's protocol records
    the metric and the device.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    unmatched = _check_options(ap, cmc, cmc_repeats, unmatched, max_rank)
    dev = resolve_device(device)
    q = _as_features(q_feats, "q_feats", dev)
    g = _as_features(g_feats, "g_feats", dev)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feats have {q.shape[1]} dimensions but g_feats have {g.shape[1]}")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise ValueError(f"no features to evaluate ({q.shape[0]} queries, {g.shape[0]} gallery items)")
    labels = _check_labels(q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids)
    blocks = _feature_distance_blocks(
        q, g, metric, _rows_per_block(q.shape[0], g.shape[0], block_rows)
    )
    extra = {"distance": f"{metric} (float64)", "device": dev.type}
    return _evaluate_blocks(blocks, labels, max_rank, ap, cmc, cmc_repeats, seed, unmatched, extra, threads)
