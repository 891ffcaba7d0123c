"""`run --all` and `sweep` through `--launcher slurm`, against a real one-node Slurm cluster.

The cluster (munged, slurmctld, slurmd from Debian's packages, which `.ci/run` installs) is started
under a temporary folder by `services.slurm_cluster`. What is checked:
- ci cells run as Slurm jobs give records whose metrics and per-epoch histories are identical to
  local runs, and the jobs log to MLflow themselves (one SQLite store, locked per writer);
- a cell cancelled mid-run (`scancel`) and submitted again by the same command resumes from its
  last epoch checkpoint to the metrics of an uninterrupted run;
- the signal Slurm sends before a time limit (USR2, `--signal=USR2@90`) makes the job checkpoint
  and requeue itself; the requeued job resumes to the same metrics, and its record counts the
  requeue; with `--max-requeue 0` the cell is recorded failed instead of requeued;
- `run --all --status` reports pending, running, finished and failed cells with their job ids;
- sweep workers started as Slurm jobs share one PostgreSQL study.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import SlurmCluster, postgres_url, slurm_cluster  # noqa: F401  (fixtures)

TESTS = Path(__file__).resolve().parent
SLOW_PROBE = "engine_probes:SlowProbe"  # four epochs, a 2.5 s rest after each

pytestmark = pytest.mark.slow


def cli(cluster: SlurmCluster | None, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(cluster.env if cluster else os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["BENCHMARK_SLURM_POLL_S"] = "1"
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def record(out: Path, dataset: str, method: str, profile: str = "ci", seed: int = 0) -> dict:
    return json.loads((out / dataset / method / profile / f"seed{seed}" / "record.json").read_text())


def status(cluster: SlurmCluster, out: Path) -> dict[str, dict]:
    rows = ok(cli(cluster, "run", "--all", "--status", "--out", str(out), "--json"))["cells"]
    return {f"{r['dataset']}/{r['method']}/{r['profile']}/seed{r['seed']}": r for r in rows}


def wait_until(condition, what: str, cluster: SlurmCluster, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def slow_probe_submit(cluster: SlurmCluster, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(cluster, "run", "--all", "--launcher", "slurm", "--cpus-per-cell", "1",
               "--profile", "ci", "--methods", SLOW_PROBE, "--datasets", "digits",
               "--out", str(out), "--no-tracking", "--json", *extra)


@pytest.fixture(scope="module")
def slow_probe_uninterrupted(tmp_path_factory, slurm_cluster):
    """The slow probe's cell run locally, start to end: what every interrupted run must equal."""
    out = tmp_path_factory.mktemp("local")
    ok(cli(None, "run", "--all", "--profile", "ci", "--methods", SLOW_PROBE, "--datasets",
           "digits", "--out", str(out), "--no-tracking", "--json"))
    return record(out, "digits", "slow-probe")


def test_ci_cells_on_slurm_match_local_runs_and_log_to_mlflow(slurm_cluster, tmp_path,
                                                               synthetic_reid_generated):
    cells = ["--profile", "ci", "--methods", "cluster-contrast,buc", "--datasets",
             "synthetic-reid", "--seeds", "0"]
    local = tmp_path / "local"
    ok(cli(None, "run", "--all", *cells, "--jobs", "2", "--out", str(local), "--no-tracking",
           "--json"))
    on_slurm = tmp_path / "slurm"
    result = ok(cli(slurm_cluster, "run", "--all", *cells, "--launcher", "slurm",
                    "--cpus-per-cell", "1", "--mem", "3G", "--out", str(on_slurm), "--json"))
    assert len(result["submitted"]) == 2 and not result["skipped"]
    job_ids = {x["cell"]: x["job_id"] for x in result["submitted"]}
    for method in ("cluster-contrast", "buc"):
        mine, theirs = record(on_slurm, "synthetic-reid", method), record(local, "synthetic-reid", method)
        assert mine["status"] == theirs["status"] == "finished"
        assert mine["metrics"] == theirs["metrics"]
        assert [{k: v for k, v in row.items() if k != "time_s"} for row in mine["history"]] == \
            [{k: v for k, v in row.items() if k != "time_s"} for row in theirs["history"]]
        launch = mine["launch"]
        assert launch["launcher"] == "slurm" and launch["node"] == slurm_cluster.node
        assert launch["job_id"] == job_ids[f"synthetic-reid/{method}/ci/seed0"]
        assert launch["restarts"] == 0 and launch["cpus"] == "1"
        assert theirs["launch"]["launcher"] == "local"
        assert mine["tracking"]["status"] == "logged"  # the job logged itself
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{on_slurm / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["launch.job_id"] for r in runs) == sorted(job_ids.values())
    assert {r.data.tags["launcher"] for r in runs} == {"slurm"}
    # the same command again: both cells are finished, nothing is submitted
    again = ok(cli(slurm_cluster, "run", "--all", *cells, "--launcher", "slurm",
                   "--out", str(on_slurm), "--json"))
    assert again["submitted"] == [] and len(again["skipped"]) == 2
    assert all(r.get("skipped") for r in again["records"])


