"""Session-wide test settings: one throw-away cache, so the embedded synthetic-reid is generated once
per test session (and never into the user's own cache)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """BENCHMARK_CACHE_DIR for the whole session (subprocesses inherit it)."""
    previous = os.environ.get("BENCHMARK_CACHE_DIR")
    path = tmp_path_factory.mktemp("benchmark-cache")
    os.environ["BENCHMARK_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("BENCHMARK_CACHE_DIR", None)
    else:
        os.environ["BENCHMARK_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def synthetic_reid_generated(session_cache_dir):
    """synthetic-reid, generated into the session cache before any subprocess needs it (runs started
    side by side would otherwise each generate it)."""
    from benchmark.data.registry import load_dataset

    return load_dataset("synthetic-reid")
