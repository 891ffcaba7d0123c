"""Model selection by the harness on a validation split carved from training data (Algorithm 1 of
similarity-guidance): the best epoch is chosen on the hold-out, never on test numbers; the record
reports the selected and the last model; a resumed run selects as an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
from test_engine_reproducibility import _command, _resume, _same

from benchmark.data.registry import load_dataset
from benchmark.engine import selection
from benchmark.engine.records import FINISHED, cell_dir
from benchmark.engine.runner import run_cell
from benchmark.tuning.validation import carve_validation

PROBE = "engine_probes:SelectingProbe"


def _scripted(monkeypatch, values: list[float]) -> list[int]:
    """validation_score returns `values` in turn (as mAP); returns the list of calls made."""
    calls: list[int] = []

    def score(encoder, split, profile, device, seed):
        calls.append(len(calls))
        return {"mAP": values[len(calls) - 1], "R1": 0.0}

    monkeypatch.setattr(selection, "validation_score", score)
    return calls


def test_the_best_validation_epoch_is_reported_and_the_last_beside_it(tmp_path, monkeypatch):
    calls = _scripted(monkeypatch, [0.2, 0.5, 0.3])
    rec = run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path / "three", "cpu", tracking=False,
                   log=None)
    assert rec["status"] == FINISHED and len(calls) == 3
    sel = rec["selection"]
    assert sel["best_epoch"] == 1 and sel["best_value"] == 0.5 and sel["metric"] == "mAP"
    assert [e["mAP"] for e in sel["per_epoch"]] == [0.2, 0.5, 0.3]
    assert rec["metrics"] != rec["metrics_last"]

    # The same training stopped after epoch 1 (its last and best epoch) is the selected model.
    _scripted(monkeypatch, [0.1, 0.2])
    two = run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path / "two", "cpu", tracking=False,
                   log=None, params={"epochs": 2})
    assert two["selection"]["best_epoch"] == 1
    assert two["metrics"] == two["metrics_last"]
    assert rec["metrics"] == two["metrics_last"]


def test_ties_keep_the_earlier_epoch(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.4, 0.4, 0.1])
    rec = run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path, "cpu", tracking=False, log=None)
    assert rec["selection"]["best_epoch"] == 0


def test_the_method_trains_without_the_held_out_identities(tmp_path):
    rec = run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path, "cpu", tracking=False, log=None)
    split = carve_validation(load_dataset("synthetic-reid"), seed=0, fraction=0.2)
    full = len(load_dataset("synthetic-reid").train.paths)
    assert {row["view_size"] for row in rec["history"]} == {len(split.train.train.paths)}
    assert len(split.train.train.paths) < full
    assert rec["selection"]["validation"] == split.description
    # the scores are real validation numbers, one per epoch
    assert [e["epoch"] for e in rec["selection"]["per_epoch"]] == [0, 1, 2]
    assert all(0.0 <= e["mAP"] <= 1.0 for e in rec["selection"]["per_epoch"])


def test_a_bad_selection_mode_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="model_selection must be one of"):
        run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path, "cpu", tracking=False, log=None,
                 params={"model_selection": "test"})
    assert not any(tmp_path.rglob("*.json"))


def test_a_killed_run_resumes_with_the_same_selection(tmp_path):
    config = {"epochs": 4, "steps": 2, "sleep": 0.5}
    params = tmp_path / "params.json"
    params.write_text(json.dumps(config))
    killed = tmp_path / "killed"
    cmd = _command(PROBE, "digits", 0, killed, "--params", str(params))
    resumed = _resume(cmd, cell_dir(killed, "digits", "selecting-probe", "ci", 0), tmp_path / "log")
    uninterrupted = run_cell(PROBE, "digits", 0, "ci", tmp_path / "reference", "cpu",
                             params=config, tracking=False, log=None)
    _same(resumed, uninterrupted)
    assert resumed["selection"] == uninterrupted["selection"]
    assert resumed["metrics_last"] == uninterrupted["metrics_last"]


def test_protocol_model_names_the_selected_epoch(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.2, 0.5, 0.3])
    rec = run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path / "a", "cpu", tracking=False,
                   log=None)
    assert rec["protocol"]["model"].startswith("epoch 1 of epochs 0-2: best validation mAP")
    _scripted(monkeypatch, [0.1, 0.2, 0.3])
    rec = run_cell(PROBE, "synthetic-reid", 0, "ci", tmp_path / "b", "cpu", tracking=False,
                   log=None)
    assert rec["protocol"]["model"].startswith("the last epoch of epochs 0-2")
    plain = run_cell("engine_probes:ProbeMethod", "synthetic-reid", 0, "ci", tmp_path / "c", "cpu",
                     tracking=False, log=None)
    assert plain["protocol"]["model"] == "last epoch"


def _scored_images(monkeypatch) -> list:
    """Captures the images of every clustering set the harness evaluates on."""
    import benchmark.engine.runner as runner

    seen: list = []
    real = runner.evaluate_encoder

    def spy(encoder, dataset, **kwargs):
        seen.append(dataset.images.copy())
        return real(encoder, dataset, **kwargs)

    monkeypatch.setattr(runner, "evaluate_encoder", spy)
    return seen


def _overlap(scored, held) -> int:
    """How many scored images are hold-out images (by their pixels, independently of indices)."""
    held_set = {img.tobytes() for img in held}
    return sum(img.tobytes() in held_set for img in scored)


def test_clustering_scores_no_image_of_the_selection_hold_out(tmp_path, monkeypatch):
    seen = _scored_images(monkeypatch)
    rec = run_cell(PROBE, "digits", 0, "ci", tmp_path, "cpu", tracking=False, log=None)
    assert rec["status"] == FINISHED, rec.get("error")
    data = load_dataset("digits")
    held = carve_validation(data, seed=0, fraction=0.2).validation.images
    assert len(held) == 359 and seen
    assert all(_overlap(images, held) == 0 for images in seen)
    assert all(len(images) == len(data.images) - 359 for images in seen)
    assert rec["protocol"]["scored_count"] == 1797 - 359
    assert "1438 of 1797 images" in rec["protocol"]["scored_images"]


def test_clustering_scores_no_image_of_the_sweep_that_tuned_it(tmp_path, monkeypatch):
    """`run --params best_params.json` of a clustering sweep leaves the study's hold-out unscored;
    a run without that provenance scores every image (the deep-clustering protocol)."""
    from benchmark.tuning.study import BEST_PARAMS, SweepSpec, sweep

    spec = SweepSpec(method="engine_probes:TunableProbe", dataset="digits", profile="ci",
                     trials=2, out=str(tmp_path / "sweep"), seed=3, tracking=False,
                     heartbeat_interval=5, fraction=0.25)
    summary = sweep(spec)
    params = json.loads((spec.folder / BEST_PARAMS).read_text())
    assert params["_tuned_on"]["seed"] == 3 and params["_tuned_on"]["validation_fraction"] == 0.25
    seen = _scored_images(monkeypatch)
    rec = run_cell("engine_probes:TunableProbe", "digits", 0, "ci", tmp_path / "run", "cpu",
                   tracking=False, log=None, params=params)
    assert summary["best"] and rec["status"] == FINISHED, rec.get("error")
    assert rec["tuned_on"]["study"] == spec.name and "_tuned_on" not in rec["params"]
    assert rec["isolation"]["modes"] == ["plain", "sweep"]
    held = carve_validation(load_dataset("digits"), seed=3, fraction=0.25).validation.images
    assert _overlap(seen[-1], held) == 0 and len(seen[-1]) == 1797 - len(held)

    untuned = run_cell("engine_probes:TunableProbe", "digits", 0, "ci", tmp_path / "plain",
                       "cpu", tracking=False, log=None)
    assert untuned["protocol"]["scored_count"] == 1797 and len(seen[-1]) == 1797
