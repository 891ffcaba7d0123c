"""`benchmark audit` (integrity rule 1): every registered adapter passes in all three modes, and each
leaking adapter of `leaky_adapters` fails with the substitution it depends on named.

The audit's verdict is an experiment (train again with labels, file names, validation labels and
the test split substituted; compare to the bit), so these tests run real trainings at `ci` scale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.data.registry import load_dataset
from benchmark.engine.audit import MODES, Worlds, applicable, audit
from benchmark.engine.audit_log import isolation_status, read_audits
from benchmark.engine.method_registry import get_method, method_names
from benchmark.engine.runner import TrainingPlan, plan_training

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = {"reid": "synthetic-reid", "clustering": "digits"}
CASES = [(name, EMBEDDED[task]) for name in method_names() for task in get_method(name).tasks]


@pytest.fixture(scope="module", autouse=True)
def generated(synthetic_reid_generated):
    """synthetic-reid exists before the audit's worker processes look for it."""
    return synthetic_reid_generated


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dataset"), CASES)
def test_every_registered_adapter_passes_in_every_mode(name, dataset):
    report = audit(name, dataset, modes=MODES, profile="ci")
    uses_labels = get_method(name).uses_labels  # the supervised ceiling: labels are declared
    for verdict in report["modes"]:
        assert verdict["passed"], verdict["message"]
        assert verdict["trainings"] == 2 + uses_labels
        expected = [s for s in applicable(verdict["mode"], load_dataset(dataset).kind)
                    if not (uses_labels and s == "training labels")]
        assert verdict["substitutions"] == expected
        assert ("training labels, declared by uses_labels, do change it" in verdict["message"]) \
            == uses_labels
    assert [v["mode"] for v in report["modes"]] == list(MODES)