def test_cancelled_cell_resumes_when_submitted_again(slurm_cluster, tmp_path,
                                                     slow_probe_uninterrupted):
    out = tmp_path / "out"
    key = "digits/slow-probe/ci/seed0"
    submitted = ok(slow_probe_submit(slurm_cluster, out, "--no-wait"))["submitted"]
    job_id = submitted[0]["job_id"]
    checkpoints = out / "digits" / "slow-probe" / "ci" / "seed0" / "checkpoints"
    wait_until(lambda: (checkpoints / "epoch-0000.pt").is_file(), "epoch 0's checkpoint",
               slurm_cluster)
    # submitit lets SIGTERM pass (a job may be checkpointing), so the cancel takes KillWait (5 s
    # in this cluster) to land: the probe's three remaining epochs take longer than that.
    slurm_cluster.run("scancel", job_id)
    wait_until(lambda: slurm_cluster.queue().get(job_id, ("",))[0] not in
               ("RUNNING", "COMPLETING", "PENDING"), "the cancel", slurm_cluster)
    assert not (checkpoints.parent / "record.json").is_file()  # cut off before the end
    row = status(slurm_cluster, out)[key]
    assert row["state"] == "failed" and "without a record" in row["note"]
    # the same command, waiting this time: a new job, which resumes from the last checkpoint
    again = ok(slow_probe_submit(slurm_cluster, out))
    assert [x["cell"] for x in again["submitted"]] == [key]
    assert again["submitted"][0]["job_id"] != job_id
    mine = record(out, "digits", "slow-probe")
    assert mine["status"] == "finished" and mine["resumed_from_epoch"] >= 1
    assert mine["metrics"] == slow_probe_uninterrupted["metrics"]
    assert [r["loss"] for r in mine["history"]] == [r["loss"] for r in slow_probe_uninterrupted["history"]]
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())["cells"][key]
    assert ledger["jobs"] == [job_id, again["submitted"][0]["job_id"]]
    assert status(slurm_cluster, out)[key]["state"] == "finished"


def test_time_limit_signal_requeues_and_the_cell_resumes(slurm_cluster, tmp_path,
                                                         slow_probe_uninterrupted):
    out = tmp_path / "out"
    key = "digits/slow-probe/ci/seed0"
    job_id = ok(slow_probe_submit(slurm_cluster, out, "--no-wait"))["submitted"][0]["job_id"]
    checkpoints = out / "digits" / "slow-probe" / "ci" / "seed0" / "checkpoints"
    wait_until(lambda: (checkpoints / "epoch-0001.pt").is_file(), "epoch 1's checkpoint",
               slurm_cluster)
    # What Slurm sends before a time limit (the job asked for --signal=USR2@90): submitit calls the
    # cell's checkpoint hook and requeues the job.
    slurm_cluster.run("scancel", "--signal=USR2", job_id)
    wait_until(lambda: slurm_cluster.queue().get(job_id, ("", ""))[0] == "PENDING",
               "the requeue", slurm_cluster)
    row = status(slurm_cluster, out)[key]
    assert (row["state"], row["job_id"]) == ("pending", job_id)
    # Slurm holds a requeued job back for two minutes; release it now rather than wait.
    slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    # The same command finds the job in the queue: it submits nothing and waits for it.
    again = ok(slow_probe_submit(slurm_cluster, out))
    assert again["submitted"] == [] and again["queued"] == [{"cell": key, "job_id": job_id}]
    mine = record(out, "digits", "slow-probe")
    assert mine["status"] == "finished" and mine["resumed_from_epoch"] >= 1
    assert mine["launch"]["job_id"] == job_id and mine["launch"]["restarts"] == 1
    assert mine["metrics"] == slow_probe_uninterrupted["metrics"]


