"""Exact k-nearest neighbours of a feature set against itself, by inner product.

Pseudo labels are recomputed every epoch, and at Market-1501 scale the neighbour search is the
largest single cost of that step. The search is exact (flat, no quantisation) so that pseudo labels
never depend on an approximate index. On CPU the self-similarity matrix is symmetric, so only its
upper block triangle is multiplied out (half the products of a flat index search) and every block
feeds both its rows and its columns into faiss's top-k heaps. The heap updates of one block (and the
transposed copy its columns need) run in a helper thread while the next block is multiplied: the
product is compute-bound and the copy memory-bound, so the two overlap on two cores (about 0.6 s of
4-5 s at Market scale on the 2-core reference machine). On a GPU, faiss-gpu's flat index does
the search when faiss has GPU support, else torch.topk over row chunks on the tensor's device.

Features are expected L2-normalised, so inner product order is cosine order and equals the
Euclidean order that Cluster Contrast's `IndexFlatL2` search produces.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from methods.common import faiss_index
from methods.common.faiss_index import faiss

FeatureMatrix = np.ndarray | torch.Tensor
_BACKENDS = ("auto", "cpu", "faiss-flat", "faiss-gpu", "torch")


def check_features(features: FeatureMatrix, name: str = "features") -> np.ndarray:
    """`features` as a C-contiguous float32 (N, D) array; ValueError naming what is wrong."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) matrix, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty matrix of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected floating point values, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{name}: row {bad} holds NaN or infinite values")
    return arr


def check_normalised(features: np.ndarray, name: str = "features", atol: float = 1e-3) -> None:
    """Raise ValueError unless every row has unit L2 norm (within `atol`)."""
    norms = np.linalg.norm(features, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > atol)
    if bad.size:
        raise ValueError(
            f"{name}: rows must be L2-normalised; {bad.size} rows are not "
            f"(row {int(bad[0])} has norm {float(norms[bad[0]]):.6g})"
        )


@contextmanager
def _thread_limit(num_threads: int | None) -> Iterator[None]:
    """Limit BLAS and faiss OpenMP threads inside the block, restoring them after."""
    if num_threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(num_threads)
    try:
        with threadpool_limits(limits=num_threads):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


def _knn_symmetric_cpu(x: np.ndarray, k: int, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper block triangle of x x^T; each block's rows and columns go to faiss min-heaps."""
    n = x.shape[0]
    heap = faiss.ResultHeap(n, k, keep_max=True)
    ids = np.arange(n, dtype=np.int64)

    def add(start: int, stop: int, block: np.ndarray) -> None:
        heap.add_result_subset(ids[start:stop], block, ids[start:])
        if stop < n:
            below = np.ascontiguousarray(block[:, stop - start:].T)
            heap.add_result_subset(ids[stop:], below, ids[start:stop])

    # One update at a time, in block order: a block's columns and the next block's rows share heaps.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="knn-heaps") as pool:
        pending: Future | None = None
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            block = x[start:stop] @ x[start:].T  # rows start..stop against columns start..n
            if pending is not None:
                pending.result()
            pending = pool.submit(add, start, stop, block)
        if pending is not None:
            pending.result()
    heap.finalize()
    return heap.D, heap.I


def _knn_faiss_gpu(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    resources = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(resources, x.shape[1])
    index.add(x)
    return index.search(x, k)


def _knn_torch(x: torch.Tensor, k: int, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    sims, idx = [], []
    for start in range(0, x.shape[0], block_rows):
        values, indices = torch.topk(x[start:start + block_rows] @ x.T, k, dim=1)
        sims.append(values.float().cpu())
        idx.append(indices.cpu())
    return torch.cat(sims).numpy(), torch.cat(idx).numpy().astype(np.int64)


def choose_backend(backend: str, on_cuda: bool, num_gpus: int) -> str:
    """What "auto" means: a CUDA tensor searches on faiss's GPU index when the faiss build has GPUs,
    else with torch on its device; anything else takes the symmetric CPU search. An explicit
    "faiss-gpu" without GPUs in the faiss build is an error, not a silent CPU run."""
    if backend == "auto":
        if on_cuda:
            return "faiss-gpu" if num_gpus > 0 else "torch"
        return "cpu"
    if backend == "faiss-gpu" and num_gpus == 0:
        raise ValueError("knn backend 'faiss-gpu': this faiss build sees no GPU (install "
                         "faiss's GPU build: pip install -e '.[gpu]')")
    return backend


def knn(
    features: FeatureMatrix,
    k: int,
    *,
    backend: str = "auto",
    block_rows: int = 512,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most similar rows of every row of `features`, most similar first.

    Returns `(sims, indices)`: float32 inner products and int64 row indices, both (N, k). A row
    comes first in its own list unless exact duplicates of it tie with it.

    backend: "auto" (CUDA tensor -> faiss-gpu if available else torch; otherwise the symmetric
    CPU search), "cpu" (symmetric blocked search with faiss heaps), "faiss-flat" (a plain
    `faiss.IndexFlatIP` search, what Cluster Contrast runs), "torch" (chunked torch.topk on the
    tensor's device). num_threads limits BLAS and faiss threads for this call.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown knn backend {backend!r}; use one of {', '.join(_BACKENDS)}")
    n = len(features)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, N={n}], got {k!r}")
    k = int(k)
    on_cuda = isinstance(features, torch.Tensor) and features.is_cuda
    backend = choose_backend(backend, on_cuda, faiss_index.num_gpus())
    faiss_index.note("knn", backend)
    if backend == "torch":
        if on_cuda:
            if features.ndim != 2 or not features.is_floating_point():
                raise ValueError(f"features: expected a floating (N, D) tensor, got {features.shape}")
            if not torch.isfinite(features).all():
                raise ValueError("features: NaN or infinite values")
            return _knn_torch(features.float(), k, block_rows)
        return _knn_torch(torch.from_numpy(check_features(features)), k, block_rows)
    x = check_features(features)
    with _thread_limit(num_threads):
        if backend == "cpu":
            return _knn_symmetric_cpu(x, k, block_rows)
        if backend == "faiss-flat":
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            return index.search(x, k)
        return _knn_faiss_gpu(x, k)