LEAKS = [
    ("leaky_adapters:GcLabelSnoop", "synthetic-reid", "plain", {"training labels"}),
    ("leaky_adapters:GcLabelSnoop", "digits", "plain", {"training labels"}),
    ("leaky_adapters:FileNameSnoop", "synthetic-reid", "plain", {"file names"}),
    ("leaky_adapters:TestSplitTrainer", "synthetic-reid", "validation", {"test split"}),
    ("leaky_adapters:ContextSnoop", "synthetic-reid", "validation",
     {"training labels", "validation labels"}),
    ("leaky_adapters:ContextSnoop", "digits", "sweep", {"training labels", "validation labels"}),
    # declaring uses_labels excuses the training labels, nothing else
    ("leaky_adapters:LabelsDeclaredButFileNamesRead", "synthetic-reid", "plain", {"file names"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "dataset", "mode", "leaks"), LEAKS)
def test_each_leaking_adapter_fails_naming_its_leak(method, dataset, mode, leaks):
    report = audit(method, dataset, modes=[mode], profile="ci")
    verdict = report["modes"][0]
    assert not verdict["passed"] and verdict["verdict"] == "leak"
    assert set(verdict["leaks"]) == leaks, verdict["message"]
    for leak in leaks:
        assert f"with {leak} substituted" in verdict["message"]


@pytest.mark.slow
def test_a_false_uses_labels_declaration_fails():
    report = audit("leaky_adapters:LabelsDeclaredButUnused", "synthetic-reid", modes=["plain"],
                   profile="ci")
    verdict = report["modes"][0]
    assert not verdict["passed"] and verdict["verdict"] == "error"
    assert "declares uses_labels, yet its outcome is bit-identical" in verdict["message"]


@pytest.mark.slow
def test_cli_exit_codes_verdict_file_and_record_isolation(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)

    done = cli("audit", "--method", "leaky_adapters:FileNameSnoop", "--mode", "plain",
               "--out", str(tmp_path), "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert not report["passed"]
    assert report["audits"][0]["modes"][0]["leaks"] == ["file names"]
    entries = read_audits(tmp_path, "file-name-snoop")["entries"]
    assert [e["mode"] for e in entries] == ["plain"] and not entries[0]["passed"]
    status = isolation_status(tmp_path, "file-name-snoop", "leaky_adapters:FileNameSnoop",
                              ["plain"], {"commit": entries[0]["commit"], "dirty": False})
    assert not status["audited"] and "FAILED" in status["note"]

    done = cli("audit", "--method", "direct-transfer", "--dataset", "digits", "--mode", "plain",
               "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "plain: PASS" in done.stdout
    done = cli("run", "--method", "direct-transfer", "--dataset", "digits", "--profile", "ci",
               "--out", str(tmp_path), "--no-tracking", "--json")
    assert done.returncode == 0, done.stderr
    isolation = json.loads(done.stdout)["isolation"]
    assert isolation["audited"] and isolation["modes"] == ["plain"]
    assert isolation["audited_on"] == ["digits (ci)"]

    done = cli("audit", "--method", "direct-transfer", "--mode", "nonsense")
    assert done.returncode == 2
    done = cli("audit", "--method", "no-such-method")
    assert done.returncode == 2 and "no-such-method" in done.stderr


def test_substituted_worlds_change_only_what_they_name(synthetic_reid_generated, tmp_path):
    """The worlds the audit trains in: the same images in the same roles, with only the named
    substitution applied (so that an honest method trains identically in each)."""
    data = synthetic_reid_generated
    config = {"model_selection": "validation", "validation_fraction": 0.2}
    plan = plan_training(data, config, 0)
    worlds = Worlds(data, plan, "validation", tmp_path, 0)
    base = worlds.world(frozenset())
    kept = plan.train.train
    assert [Path(p) for p in base.plan.train.train.paths] == [Path(p) for p in kept.paths]
    np.testing.assert_array_equal(base.plan.train.train.pids, kept.pids)

    labels = worlds.world(frozenset({"training labels"}))
    got = labels.plan.train.train
    assert not np.array_equal(got.pids, kept.pids)
    np.testing.assert_array_equal(np.sort(got.pids), np.sort(kept.pids))  # shuffled, not new
    np.testing.assert_array_equal(got.camids, kept.camids)
    np.testing.assert_array_equal(labels.plan.selection.validation.query.pids,
                                  plan.selection.validation.query.pids)

    held = worlds.world(frozenset({"validation labels"}))
    np.testing.assert_array_equal(held.plan.train.train.pids, kept.pids)
    assert not np.array_equal(held.plan.selection.validation.gallery.pids,
                              plan.selection.validation.gallery.pids)

    names = worlds.world(frozenset({"file names"}))
    renamed = names.plan.train.train.paths
    assert all(Path(a).read_bytes() == Path(b).read_bytes()
               for a, b in zip(renamed[:50], kept.paths[:50]))
    assert not any(Path(p).name[:4].isdigit() for p in renamed)

    test = worlds.world(frozenset({"test split"}))
    assert test.data.query.num_images == data.query.num_images
    assert Path(test.data.query.paths[0]).read_bytes() != Path(data.query.paths[0]).read_bytes()
    assert [Path(p) for p in test.plan.train.train.paths] == [Path(p) for p in kept.paths]


def test_clustering_worlds_keep_the_hold_out(tmp_path):
    data = load_dataset("digits")
    plan = plan_training(data, {"model_selection": "validation"}, 0)
    worlds = Worlds(data, plan, "validation", tmp_path, 0)
    both = worlds.world(frozenset({"training labels", "validation labels"}))
    np.testing.assert_array_equal(both.plan.train.images, plan.train.images)
    np.testing.assert_array_equal(both.plan.selection.validation.images,
                                  plan.selection.validation.images)
    assert not np.array_equal(both.plan.train.labels, plan.train.labels)
    assert not np.array_equal(both.plan.selection.validation.labels,
                              plan.selection.validation.labels)
    plain = Worlds(data, TrainingPlan(train=data), "plain", tmp_path, 0).world(frozenset())
    np.testing.assert_array_equal(plain.plan.train.labels, data.labels)


def test_applicable_substitutions():
    assert applicable("plain", "reid") == ("training labels", "file names", "test split")
    assert applicable("sweep", "reid") == ("training labels", "file names", "validation labels")
    assert applicable("validation", "clustering") == ("training labels", "validation labels")
    with pytest.raises(ValueError, match="audit mode"):
        applicable("everything", "reid")


def test_isolation_status_reads_the_verdicts(tmp_path):
    from benchmark.engine.audit_log import add_audits

    git = {"commit": "c1", "dirty": False}
    assert isolation_status(tmp_path, "m", "m", ["plain"], git)["audited"] is False

    def entry(mode, passed, commit="c1", dataset="digits"):
        return {"dataset": dataset, "profile": "ci", "seed": 0, "mode": mode, "passed": passed,
                "verdict": "pass" if passed else "leak", "message": f"{mode} says so",
                "method_ref": "m", "commit": commit, "dirty": False}

    add_audits(tmp_path, "m", "m", [entry("plain", True)])
    status = isolation_status(tmp_path, "m", "m", ["plain"], git)
    assert status["audited"] and status["same_code"] and status["commit"] == "c1"
    assert isolation_status(tmp_path, "m", "m", ["plain"], {"commit": "c2", "dirty": False}) \
        ["same_code"] is False
    missing = isolation_status(tmp_path, "m", "m", ["validation"], git)
    assert not missing["audited"] and "validation" in missing["note"]
    assert not isolation_status(tmp_path, "m", "other.module:M", ["plain"], git)["audited"]

    add_audits(tmp_path, "m", "m", [entry("plain", False, dataset="synthetic-reid")])
    failed = isolation_status(tmp_path, "m", "m", ["plain"], git)
    assert not failed["audited"] and "FAILED" in failed["note"]
    add_audits(tmp_path, "m", "m", [entry("plain", True, dataset="synthetic-reid")])  # replaced
    assert isolation_status(tmp_path, "m", "m", ["plain"], git)["audited"]
    assert len(read_audits(tmp_path, "m")["entries"]) == 2

    (tmp_path / "audits" / "m.json").write_text("{not json")
    broken = isolation_status(tmp_path, "m", "m", ["plain"], git)
    assert not broken["audited"] and "m.json" in broken["note"]