def test_requeue_cap_records_the_cell_failed_and_keeps_its_checkpoints(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    key = "digits/slow-probe/ci/seed0"
    job_id = ok(slow_probe_submit(slurm_cluster, out, "--no-wait", "--max-requeue", "0")
                )["submitted"][0]["job_id"]
    checkpoints = out / "digits" / "slow-probe" / "ci" / "seed0" / "checkpoints"
    wait_until(lambda: (checkpoints / "epoch-0000.pt").is_file(), "epoch 0's checkpoint",
               slurm_cluster)
    waiting = subprocess.Popen(  # the command that waits for the job, as a user would leave it
        [sys.executable, "-m", "benchmark", "run", "--all", "--launcher", "slurm", "--profile",
         "ci", "--methods", SLOW_PROBE, "--datasets", "digits", "--out", str(out),
         "--no-tracking", "--json"],
        env={**slurm_cluster.env, "BENCHMARK_SLURM_POLL_S": "1",
             "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    row = status(slurm_cluster, out)[key]
    assert (row["state"], row["job_id"], row["slurm_state"]) == ("running", job_id, "RUNNING")
    slurm_cluster.run("scancel", "--signal=USR2", job_id)
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 1, stderr[-3000:]
    [failed] = json.loads(stdout)["records"]
    assert failed["status"] == "failed" and failed["error"]["type"] == "RequeueLimitReached"
    assert "--max-requeue 0" in failed["error"]["message"]
    assert failed["launch"]["job_id"] == job_id and failed["launch"]["restarts"] == 0
    assert (checkpoints / "epoch-0000.pt").is_file()
    assert status(slurm_cluster, out)[key]["state"] == "failed"


def test_status_lists_pending_cells_with_their_job_ids(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    result = ok(slow_probe_submit(slurm_cluster, out, "--no-wait", "--slurm-extra", "hold"))
    job_id = result["submitted"][0]["job_id"]
    try:
        row = status(slurm_cluster, out)["digits/slow-probe/ci/seed0"]
        assert (row["state"], row["job_id"], row["slurm_state"]) == ("pending", job_id, "PENDING")
        assert "JobHeldUser" in row["note"]
        human = cli(slurm_cluster, "run", "--all", "--status", "--out", str(out))
        assert human.returncode == 0 and job_id in human.stdout and "pending" in human.stdout
    finally:
        slurm_cluster.run("scancel", job_id, check=False)


def test_sweep_workers_on_slurm_share_one_postgres_study(slurm_cluster, postgres_url, tmp_path):
    import optuna
    from optuna.trial import TrialState

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epochs": 2, "steps": 1, "batch": 8, "sleep": 1.0}))
    summary = ok(cli(slurm_cluster, "sweep", "--launcher", "slurm", "--workers", "2",
                     "--cpus-per-cell", "1", "--method", "engine_probes:TunableProbe",
                     "--dataset", "digits", "--profile", "ci", "--trials", "4", "--storage",
                     postgres_url, "--study-name", "slurm-sweep", "--params", str(params),
                     "--out", str(tmp_path / "out"), "--no-tracking", "--json"))
    assert len(summary["jobs"]) == 2 and summary["best"] is not None
    trials = optuna.load_study(study_name="slurm-sweep", storage=postgres_url).get_trials()
    assert len(trials) >= 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2, workers  # both worker jobs ran trials
    assert (tmp_path / "out" / "sweeps" / "slurm-sweep" / "best_params.json").is_file()


def test_a_cell_that_fails_on_its_own_is_recorded_failed_not_requeued(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    done = cli(slurm_cluster, "run", "--all", "--launcher", "slurm", "--profile", "ci",
               "--methods", "engine_probes:FailingProbe", "--datasets", "digits",
               "--out", str(out), "--no-tracking", "--json")
    assert done.returncode == 1, done.stderr[-3000:]
    result = json.loads(done.stdout)
    [failed] = result["records"]
    assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError"
    assert "probe failure at epoch 0" in failed["error"]["message"]
    assert failed["launch"]["job_id"] == result["submitted"][0]["job_id"]
    assert failed["launch"]["restarts"] == 0  # ran once: Slurm did not requeue it
    assert result["submitted"][0]["job_id"] not in slurm_cluster.queue() or \
        slurm_cluster.queue()[result["submitted"][0]["job_id"]][0] == "COMPLETED"
