"""MLflow: one run per cell with params, per-epoch and final metrics; a dead server costs nothing.

Read back through MlflowClient and compared with the records written beside them.
"""

from __future__ import annotations

import socket
import time

import pytest

from benchmark.cli import main
from benchmark.engine.records import FINISHED, cell_dir, read_record, record_path
from benchmark.engine.runner import run_all, run_cell
from benchmark.engine.tracking import PENDING_NAME, replay_pending

PROBE = "engine_probes:ProbeMethod"
FAST = {"epochs": 2, "steps": 1, "batch": 16}


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    records = run_all([0, 1], "ci", out, methods=[PROBE], datasets=["digits"], progress=False)
    return out, records


def _client(out):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")


def _runs(client):
    experiment = client.get_experiment_by_name("benchmark")
    return client.search_runs([experiment.experiment_id])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_run_per_cell_with_params_epoch_and_final_metrics(suite):
    out, records = suite
    assert [r["status"] for r in records] == [FINISHED, FINISHED]
    assert records[0]["metrics"] != records[1]["metrics"]  # another seed, other numbers
    client = _client(out)
    runs = _runs(client)
    assert len(runs) == 2
    by_seed = {run.data.tags["seed"]: run for run in runs}
    assert set(by_seed) == {"0", "1"}
    for record in records:
        run = by_seed[str(record["seed"])]
        assert record["tracking"]["status"] == "logged"
        assert record["tracking"]["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert (tags["method"], tags["dataset"], tags["profile"]) == ("engine-probe", "digits", "ci")
        assert tags["commit"] == str(record["environment"]["commit"])
        assert tags["isolation"] == "not audited"  # no `benchmark audit --out` in this folder
        params = run.data.params
        assert params["epochs"] == str(record["config"]["epochs"])
        assert params["lr"] == str(record["config"]["lr"])
        assert params["profile.backbone"] == "resnet-tiny"
        for name in ("ACC", "NMI", "ARI"):
            assert run.data.metrics[name] == pytest.approx(record["metrics"][name], abs=1e-12)
        losses = client.get_metric_history(run.info.run_id, "epoch/loss")
        assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [0, 1, 2][: len(record["history"])]
        for m in losses:
            assert m.value == pytest.approx(record["history"][m.step]["loss"], abs=1e-12)
        quality = client.get_metric_history(run.info.run_id, "pseudo_labels/precision")
        assert len(quality) == len(record["history"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"record.json", "config.json", "plots"} <= artifacts
        # the record on disk says where it was logged
        on_disk = read_record(record_path(cell_dir(out, "digits", "engine-probe", "ci", record["seed"])))
        assert on_disk["tracking"]["run_id"] == run.info.run_id
    assert not (out / "mlruns").exists()  # artifacts live beside the store, not in the cwd


def test_unreachable_server_keeps_the_record_and_replays_later(suite, tmp_path, capfd):
    out, _ = suite
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    record = run_cell(PROBE, "digits", 5, "ci", out, "cpu", tracking_uri=uri, params=FAST,
                      log=None)
    elapsed = time.perf_counter() - start
    assert record["status"] == FINISHED
    cell = cell_dir(out, "digits", "engine-probe", "ci", 5)
    on_disk = read_record(record_path(cell))
    assert on_disk["metrics"] == record["metrics"]
    assert on_disk["tracking"]["status"].startswith("failed: ")
    assert on_disk["tracking"]["uri"] == uri and on_disk["tracking"]["run_id"] is None
    assert (cell / PENDING_NAME).is_file()
    err = capfd.readouterr().err
    assert "MLflow tracking to" in err and "--replay-tracking" in err
    assert elapsed < 120

    # replay to the working store: the record is pushed once and marked logged
    sqlite = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    assert main(["run", "--replay-tracking", "--out", str(out), "--tracking-uri", sqlite]) == 0
    assert not (cell / PENDING_NAME).exists()
    replayed = read_record(record_path(cell))
    assert replayed["tracking"]["status"] == "logged"
    runs = [r for r in _runs(_client(out)) if r.data.tags["seed"] == "5"]
    assert len(runs) == 1 and runs[0].info.run_id == replayed["tracking"]["run_id"]
    assert replay_pending(out) == []  # nothing left


def test_replay_does_not_duplicate_a_half_logged_run(suite):
    """A run that an interrupted attempt left behind for the same record is replaced, not kept."""
    out, records = suite
    client = _client(out)
    record = read_record(record_path(cell_dir(out, "digits", "engine-probe", "ci", 0)))
    before = {r.info.run_id for r in _runs(client)}
    cell = cell_dir(out, "digits", "engine-probe", "ci", 0)
    (cell / PENDING_NAME).write_text('{"status": "pending"}')
    result = replay_pending(out, f"sqlite:///{out.resolve() / 'mlflow.db'}")
    assert [r["status"] for r in result] == ["logged"]
    after = [r for r in _runs(client) if r.data.tags["seed"] == "0"]
    assert len(after) == 1 and after[0].info.run_id not in before
    assert after[0].data.tags["benchmark.record_id"] == record["record_id"]


def test_parallel_cells_give_the_same_numbers_and_are_all_logged(suite, tmp_path, monkeypatch):
    from tqdm import tqdm

    printed: list[str] = []  # what the parent printed above its progress bar
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, line, file=None, end="\n",
                                                   nolock=False: printed.append(line)))
    out, sequential = suite
    parallel = run_all([0, 1], "ci", tmp_path, methods=[PROBE], datasets=["digits"],
                       progress=False, jobs=2)
    # the workers' epoch lines reached the parent, which wrote them above the bar
    for seed in (0, 1):
        mine = [line for line in printed if line.startswith(f"[engine-probe digits ci seed{seed}] ")]
        assert [line.split("]")[1].split(":")[0].strip() for line in mine[:2]] == \
            ["epoch 0", "epoch 1"], printed
    assert [r["status"] for r in parallel] == [FINISHED, FINISHED]
    assert [r["seed"] for r in parallel] == [r["seed"] for r in sequential]  # cell order kept
    assert [r["metrics"] for r in parallel] == [r["metrics"] for r in sequential]
    assert [r["history"] for r in parallel] == [r["history"] for r in sequential]
    runs = _runs(_client(tmp_path))
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    on_disk = [read_record(record_path(cell_dir(tmp_path, "digits", "engine-probe", "ci", s)))
               for s in (0, 1)]
    assert all(r["tracking"]["status"] == "logged" for r in on_disk)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def test_a_kill_before_mlflow_leaves_a_marker_that_a_rerun_pushes(tmp_path, monkeypatch):
    """Write-ahead: the marker is on disk before the record, so a kill right after the record (or
    anywhere in logging) never leaves a finished record that MLflow will not get."""
    import benchmark.engine.runner as runner

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(runner, "log_cell", killed)
    with pytest.raises(Killed):
        run_cell(PROBE, "digits", 3, "ci", tmp_path, "cpu", params=FAST, log=None)
    cell = cell_dir(tmp_path, "digits", "engine-probe", "ci", 3)
    assert read_record(record_path(cell))["status"] == FINISHED
    assert (cell / PENDING_NAME).is_file()
    monkeypatch.undo()
    again = run_cell(PROBE, "digits", 3, "ci", tmp_path, "cpu", params=FAST, log=None)
    assert again["skipped"] and not (cell / PENDING_NAME).exists()
    runs = _runs(_client(tmp_path))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert read_record(record_path(cell))["tracking"]["run_id"] == runs[0].info.run_id


def test_a_kill_mid_logging_is_replayed_to_exactly_one_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_artifact

    def killed(self, *args, **kwargs):
        raise Killed

    monkeypatch.setattr(MlflowClient, "log_artifact", killed)
    with pytest.raises(Killed):
        run_cell(PROBE, "digits", 4, "ci", tmp_path, "cpu", params=FAST, log=None)
    cell = cell_dir(tmp_path, "digits", "engine-probe", "ci", 4)
    assert (cell / PENDING_NAME).is_file()
    assert [r.info.status for r in _runs(_client(tmp_path))] == ["RUNNING"]  # half-logged
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    assert main(["run", "--replay-tracking", "--out", str(tmp_path)]) == 0
    runs = _runs(_client(tmp_path))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert not (cell / PENDING_NAME).exists()


def test_replay_honours_mlflow_tracking_uri(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{closed_port()}"
    record = run_cell(PROBE, "digits", 6, "ci", tmp_path, "cpu", tracking_uri=dead,
                      params=FAST, log=None)
    assert record["tracking"]["status"].startswith("failed")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    assert [r["status"] for r in replay_pending(tmp_path)] == ["logged"]
    assert len(_runs(_client(tmp_path))) == 1
