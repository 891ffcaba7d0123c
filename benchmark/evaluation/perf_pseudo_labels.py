"""Pseudo-labelling speed (kNN + k-reciprocal Jaccard + DBSCAN) beside the direct dense reference.

Cluster Contrast-style methods recompute pseudo labels every epoch, so this step's cost is paid
~50 times per run; the claim that `methods.common.jaccard` is both fast and the same clustering as
the published definition is checked here, on features shaped like a trained re-ID model's.

The features: identity centres on the unit sphere, some identities sharing an "attribute" direction
(similar-looking people, which DBSCAN sometimes merges), per-identity camera shifts, per-image
noise of varying strength, and a few stray images (occluded / badly cropped) that carry almost none
of their identity, which DBSCAN leaves as outliers. At Market scale (751 identities, 12,936 images,
2048-d) DBSCAN(eps=0.6, min_samples=4) finds about 600 clusters and ~5% outliers.

Every side runs in a fresh spawned process, as in `benchmark.evaluation.perf`, so that its peak
RSS is its own; the peak is counted from the moment the imports and the input are in memory (Linux
VmHWM, reset there) so that the input generator's temporaries do not set it. Rows use the fields of
`benchmark.evaluation.perf.Row`. The machine is named nowhere in a row: compare the two sides of a
row, and the flat faiss search timed beside ours, rather than absolute seconds across machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

from benchmark.evaluation.perf_memory import GIB, peak_gib, reset_peak

# Published Cluster Contrast implementation on the 2-core reference machine, Market train, 2048-d:
# kNN 3.3 s + Jaccard 17.1 s + DBSCAN 1.2 s, as stated in the issue. Target: a quarter of it.
PUBLISHED_MARKET_SECONDS = 21.7
TARGET_MARKET_SECONDS = PUBLISHED_MARKET_SECONDS / 4
PUBLISHED_PHASES = "3.3 s + 17.1 s + 1.2 s"
TARGET_ARI = 0.999


@dataclass(frozen=True)
class PseudoLabelScale:
    """A training-set size: images, identities, feature dimension; whether the reference runs."""

    name: str
    num_images: int
    num_ids: int
    dim: int
    with_reference: bool


SCALES: dict[str, PseudoLabelScale] = {
    "small": PseudoLabelScale("small", 1000, 58, 2048, True),
    "market": PseudoLabelScale("market", 12936, 751, 2048, True),
    # MSMT17 train; the dense reference would need several 4.3 GB N x N matrices.
    "msmt17": PseudoLabelScale("msmt17", 32621, 1041, 2048, False),
}
K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4
KNN_BLOCK_ROWS = 512  # methods.common.knn's default block
# Targets (issue 20): kNN within 1.3x its GEMM floor; at Market scale the total within 0.12x of
# the published structure timed here; at MSMT17 scale the total within 1.5x the floor and at most
# 2 GiB beyond the input.
KNN_VS_FLOOR = 1.3
MARKET_VS_PUBLISHED = 0.12
MSMT_TOTAL_VS_FLOOR = 1.5
MSMT_EXTRA_GIB = 2.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reid_like_features(
    num_images: int = 12936,
    num_ids: int = 751,
    dim: int = 2048,
    seed: int = 0,
    num_cameras: int = 6,
    noise: float = 0.9,
    camera_shift: float = 0.45,
    shared_attributes: float = 0.6,
    hard_fraction: float = 0.08,
    stray_fraction: float = 0.06,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 (N, dim) L2-normalised, identity ids, camera ids) like a trained model's.

    Images per identity are skewed (at least 2; Market-like mean N / num_ids). Identities are put in
    groups of look-alikes: each centre mixes a group direction (weight up to `shared_attributes`)
    with its own. Each image adds its identity's shift for its camera and noise whose strength
    varies per image (`hard_fraction` of images get 2x); `stray_fraction` of images keep at most
    10% of their identity signal.
    """
    if num_images < 2 * num_ids:
        raise ValueError(f"num_images={num_images} must be at least 2 per identity ({num_ids} ids)")
    rng = np.random.default_rng([seed, 7])
    share = rng.gamma(2.0, size=num_ids)
    counts = 2 + rng.multinomial(num_images - 2 * num_ids, share / share.sum())
    num_groups = max(1, num_ids // 3)
    group = rng.integers(0, num_groups, size=num_ids)
    group_dir = _unit(rng.standard_normal((num_groups, dim)))
    mix = rng.uniform(0.0, shared_attributes, size=num_ids)[:, None]
    own = _unit(rng.standard_normal((num_ids, dim)))
    centres = _unit(np.sqrt(mix) * group_dir[group] + np.sqrt(1 - mix) * own)
    ids = np.repeat(np.arange(num_ids), counts)
    cams = rng.integers(0, num_cameras, size=num_images)
    # how each identity looks in each camera (lighting, viewpoint): one direction per pair
    cam_dirs = _unit(rng.standard_normal((num_ids, num_cameras, dim), dtype=np.float32))
    strength = noise * np.exp(rng.normal(0.0, 0.25, size=num_images))
    strength[rng.random(num_images) < hard_fraction] *= 2.0
    signal = np.ones(num_images)
    stray = rng.random(num_images) < stray_fraction
    signal[stray] = rng.uniform(0.0, 0.1, size=int(stray.sum()))
    features = np.empty((num_images, dim), dtype=np.float32)
    for start in range(0, num_images, 2048):  # blocks keep the float64 temporaries small
        sl = slice(start, start + 2048)
        x = signal[sl, None] * (centres[ids[sl]] + camera_shift * cam_dirs[ids[sl], cams[sl]])
        x += strength[sl, None] * _unit(rng.standard_normal((x.shape[0], dim)))
        features[sl] = _unit(x)
    return features, ids, cams


# ---------------------------------------------------------------- jobs (each in a fresh process)


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def gemm_floor(x: np.ndarray, block_rows: int = KNN_BLOCK_ROWS) -> None:
    """The bare products the symmetric kNN multiplies out (the upper block triangle of X X^T,
    same blocks, same BLAS), with nothing done with them: the kNN stage's floor."""
    for start in range(0, x.shape[0], block_rows):
        x[start:start + block_rows] @ x[start:].T


def square_gemm_gflops(x: np.ndarray, size: int = 4096) -> float:
    """GFLOP/s of one square float32 product on this machine (best of 2), for the note."""
    a = x[: min(size, x.shape[0])]
    best = min(_timed(lambda: a @ a.T)[0] for _ in range(2))
    return 2.0 * a.shape[0] ** 2 * a.shape[1] / best / 1e9


def job_pseudo_labels(scale: PseudoLabelScale, seed: int, impl: str, workdir: str) -> dict[str, Any]:
    """Run one implementation end to end, timing each phase; labels (and distances) go to workdir.

    impl "ours": `knn` + `jaccard_from_neighbours` (sparse) + DBSCAN on the sparse matrix; saves
    labels and the sparse distances. impl "reference": dense ranking + dense Jaccard + DBSCAN on
    the dense matrix; saves labels, then (untimed) compares its distances with ours on every pair.
    impl "published": a flat faiss search + the published code's per-sample loops + DBSCAN on the
    dense matrix (the pipeline behind the issue's 21.7 s), timed on this machine; saves labels.
    """
    import scipy.sparse as sp

    from methods.common.clustering import dbscan_pseudo_labels
    from methods.common.jaccard import jaccard_from_neighbours
    from methods.common.jaccard_reference import (
        dense_jaccard_from_ranking,
        dense_ranking,
        loop_jaccard_published_structure,
    )
    from methods.common.knn import knn

    features, _, _ = reid_like_features(scale.num_images, scale.num_ids, scale.dim, seed)
    base = reset_peak()  # the peak counts from here: imports and input loaded
    out: dict[str, Any] = {"base_gib": base, "input_gib": features.nbytes / GIB}
    if impl == "ours":
        out["knn"], c1, (sims, ranking) = _timed(lambda: knn(features, K1))
        out["jaccard"], c2, dist = _timed(
            lambda: jaccard_from_neighbours(features, sims, ranking, K1, K2)
        )
        out["stored_per_row"] = dist.nnz / scale.num_images
        out["floor"], _, _ = _timed(lambda: gemm_floor(features))
        out["gemm_gflops"] = square_gemm_gflops(features)
        # the search the published code runs (a flat index over all pairs), for calibration
        out["flat_knn"], _, _ = _timed(lambda: knn(features, K1, backend="faiss-flat"))
    elif impl == "published":
        out["knn"], c1, (_, ranking) = _timed(lambda: knn(features, K1, backend="faiss-flat"))
        out["jaccard"], c2, dist = _timed(
            lambda: loop_jaccard_published_structure(features, ranking, K1, K2)
        )
    else:
        out["knn"], c1, (sims, ranking) = _timed(lambda: dense_ranking(features, K1, np.float32))
        out["jaccard"], c2, dist = _timed(lambda: dense_jaccard_from_ranking(sims, ranking, K1, K2))
        del sims
    out["dbscan"], c3, labels = _timed(lambda: dbscan_pseudo_labels(dist, EPS, MIN_SAMPLES))
    out["cpu"] = c1 + c2 + c3
    out["total"] = out["knn"] + out["jaccard"] + out["dbscan"]
    out["peak_gib"] = peak_gib()
    np.save(f"{workdir}/{impl}_labels.npy", labels)
    if impl == "ours":
        sp.save_npz(f"{workdir}/ours_dist.npz", dist)
    elif impl == "reference":
        ours = sp.load_npz(f"{workdir}/ours_dist.npz").tocoo()
        stored = float(np.abs(dist[ours.row, ours.col] - ours.data).max())
        dist[ours.row, ours.col] = 1.0  # what remains must be the absent pairs' distance, 1
        out["max_distance_diff"] = max(stored, float(np.abs(dist - 1.0).max()))
    return out


def _run(fresh_process: bool, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    if not fresh_process:
        return fn(**kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, **kwargs).result()


# ---------------------------------------------------------------- rows


def _row(task: str, scale: str, reference: str, size: str, ours: float | None, ref: float | None,
         **extra: Any) -> dict[str, Any]:
    """A row with exactly the fields of `benchmark.evaluation.perf.Row`."""
    row = {
        "task": task, "scale": scale, "reference": reference, "ours_size": size,
        "reference_size": size if ref is not None else "", "ours_seconds": ours,
        "reference_seconds": ref, "ratio": None if ref is None or ours is None else ours / ref,
        "ours_peak_gib": None, "reference_peak_gib": None, "max_metric_diff": None,
        "max_distance_diff": None, "ours_cpu_seconds": None, "reference_cpu_seconds": None,
        "target": "", "target_met": None, "note": "",
    }
    row.update(extra)
    return row


def _cluster_summary(labels: np.ndarray) -> str:
    return f"{int(labels.max()) + 1} clusters, {np.mean(labels < 0):.1%} outliers"


def rows_for_scale(
    scale: PseudoLabelScale, seed: int, fresh_process: bool = True
) -> list[dict[str, Any]]:
    """Measure one scale: ours, then (when the scale allows) the dense reference on the same input."""
    import tempfile

    from sklearn.metrics import adjusted_rand_score

    size = f"{scale.num_images:,} x {scale.dim}"
    with tempfile.TemporaryDirectory(prefix="benchmark-pseudo-") as tmp:
        ours = _run(fresh_process, job_pseudo_labels, scale=scale, seed=seed, impl="ours", workdir=tmp)
        ours_labels = np.load(f"{tmp}/ours_labels.npy")
        ref = pub = None
        if scale.with_reference:
            ref = _run(fresh_process, job_pseudo_labels, scale=scale, seed=seed, impl="reference",
                       workdir=tmp)
            ref_labels = np.load(f"{tmp}/reference_labels.npy")
            pub = _run(fresh_process, job_pseudo_labels, scale=scale, seed=seed, impl="published",
                       workdir=tmp)
            pub_labels = np.load(f"{tmp}/published_labels.npy")
    setting = (
        f"k1={K1}, k2={K2}, DBSCAN eps={EPS}, min_samples={MIN_SAMPLES}; "
        "synthetic re-ID-like features"
    )
    phases = [
        ("kNN", "knn", "dense X X^T + per-row sort (numpy)",
         "faiss heaps over the upper block triangle"),
        ("Jaccard", "jaccard", "dense V, per-sample loops (published definition)",
         "sparse, vectorised over row blocks"),
        ("DBSCAN", "dbscan", "scikit-learn DBSCAN on the dense N x N matrix",
         "scikit-learn DBSCAN on the stored entries <= eps"),
    ]
    rows = [
        _row(f"pseudo-labels ({label})", scale.name, refdesc if ref else "(ours alone)", size,
             ours[key], ref[key] if ref else None, note=f"ours: {oursdesc}")
        for label, key, refdesc, oursdesc in phases
    ]
    rows[0]["note"] += (
        f"; a full faiss IndexFlatIP search (what the published code runs) took "
        f"{ours['flat_knn']:.2f} s in the same process"
    )
    knn_ratio = ours["knn"] / ours["floor"]
    floor_gflop = scale.num_images * (scale.num_images + KNN_BLOCK_ROWS) * scale.dim / 1e9
    rows.insert(1, _row(
        "pseudo-labels (kNN)", scale.name, "GEMM floor: bare X X^T over the same blocks", size,
        ours["knn"], ours["floor"], target=f"<= {KNN_VS_FLOOR}x the floor",
        target_met=knn_ratio <= KNN_VS_FLOOR,
        note=f"floor: the upper block triangle of X X^T ({floor_gflop:.0f} GFLOP) in "
        f"{KNN_BLOCK_ROWS}-row blocks, same process, {floor_gflop / ours['floor']:.0f} GFLOP/s; one "
        f"square 4096 x {scale.dim} sgemm runs at {ours['gemm_gflops']:.0f} GFLOP/s here",
    ))
    total = _row(
        "pseudo-labels (total)", scale.name,
        "direct dense reference" if ref else "(ours alone; a dense reference needs N x N matrices)",
        size, ours["total"], ref["total"] if ref else None,
        ours_peak_gib=ours["peak_gib"], reference_peak_gib=ref["peak_gib"] if ref else None,
        ours_cpu_seconds=ours["cpu"], reference_cpu_seconds=ref["cpu"] if ref else None,
    )
    notes = [
        setting,
        f"ours: {_cluster_summary(ours_labels)}, {ours['stored_per_row']:.0f} stored distances per "
        f"row, peak +{ours['peak_gib'] - ours['base_gib']:.2f} GiB over the process with its "
        f"input loaded, {ours['cpu']:.1f} CPU s",
    ]
    if ref is not None:
        ari = float(adjusted_rand_score(ref_labels, ours_labels))
        identical = bool(np.array_equal(ref_labels, ours_labels))
        total["max_metric_diff"] = 1.0 - ari
        total["max_distance_diff"] = ref["max_distance_diff"]
        notes.append(
            f"reference: {_cluster_summary(ref_labels)}, peak +{ref['peak_gib'] - ref['base_gib']:.2f} "
            f"GiB, {ref['cpu']:.1f} CPU s; labels {'identical' if identical else 'differ'}, "
            f"ARI {ari:.6f} (metric diff = 1 - ARI)"
        )
        if scale.name == "market":
            total["target"] = f"<= {TARGET_MARKET_SECONDS:.1f} s and ARI >= {TARGET_ARI}"
            total["target_met"] = ours["total"] <= TARGET_MARKET_SECONDS and ari >= TARGET_ARI
            notes.append(
                f"target: a quarter of the published implementation's {PUBLISHED_MARKET_SECONDS} s "
                "(faiss kNN + per-sample loops) as the issue measured it; the same pipeline timed "
                "here is the next row"
            )
    if scale.name == "msmt17":
        extra = ours["peak_gib"] - ours["base_gib"]
        total["target"] = (f"<= {MSMT_TOTAL_VS_FLOOR}x the GEMM floor, peak <= input + "
                           f"{MSMT_EXTRA_GIB:g} GiB")
        total["target_met"] = (ours["total"] <= MSMT_TOTAL_VS_FLOOR * ours["floor"]
                               and extra <= MSMT_EXTRA_GIB)
        notes.append(f"total / GEMM floor = {ours['total'] / ours['floor']:.2f}")
    total["note"] = "; ".join(notes)
    if pub is None:
        return rows + [total]
    ari = float(adjusted_rand_score(pub_labels, ours_labels))
    share = MARKET_VS_PUBLISHED if scale.name == "market" else 0.25  # elsewhere: a quarter
    published = _row(
        "pseudo-labels (total)", scale.name, "published structure, timed here", size,
        ours["total"], pub["total"], ours_peak_gib=ours["peak_gib"],
        reference_peak_gib=pub["peak_gib"], ours_cpu_seconds=ours["cpu"],
        reference_cpu_seconds=pub["cpu"], max_metric_diff=1.0 - ari,
        target=f"<= {share:g}x the published structure and ARI >= {TARGET_ARI}",
        target_met=ours["total"] <= share * pub["total"] and ari >= TARGET_ARI,
    )
    published["note"] = (
        f"published structure (flat faiss search, per-sample numpy loops over dense N x N "
        f"encodings, DBSCAN on the dense matrix): kNN {pub['knn']:.2f} s + Jaccard "
        f"{pub['jaccard']:.2f} s + DBSCAN {pub['dbscan']:.2f} s on this machine, against "
        f"{PUBLISHED_PHASES} on the issue's; labels "
        f"{'identical' if np.array_equal(pub_labels, ours_labels) else 'differ'}, ARI {ari:.6f}"
    )
    return rows + [total, published]


def pseudo_labelling_rows(scale: str, seed: int) -> list[dict[str, Any]]:
    """Rows for the `perf` table: per phase (kNN, Jaccard, DBSCAN) and total, ours vs reference.

    scale: "small" (N = 1,000), "market" (N = 12,936) or "msmt17" (N = 32,621, ours alone).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown pseudo-labelling scale {scale!r}; choose from {sorted(SCALES)}")
    return rows_for_scale(SCALES[scale], seed)
