"""Where the harness finds protocol cards, user data and its own cache.

Kept in one place so that every command resolves `--root` / environment variables the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CARDS_DIR = REPO_ROOT / "datasets"


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data root: `--root`, else BENCHMARK_DATA_ROOT, else ./data."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("BENCHMARK_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path("data")


def cache_dir() -> Path:
    """Where generated data (synthetic-reid, images extracted from CUHK03's .mat) lives.

    BENCHMARK_CACHE_DIR, else $XDG_CACHE_HOME/reid-benchmark, else ~/.cache/reid-benchmark.
    """
    env = os.environ.get("BENCHMARK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "reid-benchmark"
