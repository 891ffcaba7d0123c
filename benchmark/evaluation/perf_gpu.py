"""`perf` rows for the GPU paths: evaluation from features and pseudo-labelling on CUDA.

A paper-profile run evaluates from features on the GPU (`evaluate_reid_features`) and searches
neighbours there (`knn` on a CUDA tensor: faiss's GPU index, else torch). These rows time both at
MSMT17 scale, end to end from host memory, and check them against the CPU path: the metrics to
1e-6 (on the first tenth of the queries, where the CPU's float64 product stays affordable) and
the pseudo labels identical. Without a CUDA device there are no rows, and the GPU targets stay
open; every job also runs on the CPU, which is how the tests exercise them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmark.evaluation.perf import SCALES, Row, _in_fresh_process, _metric_diff, _metrics
from benchmark.evaluation.perf import synthetic_features
from benchmark.evaluation.perf_memory import GIB, peak_gib, reset_peak
from benchmark.evaluation.perf_pseudo_labels import EPS, K1, K2, MIN_SAMPLES, SCALES as PL_SCALES
from benchmark.evaluation.perf_pseudo_labels import reid_like_features

FEATURE_DIM = 2048  # a ResNet-50's pooled features
GPU_EVAL_SECONDS = 1.0  # MSMT17 evaluation from 2048-d features, end to end
GPU_PSEUDO_SECONDS = 2.0  # pseudo labels at N = 32,621
_CHECK_FRACTION = 0.1  # queries on which the CPU path checks the GPU metrics


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def job_features_evaluation(scale_name: str, seed: int, device: str, fraction: float) -> dict[str, Any]:
    """Evaluate the first `fraction` of the queries from 2048-d features on `device`, timed from
    host memory to the metrics (best of 2: the first call also initialises the device)."""
    from benchmark.evaluation.reid import evaluate_reid_features

    qf, gf, q_pids, g_pids, q_cams, g_cams = synthetic_features(
        SCALES[scale_name], seed, dim=FEATURE_DIM)
    nq = max(1, round(qf.shape[0] * fraction))
    args = (qf[:nq], gf, q_pids[:nq], g_pids, q_cams[:nq], g_cams)
    base = reset_peak()
    best, result = float("inf"), None
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        result = evaluate_reid_features(*args, device=device)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "metrics": _metrics(result), "base_gib": base, "peak_gib": peak_gib(),
            "size": f"{nq:,} x {gf.shape[0]:,}"}


def job_pseudo_labels(scale_name: str, seed: int, device: str, workdir: str) -> dict[str, Any]:
    """kNN on `device` + Jaccard + DBSCAN, timed from host memory (best of 2); labels saved."""
    from methods.common.clustering import dbscan_pseudo_labels
    from methods.common.jaccard import jaccard_from_neighbours
    from methods.common.knn import knn

    scale = PL_SCALES[scale_name]
    features, _, _ = reid_like_features(scale.num_images, scale.num_ids, scale.dim, seed)
    best, labels = float("inf"), None
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        x = torch.from_numpy(features).to(device)
        sims, ranking = knn(x, K1)
        dist = jaccard_from_neighbours(features, sims, ranking, K1, K2)
        labels = dbscan_pseudo_labels(dist, EPS, MIN_SAMPLES)
        best = min(best, time.perf_counter() - start)
    np.save(f"{workdir}/{device.split(':')[0]}_labels.npy", labels)
    return {"seconds": best, "size": f"{scale.num_images:,} x {scale.dim}",
            "input_gib": features.nbytes / GIB}


def gpu_rows(seed: int, device: str | None = None, scale_name: str = "msmt17") -> list[dict[str, Any]]:
    """The GPU rows of the `perf` table (fields of `perf.Row`); none without a CUDA device.

    `device` other than None runs the same jobs on that device (tests use "cpu").
    """
    import dataclasses
    import tempfile

    if device is None:
        if not torch.cuda.is_available():
            return []
        device = "cuda"
    on_gpu = device.startswith("cuda")
    rows: list[Row] = []
    full = _in_fresh_process(job_features_evaluation, scale_name=scale_name, seed=seed,
                             device=device, fraction=1.0)
    rows.append(Row(
        "evaluation from features", scale_name, f"(ours alone on {device}, end to end)",
        full["size"], "", full["seconds"], None, None, full["peak_gib"], None, None,
        target=f"< {GPU_EVAL_SECONDS:g} s" if on_gpu else "",
        target_met=full["seconds"] < GPU_EVAL_SECONDS if on_gpu else None,
        note=f"{FEATURE_DIM}-d synthetic features, from host memory to the metrics, float64 "
        "distances on the device",
    ))
    mine = _in_fresh_process(job_features_evaluation, scale_name=scale_name, seed=seed,
                             device=device, fraction=_CHECK_FRACTION)
    cpu = _in_fresh_process(job_features_evaluation, scale_name=scale_name, seed=seed,
                            device="cpu", fraction=_CHECK_FRACTION)
    rows.append(Row(
        "evaluation from features", scale_name, "the CPU path on the same features",
        mine["size"], mine["size"], mine["seconds"], cpu["seconds"], mine["seconds"] / cpu["seconds"],
        mine["peak_gib"], cpu["peak_gib"], _metric_diff(mine["metrics"], cpu["metrics"]),
        note=f"the first {_CHECK_FRACTION:.0%} of the queries",
    ))
    with tempfile.TemporaryDirectory(prefix="benchmark-perf-gpu-") as tmp:
        dev = _in_fresh_process(job_pseudo_labels, scale_name=scale_name, seed=seed, device=device,
                                workdir=tmp)
        ref = _in_fresh_process(job_pseudo_labels, scale_name=scale_name, seed=seed, device="cpu",
                                workdir=tmp) if on_gpu else dev
        same = bool(np.array_equal(np.load(f"{tmp}/{device.split(':')[0]}_labels.npy"),
                                   np.load(f"{tmp}/cpu_labels.npy")))
    rows.append(Row(
        "pseudo-labels (total)", scale_name, f"kNN on {device} vs the CPU path", dev["size"],
        dev["size"], dev["seconds"], ref["seconds"], dev["seconds"] / ref["seconds"], None, None,
        0.0 if same else 1.0,
        target=f"< {GPU_PSEUDO_SECONDS:g} s and identical labels" if on_gpu else "identical labels",
        target_met=(dev["seconds"] < GPU_PSEUDO_SECONDS or not on_gpu) and same,
        note=f"labels {'identical' if same else 'differ'} (metric diff 0 = identical); "
        f"k1={K1}, k2={K2}, DBSCAN eps={EPS}, min_samples={MIN_SAMPLES}",
    ))
    return [dataclasses.asdict(r) for r in rows]
