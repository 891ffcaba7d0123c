"""An adapter's training code cannot reach identity or class labels (integrity rule 1).

A probe adapter (`engine_probes.LabelSnoop`) run by the real runner walks everything reachable from
its fit arguments and from itself (containers, attributes, slots, closures, bound methods) and keeps
every array and string it finds. Against the labels the harness holds back, none may match: no
identity or class label array (in view order or sorted), no camera ids unless declared, no file name
(re-ID file names encode the identity). Positive controls show the walk does find what is there.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.data.registry import load_dataset
from benchmark.data.unlabeled import CameraIdsWithheld, clustering_view, reid_view
from benchmark.engine.records import FINISHED
from benchmark.engine.runner import run_cell
from engine_probes import SNOOPED, arrays_and_strings, reachable


def _matches(arrays: list[np.ndarray], target: np.ndarray) -> bool:
    for arr in arrays:
        flat = arr.ravel()
        if flat.size == target.size and (
            np.array_equal(flat, target) or np.array_equal(np.sort(flat), np.sort(target))
        ):
            return True
    return False


@pytest.fixture(scope="module")
def synthetic(synthetic_reid_generated):
    return synthetic_reid_generated


def _snoop(method: str, dataset: str, tmp_path, params: dict | None = None) -> dict:
    SNOOPED.clear()
    record = run_cell(f"engine_probes:{method}", dataset, 0, "ci", tmp_path, "cpu",
                      tracking=False, log=None, params=params)
    assert record["status"] == FINISHED, record.get("error")
    assert SNOOPED["num_objects"] > 30  # the probe did look around
    return dict(SNOOPED)


def test_reid_training_cannot_reach_identities_cameras_or_file_names(synthetic, tmp_path):
    seen = _snoop("LabelSnoop", "synthetic-reid", tmp_path)
    _, hidden = reid_view(synthetic.train, uses_camera_ids=False, seed=0)  # the runner's hidden set
    assert seen["view_len"] == len(hidden.labels)
    assert not _matches(seen["arrays"], hidden.labels)
    assert not _matches(seen["arrays"], synthetic.train.pids)
    assert not _matches(seen["arrays"], hidden.camids)
    assert isinstance(seen["camids"], CameraIdsWithheld)
    stems = {p.stem for p in synthetic.train.paths}
    for text in seen["strings"]:
        assert ".jpg" not in text and text not in stems
        assert not any(stem in text for stem in list(stems)[:200])


def test_declared_camera_ids_are_granted_and_found(synthetic, tmp_path):
    """Positive control: what is handed over (declared camera ids) is found by the same walk."""
    seen = _snoop("CameraLabelSnoop", "synthetic-reid", tmp_path)
    _, hidden = reid_view(synthetic.train, uses_camera_ids=True, seed=0)
    np.testing.assert_array_equal(seen["camids"], hidden.camids)
    assert _matches(seen["arrays"], hidden.camids)
    assert not _matches(seen["arrays"], hidden.labels)


def test_clustering_training_cannot_reach_class_labels(tmp_path):
    seen = _snoop("LabelSnoop", "digits", tmp_path)
    dataset = load_dataset("digits")
    _, hidden = clustering_view(dataset, seed=0)
    assert not _matches(seen["arrays"], hidden.labels)
    assert not _matches(seen["arrays"], dataset.labels)


def test_validation_mode_reaches_no_training_or_validation_label(synthetic, tmp_path):
    """The old hole: `ctx.selection_callback` held the carved split. Now the selector is a hook of
    the harness's loop, and the walk from what the method receives finds no label of either part."""
    from benchmark.tuning.validation import carve_validation

    seen = _snoop("EpochLabelSnoop", "synthetic-reid", tmp_path, {"model_selection": "validation"})
    split = carve_validation(synthetic, seed=0, fraction=0.2)
    carved = split.validation
    _, hidden = reid_view(carved.train, uses_camera_ids=False, seed=0)
    assert seen["view_len"] == carved.train.num_images == len(hidden.labels)
    for labels in (hidden.labels, carved.query.pids, carved.gallery.pids, synthetic.train.pids):
        assert not _matches(seen["arrays"], labels)
    stems = {p.stem for p in synthetic.train.paths}
    assert not any(text in stems or ".jpg" in text for text in seen["strings"])


def test_a_sweep_trial_reaches_no_training_or_validation_label(tmp_path):
    from benchmark.engine.method_registry import get_method
    from benchmark.engine.profiles import get_profile
    from benchmark.tuning.objective import run_trial
    from benchmark.tuning.validation import carve_validation

    import torch

    data = load_dataset("digits")
    split = carve_validation(data, seed=0, fraction=0.2)
    SNOOPED.clear()
    outcome = run_trial(get_method("engine_probes:EpochLabelSnoop"), {}, split, dataset="digits",
                        profile=get_profile("ci"), seed=0, device=torch.device("cpu"),
                        workdir=tmp_path / "trial")
    assert outcome.epoch_values  # the harness scored every epoch on the hold-out
    assert SNOOPED["num_objects"] > 30
    for labels in (split.train.labels, split.validation.labels, data.labels):
        assert not _matches(SNOOPED["arrays"], labels)


def test_the_walk_finds_labels_held_in_a_closure_or_a_bound_method():
    """Positive control: a leaky design (a hook closing over the labels) would be caught."""
    labels = np.arange(30) % 7

    class Holder:
        def __init__(self):
            self.truth = labels.copy()

        def hook(self, epoch, pseudo):
            return None

    def leaky_hook(epoch, pseudo, _truth=None):
        return labels

    for root in (leaky_hook, Holder().hook, {"cb": lambda: labels}):
        arrays, _ = arrays_and_strings(reachable(root))
        assert _matches(arrays, labels)


def test_only_the_supervised_ceiling_declares_labels_and_only_it_gets_them(synthetic):
    """Of the registered adapters, `supervised` alone declares `uses_labels`, and the runner's view
    carries labels for it and for no other (the labels being the identities in view order)."""
    from benchmark.data.unlabeled import LabeledView
    from benchmark.engine.method_registry import get_method, method_names
    from benchmark.engine.runner import build_view

    declared = [name for name in method_names() if get_method(name).uses_labels]
    assert declared == ["supervised"]
    digits = load_dataset("digits")
    for name in method_names():
        cls = get_method(name)
        data = synthetic if "reid" in cls.tasks else digits
        view, hidden = build_view(data, cls, seed=3)
        if cls.uses_labels:
            assert isinstance(view, LabeledView)
            # independent of the view: identities parsed from the file names, in hidden order
            pids = np.array([int(p.name.split("_")[0]) for p in data.train.paths])[hidden.order]
            np.testing.assert_array_equal(view.labels, pids)
        else:
            assert not isinstance(view, LabeledView) and not hasattr(view, "labels")


def test_a_declared_probe_is_handed_the_labels(synthetic, tmp_path):
    """Positive control: with `uses_labels`, the same walk finds the identities in view order."""
    seen = _snoop("DeclaredLabelSnoop", "synthetic-reid", tmp_path)
    _, hidden = reid_view(synthetic.train, uses_camera_ids=False, seed=0)
    assert _matches(seen["arrays"], hidden.labels)
