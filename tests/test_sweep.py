"""Sweeps: the validation split is carved from training data only, trials end in a final state, the
best parameters feed `run --params`, and each trial is a nested MLflow run.

The probe adapter (tests/engine_probes.py, `TunableProbe`) keeps trials to a second or two; the
two-worker PostgreSQL test is in tests/test_sweep_postgres.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from benchmark.cli import main
from benchmark.data.types import ClusteringDataset, ReidDataset, ReidSplit
from benchmark.engine.records import read_record
from benchmark.tuning import study as study_module
from benchmark.tuning.study import SweepSpec, make_storage, sweep
from benchmark.tuning.validation import carve_validation

PROBE = "engine_probes:TunableProbe"
FAST = {"epochs": 2, "steps": 1, "batch": 8}


class SplitTouched(AssertionError):
    pass


class Poisoned:
    """Stands in for a test split: any attribute read fails the test."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, item: str):
        raise SplitTouched(f"the {self._name} split was read ({item})")


def _reid_split(pids, camids) -> ReidSplit:
    pids, camids = np.asarray(pids), np.asarray(camids)
    paths = [Path(f"/nowhere/{p:04d}_c{c + 1}_{i:03d}.jpg") for i, (p, c) in enumerate(zip(pids, camids))]
    return ReidSplit("train", paths, pids, camids)


# -- the validation split -------------------------------------------------------------------------
def test_reid_validation_is_carved_from_training_identities_only():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(1, 21), 6)
    camids = rng.integers(0, 3, pids.size)
    camids[pids == 7] = 1  # one identity seen by a single camera
    train = _reid_split(pids, camids)
    data = ReidDataset("toy", train, Poisoned("query"), Poisoned("gallery"))
    # hold out enough that identity 7 is likely among them across seeds; check every seed's rules
    for seed in range(6):
        split = carve_validation(data, seed=seed, fraction=0.5)
        kept, q, g = split.train.train, split.validation.query, split.validation.gallery
        assert set(kept.pids).isdisjoint(q.pids) and set(kept.pids).isdisjoint(g.pids)
        assert set(map(str, q.paths + g.paths)) <= set(map(str, train.paths))
        assert set(map(str, kept.paths)).isdisjoint(map(str, q.paths + g.paths))
        assert kept.num_images + q.num_images + g.num_images == train.num_images
        assert len(set(q.pids) | set(g.pids)) == 10
        # one query per (identity, camera), only for identities with a second camera to match in
        pairs = list(zip(q.pids.tolist(), q.camids.tolist()))
        assert len(pairs) == len(set(pairs))
        for pid in set(g.pids) | set(q.pids):
            cams = set(train.camids[train.pids == pid].tolist())
            got = {c for p, c in pairs if p == pid}
            assert got == (cams if len(cams) > 1 else set())
    again = carve_validation(data, seed=3, fraction=0.5)
    assert again.validation.query.paths == carve_validation(data, seed=3, fraction=0.5).validation.query.paths


def test_clustering_validation_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), 10)
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(2, 1).repeat(2, 2).repeat(3, 3)
    data = ClusteringDataset("toy", images, labels, 4, {"all": slice(0, 40)})
    split = carve_validation(data, seed=1, fraction=0.2)
    held, kept = split.validation, split.train
    assert np.bincount(held.labels).tolist() == [2, 2, 2, 2]
    assert set(held.images[:, 0, 0, 0]).isdisjoint(kept.images[:, 0, 0, 0])
    assert len(held.labels) + len(kept.labels) == 40


def test_bad_fraction_and_tiny_data_are_refused():
    data = ReidDataset("toy", _reid_split([1, 1, 2, 2], [0, 1, 0, 1]), Poisoned("q"), Poisoned("g"))
    with pytest.raises(ValueError, match="fraction"):
        carve_validation(data, seed=0, fraction=1.5)
    with pytest.raises(ValueError, match="cannot hold out"):
        carve_validation(data, seed=0, fraction=0.5)


# -- sweeps ---------------------------------------------------------------------------------------
@pytest.fixture()
def poisoned_synthetic(monkeypatch, synthetic_reid_generated):
    """synthetic-reid whose query and gallery fail the test when anything reads them."""
    real = synthetic_reid_generated
    data = ReidDataset(real.name, real.train, Poisoned("query"), Poisoned("gallery"), real.root)
    monkeypatch.setattr(study_module, "load_dataset", lambda name, root=None: data)
    return real


