"""The runner: records, skip / force, failures, suites, the summary table and the `run` CLI.

Uses the probe adapters of tests/engine_probes.py on the embedded `digits` set (ci profile), so it
does not depend on any real method adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.data.registry import load_dataset
from benchmark.data.unlabeled import clustering_view
from benchmark.engine.profiles import get_profile
from benchmark.engine.records import FAILED, FINISHED, cell_dir, read_record, record_path
from benchmark.engine.runner import (
    HistorySink,
    applicable_cells,
    make_context,
    run_all,
    run_cell,
    summary_table,
)
from benchmark.engine.seeding import seed_everything
from engine_probes import ProbeMethod

TESTS = Path(__file__).resolve().parent
PROBE = "engine_probes:ProbeMethod"
FAST = {"epochs": 2, "steps": 1, "batch": 16}  # the probe's defaults, stated


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=full_env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def probe_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("runner")
    record = run_cell(PROBE, "digits", 0, "ci", out, "cpu", params=FAST, tracking=False, log=None)
    return out, record


def test_record_holds_everything_the_design_asks(probe_record):
    out, record = probe_record
    assert record["status"] == FINISHED, record.get("error")
    on_disk = read_record(record_path(cell_dir(out, "digits", "engine-probe", "ci", 0)))
    assert on_disk["record_id"] == record["record_id"]
    for key in ("method", "dataset", "seed", "profile", "metrics", "history", "config", "deviations",
                "environment", "wall_time_s", "status", "paper", "uses_camera_ids", "seeding",
                "dataset_facts", "protocol", "tracking", "nondeterministic_ops"):
        assert key in on_disk, key
    assert on_disk["method"] == "engine-probe" and on_disk["seed"] == 0 and on_disk["profile"] == "ci"
    assert on_disk["config"]["epochs"] == 2 and on_disk["params"] == FAST
    assert on_disk["deviations"] == ["not a published method: a probe of the engine"]
    assert on_disk["dataset_facts"]["synthetic"] is False and on_disk["dataset_facts"]["images"] == 1797
    assert on_disk["protocol"]["k"] == 10 and on_disk["protocol"]["input_size"] == [8, 8]
    for name in ("ACC", "NMI", "ARI"):
        assert -1.0 <= on_disk["metrics"][name] <= 1.0
    assert 0.1 <= on_disk["metrics"]["ACC"] <= 1.0  # ACC with 10 balanced classes is at least ~0.1
    assert [h["epoch"] for h in on_disk["history"]] == [0, 1]
    assert on_disk["tracking"]["status"] == "disabled"
    assert on_disk["environment"]["device"] == "cpu"


def test_pseudo_label_quality_is_scored_against_the_hidden_labels(probe_record):
    """The history's pseudo-label numbers are recomputed here from the probe's own labels and the
    dataset's labels in view order, by brute force over all pairs."""
    out, record = probe_record
    # replay the probe's first epoch to get its pseudo labels
    ds = load_dataset("digits")
    view, hidden = clustering_view(ds, seed=0)
    seed_everything(0)
    sink = HistorySink(log=None)
    ctx = make_context(device=torch.device("cpu"), seed=0, profile=get_profile("ci"),
                       dataset="digits", task="clustering", checkpoint_dir=Path(out) / "replay",
                       sink=sink)
    method = ProbeMethod(**FAST)
    config = method.resolve_config("digits", "ci")
    method.setup(view, config, ctx)
    method.train_epoch(0)
    pseudo = sink.pseudo[0]
    truth = hidden.labels
    kept = pseudo >= 0
    same_pseudo = pseudo[kept][:, None] == pseudo[kept][None, :]
    same_truth = truth[kept][:, None] == truth[kept][None, :]
    off = ~np.eye(kept.sum(), dtype=bool)
    precision = (same_pseudo & same_truth & off).sum() / (same_pseudo & off).sum()
    got = record["history"][0]["pseudo_labels"]
    assert got["num_clusters"] == np.unique(pseudo[kept]).size
    assert got["precision"] == pytest.approx(precision, abs=1e-9)


def test_finished_cell_is_skipped_unless_forced(probe_record):
    out, record = probe_record
    again = run_cell(PROBE, "digits", 0, "ci", out, "cpu", params=FAST, tracking=False, log=None)
    assert again["record_id"] == record["record_id"] and again["skipped"] is True
    forced = run_cell(PROBE, "digits", 0, "ci", out, "cpu", params=FAST, tracking=False, log=None,
                      force=True)
    assert forced["record_id"] != record["record_id"]
    assert forced["resumed_from_epoch"] is None  # --force starts from scratch, not from checkpoints
    assert forced["metrics"] == record["metrics"]  # same seed, same numbers to the bit
    assert forced["history"] == record["history"]


