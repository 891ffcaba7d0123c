"""Which index a search runs on is chosen by the device and the faiss build, and named in the record;
the choice is checked here for every case a GPU machine meets, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.common import faiss_index
from methods.common.knn import choose_backend, knn


@pytest.mark.parametrize(("backend", "on_cuda", "gpus", "chosen"), [
    ("auto", True, 1, "faiss-gpu"),  # CUDA run, faiss's GPU build
    ("auto", True, 0, "torch"),  # CUDA run, faiss-cpu: torch.topk on the GPU
    ("auto", False, 1, "cpu"),  # CPU run: the symmetric CPU search whatever the build
    ("auto", False, 0, "cpu"),
    ("faiss-flat", True, 1, "faiss-flat"),  # an explicit choice stands
    ("torch", False, 0, "torch"),
    ("faiss-gpu", False, 2, "faiss-gpu"),
])
def test_backend_choice(backend: str, on_cuda: bool, gpus: int, chosen: str) -> None:
    assert choose_backend(backend, on_cuda, gpus) == chosen


def test_asking_for_the_gpu_index_without_a_gpu_build_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"faiss-gpu.*sees no GPU.*\.\[gpu\]"):
        choose_backend("faiss-gpu", True, 0)


def test_searches_are_counted_by_the_index_they_ran_on() -> None:
    from methods.ussl.surrogate import kmeans

    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    faiss_index.reset()
    knn(x, 5)
    knn(x, 5)
    knn(x, 5, backend="faiss-flat")
    kmeans(torch.from_numpy(x), 4, seed=0, niter=2)
    assert faiss_index.used() == {"knn:cpu": 2, "knn:faiss-flat": 1, "kmeans:faiss-cpu": 1}
    faiss_index.reset()
    assert faiss_index.used() == {}
    assert faiss_index.build()["version"]