def _spec(tmp_path: Path, **kw) -> SweepSpec:
    base = dict(method=PROBE, dataset="digits", profile="ci", trials=3, out=str(tmp_path),
                seed=0, device="cpu", base_params=FAST)
    base.update(kw)
    return SweepSpec(**base)


def _study(spec: SweepSpec) -> optuna.Study:
    return optuna.load_study(study_name=spec.name, storage=make_storage(spec))


def test_the_objective_never_reads_the_test_split(tmp_path, poisoned_synthetic):
    spec = _spec(tmp_path, dataset="synthetic-reid", trials=2, tracking=False)
    summary = sweep(spec)  # any read of query/gallery raises SplitTouched and fails a trial
    trials = _study(spec).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2, [t.user_attrs.get("error") for t in trials]
    assert summary["best"] is not None
    # what the trials scored: the held-out training identities, each query with its own gallery
    val = trials[0].user_attrs["validation_metrics"]
    assert 0 < val["mAP"] <= 1 and 0 <= val["R1"] <= 1


def test_sweep_writes_study_nested_mlflow_runs_and_best_params_for_run(tmp_path):
    spec = _spec(tmp_path, trials=3)
    summary = sweep(spec)
    study = _study(spec)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert summary["trials"] == {"COMPLETE": 3}
    best = max(trials, key=lambda t: t.value)
    assert summary["best"]["trial"] == best.number and summary["best"]["value"] == best.value
    # the best-parameters file holds the fixed params plus the best trial's suggestions
    params = json.loads((spec.folder / "best_params.json").read_text())
    tuned_on = params.pop("_tuned_on")  # which hold-out chose them (clustering runs skip it)
    assert tuned_on == {"study": spec.name, "dataset": "digits", "profile": "ci", "seed": 0,
                        "validation_fraction": 0.2, "objective": "validation ACC"}
    assert params == {**FAST, "lr": best.params["lr"], "k": best.params["k"]}
    assert (spec.folder / "trials.csv").read_text().count("\n") == 4
    # MLflow: one study run, three trial runs nested under it, each with its validation metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("benchmark-sweeps")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("benchmark.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("benchmark.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["best_validation_ACC"] == pytest.approx(best.value)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" and "validation_ACC" in r.data.metrics for r in children)
    by_trial = {int(r.data.tags["benchmark.trial"]): r for r in children}
    assert by_trial[best.number].data.metrics["validation_ACC"] == pytest.approx(best.value)
    # `run --params` accepts the file, and the record carries the tuned values
    rc = main(["run", "--method", PROBE, "--dataset", "digits", "--profile", "ci", "--out",
               str(tmp_path / "runs"), "--no-tracking", "--device", "cpu", "--params",
               str(spec.folder / "best_params.json")])
    assert rc == 0
    record = read_record(next((tmp_path / "runs").rglob("record.json")))
    assert record["config"]["lr"] == best.params["lr"] and record["config"]["k"] == best.params["k"]


def test_a_failed_trial_is_recorded_and_the_study_goes_on(tmp_path):
    spec = _spec(tmp_path, trials=3, tracking=False, base_params={**FAST, "fail_above_lr": 0.08})
    storage_study = study_module.open_study(spec, "ACC")
    storage_study.enqueue_trial({"lr": 0.095, "k": 5})  # above the probe's failure threshold
    summary = sweep(spec)
    trials = _study(spec).get_trials()
    assert len(trials) == 3
    assert trials[0].state.name == "FAIL" and "probe failure" in trials[0].user_attrs["error"]
    # the study went on: the later trials ran, and each ended by its own lr
    for t in trials[1:]:
        assert t.state.name == ("FAIL" if t.params["lr"] > 0.08 else "COMPLETE")
    assert summary["best"] is not None


def test_pruned_trials_end_pruned_in_optuna_and_mlflow(tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.Trial, "should_prune", lambda self: True)
    spec = _spec(tmp_path, trials=2)
    summary = sweep(spec)
    trials = _study(spec).get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(sorted(t.intermediate_values) == [0] for t in trials)  # stopped after epoch 0
    assert summary["best"] is None and not (spec.folder / "best_params.json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("benchmark-sweeps")
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("benchmark.kind") == "trial"]
    assert {r.data.tags["optuna.state"] for r in children} == {"PRUNED"}


