"""The unlabeled view is the product's promise: no identity or class label reaches a method."""

from __future__ import annotations

import gc
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.types import ClusteringDataset, ReidSplit
from benchmark.data.unlabeled import CameraIdsWithheld, clustering_view, reid_view


def _reid_split(tmp_path: Path, n_ids: int = 6, per_id: int = 3) -> ReidSplit:
    rng = np.random.default_rng(0)
    paths, pids, camids = [], [], []
    for pid in range(1, n_ids + 1):
        for j in range(per_id):
            cam = (pid + j) % 3
            name = f"{pid:04d}_c{cam + 1}s1_{j:06d}_00.png"
            pixels = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name)  # PNG: lossless, so pixels can be compared
            paths.append(tmp_path / name)
            pids.append(pid)
            camids.append(cam)
    return ReidSplit("train", paths, np.array(pids), np.array(camids))


def _reachable(root: object) -> list[object]:
    """Every object reachable from `root` through data (not through classes, modules or functions)."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
        if isinstance(obj, np.ndarray) and obj.base is not None:
            stack.append(obj.base)
    return list(seen.values())


@pytest.mark.parametrize("uses_camera_ids", [False, True])
def test_reid_view_holds_no_identity_and_no_file_name(tmp_path, uses_camera_ids):
    split = _reid_split(tmp_path)
    view, hidden = reid_view(split, uses_camera_ids=uses_camera_ids, seed=3)
    objects = _reachable(view) + _reachable(pickle.loads(pickle.dumps(view)))
    for obj in objects:
        if isinstance(obj, np.ndarray) and obj.size == split.num_images:
            for labels in (split.pids, hidden.labels):
                assert not np.array_equal(np.sort(obj.ravel()), np.sort(labels)), (
                    "an array holding the identities is reachable from the view"
                )
        if isinstance(obj, str):
            assert ".png" not in obj and "_c" not in obj, f"file name reachable from the view: {obj}"
    blob = pickle.dumps(view)
    for path in split.paths:
        assert path.stem.encode() not in blob


def test_reid_view_images_follow_hidden_order(tmp_path):
    split = _reid_split(tmp_path)
    view, hidden = reid_view(split, uses_camera_ids=True, seed=1)
    assert len(view) == split.num_images
    assert sorted(hidden.order.tolist()) == list(range(split.num_images))
    assert not np.array_equal(hidden.order, np.arange(split.num_images)), "order must be shuffled"
    for i, src in enumerate(hidden.order):
        expected = np.asarray(Image.open(split.paths[src]).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(view[i]), expected)
        assert hidden.labels[i] == split.pids[src]
        assert view.camids[i] == split.camids[src]


def test_camera_ids_withheld_unless_declared(tmp_path):
    split = _reid_split(tmp_path)
    view, _ = reid_view(split, uses_camera_ids=False, seed=0)
    assert not view.has_camids
    with pytest.raises(CameraIdsWithheld):
        view.camids
    with pytest.raises(CameraIdsWithheld):
        view.num_cameras
    granted, _ = reid_view(split, uses_camera_ids=True, seed=0)
    assert granted.num_cameras == 3
    with pytest.raises(ValueError):
        granted.camids[0] = 5  # read-only: a method cannot corrupt the harness's copy


def test_view_order_is_seeded(tmp_path):
    split = _reid_split(tmp_path)
    a = reid_view(split, uses_camera_ids=False, seed=7)[1].order
    b = reid_view(split, uses_camera_ids=False, seed=7)[1].order
    c = reid_view(split, uses_camera_ids=False, seed=8)[1].order
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_clustering_view_has_pixels_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 4, 4, 1), dtype=np.uint8)
    labels = np.arange(20) % 4
    ds = ClusteringDataset("toy", images, labels, 4, {"train": slice(0, 12), "test": slice(12, 20)})
    view, hidden = clustering_view(ds, seed=0)
    assert len(view) == 20
    for i, src in enumerate(hidden.order):
        got = np.asarray(view[i])
        assert got.shape == (4, 4, 3)  # grey images are expanded to RGB for every method alike
        np.testing.assert_array_equal(got[..., 0], images[src, ..., 0])
        assert hidden.labels[i] == labels[src]
    for obj in _reachable(view):
        if isinstance(obj, np.ndarray) and obj.size == 20:
            assert not np.array_equal(np.sort(obj.ravel()), np.sort(labels))
    train_view, train_hidden = clustering_view(ds, seed=0, part="train")
    assert len(train_view) == 12 and set(train_hidden.order.tolist()) == set(range(12))
