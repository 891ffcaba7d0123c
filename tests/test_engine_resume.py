"""A run killed with SIGKILL mid-training and restarted ends with the same metrics as an
uninterrupted one: checkpoints hold the method state, every RNG state and the history so far.

The kill comes from outside (a subprocess, SIGKILL right after the first epoch checkpoint appears),
so nothing in the run gets a chance to tidy up, as with a crash or a pre-empted job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.engine.records import FINISHED, cell_dir, record_path

TESTS = Path(__file__).resolve().parent
CC_PATH = TESTS.parent / "methods" / "cluster_contrast.py"


def _command(method, dataset, out, *extra):
    return [sys.executable, "-m", "benchmark", "run", "--method", method, "--dataset", dataset,
            "--profile", "ci", "--seed", "0", "--out", str(out), "--device", "cpu",
            "--no-tracking", "--json", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def _finish(cmd) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _kill_after_first_checkpoint(cmd, cell: Path) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    checkpoints = cell / "checkpoints"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if checkpoints.is_dir() and any(checkpoints.glob("epoch-*.pt")):
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not record_path(cell).exists(), "the run finished before it was killed"


def _resume(method, dataset, key, out, *extra) -> dict:
    cell = cell_dir(out, dataset, key, "ci", 0)
    _kill_after_first_checkpoint(_command(method, dataset, out, *extra), cell)
    resumed = _finish(_command(method, dataset, out, *extra))
    assert resumed["status"] == FINISHED
    assert resumed["resumed_from_epoch"] is not None and resumed["resumed_from_epoch"] >= 0
    return resumed


def _same(resumed: dict, uninterrupted: dict) -> None:
    assert uninterrupted["status"] == FINISHED and uninterrupted["resumed_from_epoch"] is None
    assert resumed["metrics"] == uninterrupted["metrics"]  # bit-identical: exact float equality
    assert resumed["history"] == uninterrupted["history"]  # epochs before the kill come back too


def test_probe_resumes_bit_identically(tmp_path):
    """The engine alone: a probe adapter (slowed down so that the kill lands mid-training); the
    uninterrupted reference runs in this process."""
    from benchmark.engine.runner import run_cell

    config = {"epochs": 4, "steps": 2, "sleep": 0.5}
    params = tmp_path / "params.json"
    params.write_text(json.dumps(config))
    resumed = _resume("engine_probes:ProbeMethod", "digits", "engine-probe", tmp_path / "killed",
                      "--params", str(params))
    uninterrupted = run_cell("engine_probes:ProbeMethod", "digits", 0, "ci", tmp_path / "reference",
                             "cpu", params=config, tracking=False, log=None)
    _same(resumed, uninterrupted)


@pytest.mark.skipif(not CC_PATH.exists(), reason="methods/cluster_contrast.py not written yet")
def test_cluster_contrast_resumes_bit_identically(tmp_path, synthetic_reid_generated):
    # the uninterrupted reference runs at the same time as the run that gets killed
    method, dataset = "cluster-contrast", "synthetic-reid"
    reference = subprocess.Popen(_command(method, dataset, tmp_path / "reference"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    resumed = _resume(method, dataset, method, tmp_path / "killed")
    stdout, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr[-3000:]
    _same(resumed, json.loads(stdout))
    assert resumed["metrics"]["mAP"] > 0
