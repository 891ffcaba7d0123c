"""The embedded synthetic-reid generator: determinism, Market-1501 layout, identity structure, card
counts, and that it is a real matching problem (a colour-histogram matcher lands well above chance
and far below solved).

The registered dataset (seed 0, default config) is generated once into the session's throw-away
cache (tests/conftest.py points BENCHMARK_CACHE_DIR at a tmp folder, and the other tests that load
synthetic-reid reuse it); every other test here uses a small config.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import synthetic_reid
from benchmark.data.cards import get_card
from benchmark.data.market1501 import load_market_style
from benchmark.data.registry import load_dataset
from benchmark.data.synthetic_reid import SynthConfig, write_synthetic_reid
from benchmark.paths import cache_dir

SMALL = SynthConfig(
    train_ids=6, train_tracklets=14, train_images=30,
    test_ids=8, test_tracklets=20, query_images=26, gallery_images=40,
    distractors=5, junk=4,
)
FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
NAME = re.compile(r"^(-1|\d{4})_c([1-9])s([1-6])_(\d{6})_(\d{2})\.jpg$")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def parsed_names(root: Path, folder: str) -> list[tuple[int, int]]:
    """(identity, 1-based camera) of every file, straight from the names (junk included)."""
    out = []
    for p in sorted((root / folder).iterdir()):
        m = NAME.match(p.name)
        assert m, f"{p} does not follow the Market-1501 naming"
        out.append((int(m.group(1)), int(m.group(2))))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_reid(tmp_path_factory.mktemp("small") / "ds", seed=3, config=SMALL)


@pytest.fixture(scope="module")
def registered(session_cache_dir: Path):
    """The registered dataset, generated on first use into the session's tmp cache.

    Shared with the other tests that load synthetic-reid, so the suite generates it only once.
    """
    assert cache_dir() == session_cache_dir  # never the user's own cache
    return load_dataset("synthetic-reid")  # strict: counts must match the card


# --- Determinism and writing. ---------------------------------------------------------------------


def test_same_seed_identical_bytes_other_seed_differs(tmp_path: Path, small: Path) -> None:
    again = write_synthetic_reid(tmp_path / "again", seed=3, config=SMALL)
    other = write_synthetic_reid(tmp_path / "other", seed=4, config=SMALL)
    first = tree_digest(small)
    assert len(first) == 30 + 26 + 40 + 5 + 4 + 1  # every image, plus the generator's metadata
    assert tree_digest(again) == first
    second = tree_digest(other)
    images = [k for k in first if k.endswith(".jpg")]
    other_images = [k for k in second if k.endswith(".jpg")]
    assert len(other_images) == len(images)
    # Another seed draws other names and other pixels.
    assert set(other_images) != set(images)
    shared = set(images) & set(other_images)
    assert all(first[k] != second[k] for k in shared)


def test_write_is_atomic_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = synthetic_reid._identity_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic_reid, "_identity_image", failing)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_reid(out, seed=0, config=SMALL)
    assert calls["n"] == 20
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder went too


def test_existing_output_is_reused_or_refused(tmp_path: Path, small: Path) -> None:
    stamp = {p: p.stat().st_mtime_ns for p in small.rglob("*.jpg")}
    assert write_synthetic_reid(small, seed=3, config=SMALL) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*.jpg")} == stamp

    with pytest.raises(FileExistsError, match=re.escape(str(small))):
        write_synthetic_reid(small, seed=5, config=SMALL)  # another seed into the same folder
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy"):
        write_synthetic_reid(busy, seed=3, config=SMALL)
    assert (busy / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_synthetic_reid(empty, seed=3, config=SMALL) == empty
    assert tree_digest(empty) == tree_digest(small)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(train_tracklets=11), "train_tracklets"),  # fewer than two cameras per identity
        (dict(query_images=19), "query_images"),  # fewer than one query per tracklet
        (dict(query_images=41), "query_images"),  # more than two per tracklet
        (dict(gallery_images=19), "gallery_images"),
        (dict(cameras=1), "cameras"),
        (dict(height=16), "image size"),
    ],
)
def test_config_rejects_impossible_layouts(change: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        replace(SMALL, **change)


# --- Layout, names and identity structure. -----------------------------------------------------


def test_layout_names_junk_and_distractors(small: Path) -> None:
    assert sorted(p.name for p in small.iterdir()) == sorted([*FOLDERS, "synthetic-reid.json"])
    names = {f: parsed_names(small, f) for f in FOLDERS}
    counts = {f: len(v) for f, v in names.items()}
    assert counts == {"bounding_box_train": 30, "query": 26, "bounding_box_test": 40 + 5 + 4}
    test_pids = [pid for pid, _ in names["bounding_box_test"]]
    assert test_pids.count(-1) == 4 and test_pids.count(0) == 5
    for folder in ("bounding_box_train", "query"):
        assert all(pid > 0 for pid, _ in names[folder]), folder
    every = [n for f in FOLDERS for n in (small / f).iterdir()]
    assert len({p.name for p in every}) == len(every)  # no name used twice, even across folders
    for path in every[:: max(1, len(every) // 12)]:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 128))


def test_small_dataset_parses_with_the_market_parser(small: Path) -> None:
    ds = load_market_style(small, "synthetic-reid")
    expected = SMALL.expected_counts()
    for split, s in ds.splits().items():
        assert s.num_images == expected[split]["images"], split
        assert s.num_identities == expected[split]["identities"], split
    assert -1 not in set(ds.gallery.pids.tolist())
    assert set(ds.train.pids.tolist()).isdisjoint(ds.query.pids.tolist())


def identity_structure_problems(train, query, gallery) -> list[str]:
    """Everything that makes the split a Market-style re-ID problem, checked from labels alone."""
    problems = []
    train_ids = set(train.pids.tolist())
    test_ids = set(query.pids.tolist())
    gallery_ids = set(gallery.pids.tolist()) - {0}
    if train_ids & (test_ids | gallery_ids):
        problems.append("train and test identities overlap")
    if test_ids != gallery_ids:
        problems.append("query and gallery identities differ")
    cams_of = defaultdict(set)
    for pid, cam in zip(np.r_[query.pids, gallery.pids], np.r_[query.camids, gallery.camids]):
        if pid != 0:
            cams_of[int(pid)].add(int(cam))
    for pid, cams in cams_of.items():
        if len(cams) < 2:
            problems.append(f"test identity {pid} seen by one camera only")
    per_cam = defaultdict(int)
    for pid, cam in zip(query.pids.tolist(), query.camids.tolist()):
        per_cam[pid, cam] += 1
        others = (gallery.pids == pid) & (gallery.camids != cam)
        if not others.any():
            problems.append(f"query of {pid} in camera {cam} has no cross-camera gallery match")
    problems += [f"{n} queries of {key}" for key, n in per_cam.items() if n not in (1, 2)]
    for pid, cam in per_cam:
        if not ((gallery.pids == pid) & (gallery.camids == cam)).any():
            problems.append(f"identity {pid} camera {cam}: queries but no gallery image")
    train_cams = defaultdict(set)
    for pid, cam in zip(train.pids.tolist(), train.camids.tolist()):
        train_cams[pid].add(cam)
    problems += [f"train identity {p} in one camera" for p, c in train_cams.items() if len(c) < 2]
    return problems


def test_identity_structure_of_the_registered_dataset(registered) -> None:
    assert identity_structure_problems(registered.train, registered.query, registered.gallery) == []
    assert 0 in set(registered.gallery.pids.tolist())  # distractors stay in the gallery


def test_identity_structure_check_catches_a_broken_split(registered) -> None:
    """The structure check above can fail: drop one identity's cross-camera gallery images."""
    g = registered.gallery
    pid, cam = int(registered.query.pids[0]), int(registered.query.camids[0])
    keep = ~((g.pids == pid) & (g.camids != cam))
    broken = replace(g, paths=[p for p, k in zip(g.paths, keep) if k], pids=g.pids[keep],
                     camids=g.camids[keep])
    problems = identity_structure_problems(registered.train, registered.query, broken)
    assert any("no cross-camera gallery match" in p for p in problems)