def test_two_local_jobs_share_one_study(tmp_path):
    spec = _spec(tmp_path, trials=3)
    summary = sweep(spec, jobs=2)
    trials = _study(spec).get_trials()
    # 3 counted trials; two workers starting one at the same moment may add one more
    assert 3 <= len(trials) <= 4
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)  # the pruner may stop one
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials
    assert sum(summary["trials"].values()) == len(trials)
    # both workers logged their trials under the one study run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("benchmark-sweeps").experiment_id])
    parents = [r for r in runs if r.data.tags.get("benchmark.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("benchmark.kind") == "trial"]
    assert len(parents) == 1 and len(children) == len(trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_a_worker_with_another_command_cannot_join(tmp_path):
    spec = _spec(tmp_path, trials=1, tracking=False)
    sweep(spec)
    other = _spec(tmp_path, trials=1, tracking=False, seed=0, base_params={**FAST, "steps": 2},
                  study_name=spec.name)
    with pytest.raises(ValueError, match="was made for"):
        sweep(other)


def test_cli_refuses_a_method_without_search_space(tmp_path, capsys):
    rc = main(["sweep", "--method", "direct-transfer", "--dataset", "digits", "--profile", "ci",
               "--trials", "1", "--out", str(tmp_path), "--no-tracking"])
    assert rc == 2 and "no search space" in capsys.readouterr().err


# -- narrowing the search ------------------------------------------------------------------------
def test_tune_narrows_the_search_and_fixed_params_are_not_searched(tmp_path):
    narrowed = _spec(tmp_path, trials=2, tracking=False, tune=("k",), study_name="only-k")
    summary = sweep(narrowed)
    trials = _study(narrowed).get_trials()
    assert trials and all(set(t.params) == {"k"} for t in trials)
    assert all(set(t.user_attrs["config_overrides"]) == {"k"} for t in trials)
    assert summary["tuned"] == ["k"]
    best = json.loads(Path(summary["best_params_file"]).read_text())
    assert set(best) == set(FAST) | {"k", "_tuned_on"}  # lr keeps its default: not in the file

    fixed = _spec(tmp_path, trials=2, tracking=False, study_name="lr-fixed",
                  base_params={**FAST, "lr": 0.05})
    sweep(fixed)
    trials = _study(fixed).get_trials()
    assert all(set(t.params) == {"k"} for t in trials)
    assert all(t.user_attrs["config_overrides"].keys() == {"k"} for t in trials)


def test_tune_refuses_unknown_names_and_an_empty_search(tmp_path, capsys):
    with pytest.raises(ValueError, match="--tune names nope, not in the search space"):
        sweep(_spec(tmp_path, trials=1, tracking=False, tune=("k", "nope")))
    with pytest.raises(ValueError, match="nothing left to tune"):
        sweep(_spec(tmp_path, trials=1, tracking=False, tune=("k",),
                    base_params={**FAST, "k": 4}))
    params = tmp_path / "p.json"
    params.write_text(json.dumps(FAST))
    rc = main(["sweep", "--method", PROBE, "--dataset", "digits", "--profile", "ci", "--trials",
               "1", "--out", str(tmp_path), "--no-tracking", "--params", str(params),
               "--tune", "lr,momentum"])
    assert rc == 2 and "--tune names momentum" in capsys.readouterr().err


def test_grid_tries_every_combination_once(tmp_path):
    spec = _spec(tmp_path, trials=3, tracking=False, method="engine_probes:CategoricalProbe",
                 grid=True, prune=False)
    summary = sweep(spec)
    trials = _study(spec).get_trials()
    assert sorted(t.params["k"] for t in trials) == [3, 5, 8]
    assert summary["sampler"] == "grid" and summary["trials"] == {"COMPLETE": 3}
    with pytest.raises(ValueError, match="3 combinations"):
        sweep(_spec(tmp_path, trials=4, tracking=False, method="engine_probes:CategoricalProbe",
                    grid=True, study_name="too-many"))
    with pytest.raises(ValueError, match="--grid needs categorical parameters; k, lr of tunable-probe"):
        sweep(_spec(tmp_path, trials=1, tracking=False, grid=True, study_name="continuous"))