def test_failed_cell_writes_a_failed_record(tmp_path):
    record = run_cell(PROBE, "digits", 0, "ci", tmp_path, "cpu", params={**FAST, "fail_at_epoch": 1},
                      tracking=False, log=None)
    assert record["status"] == FAILED
    on_disk = read_record(record_path(cell_dir(tmp_path, "digits", "engine-probe", "ci", 0)))
    assert on_disk["error"]["type"] == "RuntimeError"
    assert "probe failure at epoch 1" in on_disk["error"]["traceback"]
    assert [h["epoch"] for h in on_disk["history"]] == [0]  # what was done before the failure


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    from benchmark.engine.contract import ConfigError

    with pytest.raises(ConfigError, match="unknown parameter"):
        run_cell(PROBE, "digits", 0, "ci", tmp_path, params={"nope": 1}, tracking=False, log=None)
    with pytest.raises(ValueError, match="unknown method"):
        run_cell("no-such-method", "digits", 0, "ci", tmp_path, tracking=False, log=None)
    with pytest.raises(Exception, match="market1501"):
        run_cell(PROBE, "market1501", 0, "ci", tmp_path, root=tmp_path / "empty", tracking=False,
                 log=None)
    with pytest.raises(FileNotFoundError, match="weights"):
        run_cell(PROBE, "digits", 0, "ci", tmp_path, weights=tmp_path / "missing.pth",
                 tracking=False, log=None)
    assert list(tmp_path.iterdir()) == []


def test_applicable_cells_follow_tasks_and_presence(tmp_path):
    cells = applicable_cells([0, 1], methods=[PROBE], datasets=["digits"])
    assert cells == [("digits", PROBE, 0), ("digits", PROBE, 1)]
    every = applicable_cells([0], methods=[PROBE], root=tmp_path)  # empty root: embedded sets only
    assert {d for d, _, _ in every} == {"digits", "synthetic-reid"}
    assert set(ProbeMethod.tasks) == {"reid", "clustering"}


def test_suite_goes_on_after_a_failure_and_summarises(probe_record):
    out, _ = probe_record
    first = read_record(record_path(cell_dir(out, "digits", "engine-probe", "ci", 0)))
    failing = "engine_probes:FailingProbe"
    records = run_all([0], "ci", out, methods=[failing, PROBE], datasets=["digits"],
                      tracking=False, progress=False)
    assert [(r["method"], r["status"]) for r in records] == [
        ("failing-probe", FAILED), ("engine-probe", FINISHED)
    ]
    assert not records[0]["skipped"] and records[1]["skipped"]  # the probe cell finished earlier
    assert records[1]["record_id"] == first["record_id"]
    assert "probe failure at epoch 0" in records[0]["error"]["traceback"]
    table = summary_table(records)
    assert list(table["status"]) == [FAILED, FINISHED]
    assert {"ACC", "NMI", "ARI", "note"} <= set(table.columns)
    assert table["ACC"][1] == pytest.approx(round(100 * first["metrics"]["ACC"], 1))
    assert "RuntimeError" in table["note"][0] and "skipped" in table["note"][1]


def test_cli_json_prints_one_object_even_when_the_method_prints(tmp_path):
    """A subprocess, so that output written straight to file descriptor 1 is caught too."""
    params = tmp_path / "params.toml"
    params.write_text('epochs = 1\nnoise_stdout = true\n')
    done = cli("run", "--method", PROBE, "--dataset", "digits", "--profile", "ci", "--seed", "3",
               "--out", str(tmp_path / "out"), "--json", "--no-tracking", "--device", "cpu",
               "--params", str(params))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)  # the whole of stdout is one JSON object
    assert record["seed"] == 3 and record["status"] == FINISHED and record["config"]["epochs"] == 1
    assert "probe noise on sys.stdout" in done.stderr
    assert "probe noise on file descriptor 1" in done.stderr


def test_cli_refuses_bad_params_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{epochs: }")
    args = ["run", "--method", PROBE, "--dataset", "digits", "--profile", "ci", "--out",
            str(tmp_path), "--no-tracking", "--params"]
    assert main([*args, str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid JSON" in err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("warmup = 3\n")
    assert main([*args, str(unknown)]) == 2
    assert "unknown parameter(s) warmup" in capsys.readouterr().err
    assert main(["run", "--all", "--method", PROBE]) == 2
    assert "--all" in capsys.readouterr().err
    assert list(tmp_path.glob("digits")) == []


def test_methods_list_json(capsys):
    from benchmark.engine.method_registry import method_names

    assert main(["methods", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == method_names()
    for r in rows:
        assert {"name", "paper", "tasks", "uses_camera_ids"} <= set(r)
        assert r["paper"]["title"] and set(r["tasks"]) <= {"reid", "clustering"}
        assert isinstance(r["uses_camera_ids"], bool)
