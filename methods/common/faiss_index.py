"""The faiss build this install has, and which faiss index each search of a run ran on.

Two builds exist on PyPI and both install the module `faiss`, so a project can depend on only one of
them: `pip install -e ".[cpu]"` brings faiss-cpu, `pip install -e ".[gpu]"` faiss's GPU build
(faiss-gpu-cu12, CUDA 12), which also holds every CPU index. On a CUDA run the neighbour search and
k-means take a GPU index when the build has GPUs, else they fall back (torch on the GPU, or the CPU
index). Which one ran changes speed and, through float summation order and ties, can change a
neighbour list, so the run's record names the indexes used (`faiss_indexes`), counted per call.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

try:
    import faiss
except ImportError as exc:  # neither extra installed
    raise ImportError(
        "faiss is not installed: pip install -e '.[cpu]' (faiss-cpu), or '.[gpu]' on a CUDA machine "
        "(faiss's GPU build; install one of the two, both provide the module faiss)"
    ) from exc

_USED: Counter[str] = Counter()


def num_gpus() -> int:
    """GPUs faiss can use: 0 for the CPU build, which has no `get_num_gpus` GPU support."""
    getter = getattr(faiss, "get_num_gpus", None)
    return int(getter()) if getter is not None else 0


def note(kind: str, index: str) -> None:
    """Count one search of `kind` (knn, kmeans) on `index` (e.g. cpu-symmetric, faiss-gpu)."""
    _USED[f"{kind}:{index}"] += 1


def used() -> dict[str, int]:
    return dict(sorted(_USED.items()))


def reset() -> None:
    _USED.clear()


def build() -> dict[str, Any]:
    """The installed faiss: version and the GPUs it sees (the record's environment)."""
    return {"version": getattr(faiss, "__version__", None), "gpus": num_gpus()}
