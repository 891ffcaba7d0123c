"""The Slurm launcher's pieces that need no cluster: option parsing, the sbatch script a cell's job
asks with, the requeue cap, the record's launch facts, the MLflow store lock and `--status` read from
the ledger and records. The real cluster is in tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmark.engine.records import launch_facts, write_record
from benchmark.engine.slurm import (
    QueueEntry,
    RequeueCapped,
    RequeueLimitReached,
    SlurmOptions,
    executor,
    parse_extra,
    parse_time,
)
from benchmark.engine.slurm_cells import cell_status

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("text, minutes", [
    ("90", 90), ("1:30", 2), ("01:00:00", 60), ("1:00:01", 61), ("2-00:00:00", 2880),
    ("1-12", 2160), ("0-00:30", 30),
])
def test_time_in_slurm_formats_becomes_whole_minutes(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1h", "0", "0:00:30x", "-5"])
def test_bad_time_is_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="--time"):
        parse_time(text)


def test_extra_options_are_key_value_or_flags():
    assert parse_extra(["account=proj", "--constraint = a100", "exclusive"]) == {
        "account": "proj", "constraint": "a100", "exclusive": True}
    with pytest.raises(ValueError, match="--slurm-extra"):
        parse_extra(["=x"])


def test_the_sbatch_script_asks_for_what_the_options_say(tmp_path):
    options = SlurmOptions(partition="gpu", gpus_per_cell=2, cpus_per_cell=8, mem="64G",
                           time_min=parse_time("1-00:00:00"), max_parallel=3,
                           extra=parse_extra(["account=proj", "exclusive"]))
    ex = executor(tmp_path, options, job_name="benchmark-paper")
    ex.parameters["map_count"] = 5  # as submitit sets it for an array of five cells
    script = ex._make_submission_file_text("python -m x", "uid")
    lines = set(script.splitlines())
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G", "#SBATCH --time=1440",
                     "#SBATCH --account=proj", "#SBATCH --exclusive",
                     "#SBATCH --job-name=benchmark-paper", "#SBATCH --array=0-4%3",
                     "#SBATCH --signal=USR2@90"):
        assert expected in lines, script
    # nothing asked: the cluster's defaults, and 24 h
    plain = executor(tmp_path, SlurmOptions(), job_name="b")._make_submission_file_text("x", "u")
    assert "--partition" not in plain and "--gpus" not in plain and "--mem" not in plain
    assert "#SBATCH --time=1440" in plain


class _Work(RequeueCapped):
    def __init__(self, cap: int) -> None:
        self.max_requeue = cap

    def __call__(self) -> None:
        pass


def test_requeue_is_allowed_below_the_cap_and_refused_at_it(monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = _Work(2).checkpoint()
    assert again.function.max_requeue == 2  # the same call, submitted again
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(RequeueLimitReached, match="--max-requeue 2"):
        _Work(2).checkpoint()
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    with pytest.raises(RequeueLimitReached):
        _Work(0).checkpoint()


def test_launch_facts_name_the_slurm_job_or_say_local(monkeypatch):
    for name in [k for k in os.environ if k.startswith("SLURM")]:
        monkeypatch.delenv(name)
    assert launch_facts()["launcher"] == "local"
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "800")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu017")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    facts = launch_facts()
    assert facts["launcher"] == "slurm" and facts["job_id"] == "800_12"  # as squeue names it
    assert (facts["slurm_job_id"], facts["node"], facts["gpus"], facts["restarts"]) == \
        ("812", "gpu017", "0,1", 2)


def test_the_sqlite_store_lock_lets_one_writer_in_at_a_time(tmp_path):
    from benchmark.engine.tracking import store_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen(  # another process (another node) holds the store's lock for 2 s
        [sys.executable, "-c", "import sys, time; from benchmark.engine.tracking import store_lock\n"
         f"with store_lock({uri!r}):\n    print('held', flush=True); time.sleep(2)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    entered: list[float] = []
    start = time.monotonic()

    def writer() -> None:
        with store_lock(uri):
            entered.append(time.monotonic() - start)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(timeout=30)
    holder.wait(timeout=30)
    assert entered and entered[0] > 1.0  # it waited for the other writer
    with store_lock("http://tracking.example:5000"):  # a server serialises itself: no lock file
        pass


def _write(out: Path, dataset: str, method: str, seed: int, status: str, job: str | None) -> None:
    record = {"status": status, "dataset": dataset, "method": method, "seed": seed,
              "launch": {"launcher": "slurm", "job_id": job, "node": "n1"} if job else None}
    if status == "failed":
        record["error"] = {"type": "RuntimeError", "message": "probe failure"}
    write_record(out / dataset / method / "ci" / f"seed{seed}" / "record.json", record)


def test_status_combines_records_ledger_and_queue(tmp_path, monkeypatch):
    out = tmp_path
    _write(out, "digits", "a", 0, "finished", "7_0")
    _write(out, "digits", "a", 1, "failed", "7_1")  # failed earlier, now queued again as 9
    _write(out, "digits", "a", 2, "failed", None)  # failed locally, no job
    ledger = {f"digits/a/ci/seed{s}": {"job_id": j, "jobs": [j]}
              for s, j in ((0, "7_0"), (1, "9"), (3, "7_3"), (4, "7_4"))}
    write_record(out / "slurm" / "jobs.json", {"cells": ledger})
    import benchmark.engine.slurm_cells as cells

    monkeypatch.setattr(cells, "queue", lambda: {
        "7_0": QueueEntry("COMPLETED", "n1", "None"), "9": QueueEntry("PENDING", "", "Priority"),
        "7_3": QueueEntry("RUNNING", "n2", "None")})
    rows = {r["seed"]: r for r in cell_status(out)}
    assert {s: r["state"] for s, r in rows.items()} == {
        0: "finished", 1: "pending", 2: "failed", 3: "running", 4: "failed"}
    assert rows[1]["job_id"] == "9" and rows[1]["note"] == "waiting: Priority"
    assert rows[3]["node"] == "n2"
    assert "without a record" in rows[4]["note"]  # the job left the queue and wrote nothing
    assert "probe failure" in rows[2]["note"]


def _cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """The command in this process, on a machine without Slurm's commands."""
    from benchmark.cli import main

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.syspath_prepend(str(TESTS))
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, message", [
    (["run", "--all", "--partition", "gpu"], "--partition: only with --launcher slurm"),
    (["run", "--all", "--no-wait"], "--no-wait: only with --launcher slurm"),
    (["run", "--method", "buc", "--dataset", "synthetic-reid", "--launcher", "slurm"],
     "goes with --all"),
    (["run", "--all", "--launcher", "slurm", "--jobs", "2"], "--jobs is for the local launcher"),
    (["run", "--all", "--launcher", "slurm", "--time", "soon"], "--time 'soon'"),
    (["run", "--all", "--launcher", "slurm", "--gpus-per-cell", "-1"], "--gpus-per-cell -1"),
    (["run", "--all", "--launcher", "slurm"], "sbatch, squeue, scancel not found"),
    (["run", "--status"], "--status goes with --all"),
    (["sweep", "--method", "buc", "--dataset", "synthetic-reid", "--trials", "2", "--workers", "2"],
     "--workers is for --launcher slurm"),
    (["sweep", "--method", "engine_probes:TunableProbe", "--dataset", "digits", "--trials", "2",
      "--launcher", "slurm", "--workers", "2"], "needs a shared --storage"),
])
def test_launcher_misuse_is_refused_with_a_clear_message(args, message, tmp_path, capsys,
                                                         monkeypatch):
    code, _, err = _cli(capsys, monkeypatch, *args, "--out", str(tmp_path / "out"))
    assert code == 2, err
    assert message in err, err


def test_status_of_a_missing_folder_is_an_error(tmp_path, capsys, monkeypatch):
    code, _, err = _cli(capsys, monkeypatch, "run", "--all", "--status", "--out",
                        str(tmp_path / "nothing"))
    assert code == 2 and "no such results folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = _cli(capsys, monkeypatch, "run", "--all", "--status", "--out", str(empty),
                        "--json")
    assert code == 0 and json.loads(out) == {"cells": []}
