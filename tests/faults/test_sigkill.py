"""SIGKILL at the moments a crash hurts most, then the same command again: the cell ends with the
metrics of an uninterrupted run, to the bit, and its MLflow run exists exactly once.

The kill comes from the process itself at a named failpoint (`benchmark.engine.failpoints`): data
loaded, an epoch trained, inside a checkpoint write, at the start of evaluation, inside the record
write, inside MLflow logging; which pass of a repeated point is drawn from a fixed seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.engine.failpoints import ENV, POINTS

REPO = Path(__file__).resolve().parents[2]
CELL = ("synthetic-reid", "cluster-contrast", "ci", "seed0")
RNG = random.Random(20261207)
ARMED = [f"{p}:{RNG.randint(1, 2)}" if p in ("epoch", "checkpoint-write") else p for p in POINTS]


def _run(out: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "MLFLOW_TRACKING_URI")}
    if failpoint:
        env[ENV] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "--method", "cluster-contrast", "--dataset",
         "synthetic-reid", "--profile", "ci", "--out", str(out), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _mlflow_runs(out: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_reid_generated):
    out = tmp_path_factory.mktemp("whole")
    done = _run(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", ARMED)
def test_killed_then_rerun_ends_bit_identical_and_logged_once(tmp_path, uninterrupted, failpoint,
                                                              fault_table):
    killed = _run(tmp_path, failpoint)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((tmp_path.joinpath(*CELL) / "record.json").read_text())
    runs = _mlflow_runs(tmp_path)
    survived = (record["status"] == "finished" and record["metrics"] == uninterrupted["metrics"]
                and record["history"] == uninterrupted["history"])
    lost = int(not survived) + abs(len(runs) - 1)
    fault_table.append({"fault": f"SIGKILL at {failpoint}", "trials": 1,
                        "survived": int(survived and len(runs) == 1), "lost": lost})
    assert record["metrics"] == uninterrupted["metrics"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["benchmark.record_id"] == record["record_id"]
    assert record["tracking"]["status"] == "logged"
    assert not list(tmp_path.joinpath(*CELL).glob("*.tmp"))
