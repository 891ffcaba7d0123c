"""The MLflow tracking server dies while a cell trains and comes back later: the run finishes and
writes its record, and `--replay-tracking` pushes it; the server ends with exactly one run.

The server is a real `mlflow server` on loopback, started and stopped by the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CELL = ("digits", "engine-probe", "ci", "seed0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(store: Path, port: int, log: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--default-artifact-root", (store / "artifacts").resolve().as_uri()],
        stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
        if server.poll() is not None:
            break
    _stop(server)
    pytest.skip(f"mlflow server did not start: {log.read_text()[-1500:]}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_dead_server_costs_no_run(tmp_path, fault_table):
    store, out, port = tmp_path / "store", tmp_path / "out", _free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = _start(store, port, tmp_path / "server.log")
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "benchmark", "run", "--method", "engine_probes:ProbeMethod",
             "--dataset", "digits", "--profile", "ci", "--out", str(out), "--tracking-uri", uri,
             "--params", _params(tmp_path)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        checkpoints = out.joinpath(*CELL) / "checkpoints"
        deadline = time.monotonic() + 300
        while not any(checkpoints.glob("epoch-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.1)  # training has started
        _stop(server)  # the server dies mid-run
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-2000:]
        assert "--replay-tracking" in stderr
        assert (out.joinpath(*CELL) / "tracking-pending.json").is_file()

        server = _start(store, port, tmp_path / "server.log")  # back again
        replay = subprocess.run(
            [sys.executable, "-m", "benchmark", "run", "--replay-tracking", "--out", str(out),
             "--tracking-uri", uri], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=300)
        assert replay.returncode == 0, replay.stderr[-2000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("benchmark")
        runs = client.search_runs([experiment.experiment_id])
    finally:
        _stop(server)
    lost = abs(len(runs) - 1)
    fault_table.append({"fault": "tracking server killed mid-run, restarted", "trials": 1,
                        "survived": int(lost == 0), "lost": lost})
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert not (out.joinpath(*CELL) / "tracking-pending.json").exists()


def _params(tmp_path: Path) -> str:
    path = tmp_path / "params.json"
    path.write_text('{"epochs": 4, "sleep": 1.0}')
    return str(path)
