"""Every image of a split decoded once before it is used, so that a corrupt file is named by its path.

Why: the unlabeled view holds encoded bytes and never file names (a re-ID name encodes the
identity), so an image that fails to decode during training could only be reported as a `BytesIO`.
Counts can match the card while a file is truncated. `datasets verify --deep` and `run` therefore
decode every file of the splits they use first and refuse with the list of unreadable paths. The
files found readable are remembered by size and modification time in the cache, so a suite run
decodes a dataset once, not once per cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from benchmark.data.errors import DatasetFileError
from benchmark.paths import cache_dir

SHOWN = 20  # unreadable files named in an error message; the rest are counted


def _problem(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _stamp(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _cache_file(paths: Sequence[Path]) -> Path:
    folders = sorted({str(Path(p).resolve().parent) for p in paths})
    key = hashlib.sha256("\n".join(folders).encode()).hexdigest()[:16]
    return cache_dir() / "decoded" / f"{key}.json"


def unreadable_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    progress: bool = False,
    remember: bool = True,
) -> list[tuple[Path, str]]:
    """(path, problem) for every file that does not decode, in the order given; an empty list when
    all do. With `remember`, files decoded before with the same size and mtime are not decoded
    again."""
    files = [Path(p) for p in paths]
    if not files:
        return []
    cache = _cache_file(files) if remember else None
    known: dict[str, list[int]] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    todo = [p for p in files if known.get(str(p)) is None or known[str(p)] != _stamp(p)]
    bad: dict[Path, str] = {}
    if todo:
        from tqdm import tqdm

        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_problem, todo, chunksize=64)
            bar = tqdm(zip(todo, results), total=len(todo), desc="decoding images", unit="img",
                       file=sys.stderr, disable=not progress)
            for path, problem in bar:
                if problem is None:
                    stamp = _stamp(path)
                    if stamp is not None:
                        known[str(path)] = stamp
                else:
                    bad[path] = problem
                    known.pop(str(path), None)
        if cache is not None:
            _save(cache, known)
    return [(p, bad[p]) for p in files if p in bad]


def _save(cache: Path, known: dict[str, list[int]]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    except OSError:
        pass  # a cache that cannot be written only costs time


def require_readable(paths: Sequence[str | os.PathLike[str]], what: str) -> None:
    """DatasetFileError listing every unreadable file of `paths` (the first one as its path)."""
    bad = unreadable_images(paths)
    if not bad:
        return
    listed = "; ".join(f"{p} ({problem})" for p, problem in bad[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    raise DatasetFileError(bad[0][0], f"{len(bad)} unreadable image(s) in {what}: {listed}{more}")