def test_registered_dataset_lives_in_the_cache_and_matches_the_card(registered) -> None:
    root = registered.root
    assert root == cache_dir() / "synthetic-reid" / f"seed0-v{synthetic_reid.GENERATOR_VERSION}"
    card = get_card("synthetic-reid")
    assert card.embedded and card.synthetic and card.kind == "reid"
    # The card's numbers, counted here from the file names (junk included), not by the loader.
    names = {f: parsed_names(root, f) for f in FOLDERS}
    by_split = {"train": names["bounding_box_train"], "query": names["query"],
                "gallery": [n for n in names["bounding_box_test"] if n[0] != -1]}
    for split, entries in by_split.items():
        want = card.splits[split]
        assert len(entries) == want.images, split
        assert len({pid for pid, _ in entries}) == want.identities, split
        assert len({cam for _, cam in entries}) == want.cameras, split
    junk = sum(pid == -1 for pid, _ in names["bounding_box_test"])
    assert junk > 0
    # The data root is ignored: a root with nothing in it still finds the generated copy.
    again = load_dataset("synthetic-reid", root=root / "no-such-root")
    assert again.root == root and again.query.paths == registered.query.paths


# --- It is a real matching problem. -------------------------------------------------------------


def colour_histograms(paths: list[Path], stripes: int = 8, levels: int = 4) -> np.ndarray:
    """Centre-weighted per-stripe RGB histograms, square-rooted (for the Bhattacharyya coefficient).

    Each of `stripes` horizontal bands gets a joint RGB histogram with `levels` bins per channel;
    pixels are weighted by an Epanechnikov profile across the width, the classic kernel weighting
    that favours the person over the background at the sides.
    """
    bins = levels ** 3
    feats = []
    for path in paths:
        with Image.open(path) as img:
            q = np.asarray(img.convert("RGB")).astype(np.int64) * levels // 256
        h, w, _ = q.shape
        colour = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
        index = (np.arange(h) * stripes // h)[:, None] * bins + colour
        x = (np.arange(w) + 0.5) / w * 2.0 - 1.0
        weight = np.broadcast_to(1.0 - x ** 2, (h, w))
        hist = np.bincount(index.ravel(), weights=weight.ravel(), minlength=stripes * bins)
        hist = hist.reshape(stripes, bins)
        hist /= hist.sum(axis=1, keepdims=True)
        feats.append(np.sqrt(hist).ravel() / np.sqrt(stripes))
    return np.stack(feats)


def brute_force_market_map(dist, q_pids, q_cams, g_pids, g_cams) -> tuple[float, float]:
    """mAP and rank-1 straight from the definition, one query at a time.

    Gallery images of the query's identity from the query's camera are removed; distractors
    (id 0) stay as negatives; AP is the mean, over the query's true matches, of the precision at
    the rank where each is found (the k-th match found at rank r contributes k / r).
    """
    aps, top1 = [], []
    for i in range(len(q_pids)):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        ranked = g_pids[keep][np.argsort(dist[i][keep], kind="stable")]
        ranks = np.flatnonzero(ranked == q_pids[i]) + 1
        if ranks.size:
            aps.append(float(np.mean(np.arange(1, ranks.size + 1) / ranks)))
            top1.append(float(ranks[0] == 1))
    return float(np.mean(aps)), float(np.mean(top1))


def test_brute_force_map_on_a_hand_computed_case() -> None:
    # Query id 7 in camera 1. Gallery by distance: [id 7 cam 1 (removed), id 3, id 7 cam 2, id 0,
    # id 7 cam 3]. Remaining ranking: 3, 7, 0, 7 -> precisions 1/2 and 2/4 -> AP 0.5, rank-1 miss.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([7, 3, 7, 0, 7])
    g_cams = np.array([1, 2, 2, 1, 3])
    assert brute_force_map_check(dist, g_pids, g_cams) == (0.5, 0.0)
    # Swap the first two remaining: 7, 3, 0, 7 -> (1 + 2/4) / 2 = 0.75, rank-1 hit.
    swapped = np.array([[0.1, 0.3, 0.2, 0.4, 0.5]])
    assert brute_force_map_check(swapped, g_pids, g_cams) == (0.75, 1.0)


def brute_force_map_check(dist, g_pids, g_cams):
    return brute_force_market_map(dist, np.array([7]), np.array([1]), g_pids, g_cams)


def test_colour_histogram_matcher_is_well_above_chance_and_far_from_solved(registered) -> None:
    q, g = registered.query, registered.gallery
    fq, fg = colour_histograms(q.paths), colour_histograms(g.paths)
    dist = 1.0 - fq @ fg.T  # 1 - mean Bhattacharyya coefficient over stripes
    m_ap, rank1 = brute_force_market_map(dist, q.pids, q.camids, g.pids, g.camids)
    rng = np.random.default_rng(0)
    chance = np.mean([
        brute_force_market_map(rng.random(dist.shape), q.pids, q.camids, g.pids, g.camids)[0]
        for _ in range(3)
    ])
    print(f"colour-histogram matcher: mAP {m_ap:.4f}, R1 {rank1:.4f}; "
          f"random ranking mAP {chance:.4f}")
    assert 0.05 < m_ap < 0.50
    assert m_ap > 10 * chance
    assert rank1 < 0.6
