"""`run --all --launcher slurm`: each pending cell is one Slurm job (an array when there are several).

Why it is built this way:
- A job runs the same `run_cell` as a local run, so its record, resume and metrics are the local
  ones; only `launch` in the record differs (job id, node, GPUs, requeues).
- Which cells to submit is decided as locally: a finished record skips its cell. A cell whose job is
  still in the queue is not submitted twice, so the same command can be given again after
  `--no-wait`, after the cluster lost jobs, or after a cancel: it submits what is missing and
  waits for the rest.
- `<out>/slurm/jobs.json` (the ledger) maps each cell to its latest job id and the earlier ones.
  `--status` reads it beside the records and the queue.
- A job that leaves the queue without its cell's record (cancelled, killed, out of memory, its
  requeues used up) gets a failed record that says so, and keeps its checkpoints: submitting again
  resumes it.
- Jobs log to MLflow themselves as they finish (the SQLite store is locked per writer,
  `benchmark.engine.tracking.store_lock`); a job that could not log leaves the usual pending marker.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.engine.method_registry import get_method
from benchmark.engine.records import (
    FAILED,
    FINISHED,
    RecordError,
    cell_dir,
    file_lock,
    jsonable,
    now,
    read_record,
    record_path,
    write_record,
)
from benchmark.engine.slurm import (
    QueueEntry,
    RequeueCapped,
    SlurmOptions,
    executor,
    is_alive,
    queue,
    require_slurm,
    wait_for,
)

SLURM_DIR = "slurm"
LEDGER_NAME = "jobs.json"


class SlurmJobEnded(RuntimeError):
    """A cell's Slurm job left the queue without writing the cell's record."""


def cell_key(dataset: str, method: str, profile: str, seed: int) -> str:
    return f"{dataset}/{method}/{profile}/seed{seed}"


def ledger_path(out: Path) -> Path:
    return Path(out) / SLURM_DIR / LEDGER_NAME


def read_ledger(out: Path) -> dict[str, dict[str, Any]]:
    """Cell key -> {job_id, jobs (every id, oldest first), submitted_at, options, cell fields}."""
    path = ledger_path(out)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: cannot read the Slurm job ledger ({exc}); delete it to forget "
                          "the jobs (records and checkpoints are not affected)") from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, dict):
        raise RecordError(f"{path}: not a Slurm job ledger (no 'cells' table)")
    return cells


def _add_to_ledger(out: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    with file_lock(ledger_path(out).with_name(LEDGER_NAME + ".lock")):  # one writer at a time
        cells = read_ledger(out)
        for key, entry in entries.items():
            earlier = cells.get(key, {}).get("jobs", [])
            cells[key] = {**entry, "jobs": [*earlier, entry["job_id"]]}
        write_record(ledger_path(out), {"cells": cells})


class CellJob(RequeueCapped):
    """One cell as a Slurm job: `run_cell`, which resumes from the cell's last epoch checkpoint
    when the job is requeued or submitted again."""

    def __init__(self, method: str, dataset: str, seed: int, profile: str, out: str,
                 device: str | None, tracking_uri: str | None, tracking: bool,
                 weights: str | None, root: str | None, init: str, max_requeue: int) -> None:
        self.method, self.dataset, self.seed, self.profile = method, dataset, seed, profile
        self.out, self.device, self.tracking_uri, self.tracking = out, device, tracking_uri, tracking
        self.weights, self.root, self.init, self.max_requeue = weights, root, init, max_requeue

    def __call__(self) -> dict[str, Any]:
        from benchmark.engine.runner import run_cell

        record = run_cell(self.method, self.dataset, self.seed, self.profile, self.out,
                          self.device, self.tracking_uri, None, self.weights, False,
                          root=self.root, tracking=self.tracking, init=self.init)
        return {"status": record["status"], "record_id": record.get("record_id")}


@dataclass
class _Cell:
    dataset: str
    method: str  # as given (a key or module:Class)
    key: str  # the method's registry key, as in the results folder
    seed: int
    folder: Path
    job_id: str | None = None
    record: dict[str, Any] | None = None


def run_all_slurm(
    cells: Sequence[tuple[str, str, int]],
    profile: str,
    out: Path,
    options: SlurmOptions,
    *,
    device: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    weights: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    init: str = "profile",
    wait: bool = True,
    poll_s: float = 10.0,
) -> dict[str, Any]:
    """Submit every pending cell; with `wait`, return every cell's record once its job has ended.

    Returns {"records": [...]} (in `cells` order; with `wait` only) and {"submitted": [{cell,
    job_id}], "queued": [...], "skipped": [...]}: new jobs, jobs already in the queue, and finished
    cells."""
    from benchmark.engine.runner import forget_cell
    from benchmark.engine.tracking import PENDING_NAME, log_cell, resolve_tracking_uri

    require_slurm()
    out = Path(out)
    uri = resolve_tracking_uri(tracking_uri, out) if tracking else None
    ledger = read_ledger(out)
    in_queue = queue()
    todo: list[_Cell] = []
    for dataset, method, seed in cells:
        key = get_method(method).key
        folder = cell_dir(out, dataset, key, profile, seed)
        todo.append(_Cell(dataset, method, key, int(seed), folder))
    submit: list[_Cell] = []
    queued: list[_Cell] = []
    for cell in todo:
        earlier = ledger.get(cell_key(cell.dataset, cell.key, profile, cell.seed), {})
        alive = earlier.get("job_id") and is_alive(in_queue.get(earlier["job_id"]))
        if force and not alive:
            forget_cell(cell.folder)
        path = record_path(cell.folder)
        existing = read_record(path) if path.is_file() else None
        if existing is not None and existing.get("status") == FINISHED and not force:
            if uri and (cell.folder / PENDING_NAME).is_file():
                log_cell(existing, cell.folder, uri, out)  # an earlier tracking failure
            cell.record = {**existing, "skipped": True}
        elif alive:
            cell.job_id = earlier["job_id"]
            queued.append(cell)
        else:
            submit.append(cell)
    if submit:
        ex = executor(out / SLURM_DIR / "logs", options, job_name=f"benchmark-{profile}")
        with ex.batch():
            jobs = [ex.submit(CellJob(c.method, c.dataset, c.seed, profile, str(out),
                                      str(device) if device is not None else None, tracking_uri,
                                      tracking, str(weights) if weights else None,
                                      str(root) if root else None, init, options.max_requeue))
                    for c in submit]
        stamp = now()
        for cell, job in zip(submit, jobs):
            cell.job_id = str(job.job_id)
        _add_to_ledger(out, {
            cell_key(c.dataset, c.key, profile, c.seed): {
                "job_id": c.job_id, "submitted_at": stamp, "dataset": c.dataset,
                "method": c.key, "method_ref": c.method, "profile": profile, "seed": c.seed,
                "options": options.as_dict(),
            } for c in submit
        })
    result: dict[str, Any] = {
        "submitted": [{"cell": cell_key(c.dataset, c.key, profile, c.seed), "job_id": c.job_id}
                      for c in submit],
        "queued": [{"cell": cell_key(c.dataset, c.key, profile, c.seed), "job_id": c.job_id}
                   for c in queued],
        "skipped": [cell_key(c.dataset, c.key, profile, c.seed) for c in todo if c.record],
    }
    if not wait:
        return result
    waiting = {c.job_id: c for c in todo if c.record is None}
    _wait(waiting, profile, progress=progress, total=len(todo), poll_s=poll_s)
    result["records"] = [{"skipped": False, **c.record} for c in todo]
    return result


def _wait(waiting: dict[str, _Cell], profile: str, *, progress: bool, total: int,
          poll_s: float) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(waiting), desc="cells on Slurm", unit="cell",
               file=sys.stderr, disable=not progress)

    def ended(job_id: str, entry: QueueEntry | None) -> None:
        cell = waiting[job_id]
        cell.record = _record_after(cell, job_id, entry, profile)
        bar.update(1)
        if cell.record["status"] != FINISHED:
            tqdm.write(f"[{cell.key} {cell.dataset} {profile} seed{cell.seed}] job {job_id}: "
                       f"{cell.record['status']}: {cell.record['error']['message']}",
                       file=sys.stderr)

    def polled(entries: Mapping[str, QueueEntry]) -> None:
        states = [e.state for e in entries.values()]
        bar.set_postfix_str(f"{states.count('RUNNING')} running, "
                            f"{sum(s != 'RUNNING' for s in states)} queued")

    wait_for(list(waiting), ended, poll_s=poll_s, on_poll=polled)
    bar.close()


def _record_after(cell: _Cell, job_id: str, entry: QueueEntry | None,
                  profile: str) -> dict[str, Any]:
    """The cell's record once its job has ended: the one the job wrote, or a failed record saying
    that the job ended without one (its checkpoints stay: submitting again resumes)."""
    from benchmark.engine.runner import failed_setup_record

    path = record_path(cell.folder)
    record = read_record(path) if path.is_file() else None
    if record is not None and (record.get("launch") or {}).get("job_id") == job_id:
        return record
    if record is not None and record.get("status") == FINISHED:
        return record  # finished by another submission meanwhile
    state = entry.state if entry is not None else "gone from the queue"
    ended = SlurmJobEnded(
        f"Slurm job {job_id} ended ({state}) before the cell wrote its record: cancelled, "
        f"killed, out of memory or requeued too often; its log is under "
        f"{path.parents[4] / SLURM_DIR / 'logs' / job_id}. Its checkpoints are kept: "
        "the same command submits it again and it resumes")
    failed = failed_setup_record(cell.key, cell.dataset, cell.seed, profile, ended,
                                 launch={"launcher": "slurm", "job_id": job_id,
                                         "node": entry.node if entry else None})
    write_record(path, failed)
    return failed


def cell_status(out: Path) -> list[dict[str, Any]]:
    """Every cell under `out` that has a record or a Slurm job: its state (pending, running,
    finished, failed), Slurm job id and node, and the queue's own state and reason."""
    out = Path(out)
    ledger = read_ledger(out)
    try:
        in_queue = queue() if ledger else {}
        queue_note = None
    except Exception as exc:  # no Slurm here: records still tell the finished and failed cells
        in_queue, queue_note = {}, str(exc)
    keys: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob(f"*/*/*/seed*/{record_path(Path('.')).name}")):
        seed_dir = path.parent
        try:
            seed = int(seed_dir.name[len("seed"):])
        except ValueError:
            continue
        keys[cell_key(seed_dir.parents[2].name, seed_dir.parents[1].name,
                      seed_dir.parent.name, seed)] = {}
    for key in ledger:
        keys.setdefault(key, {})
    rows = []
    for key in sorted(keys):
        dataset, method, profile, seed_name = key.split("/")
        seed = int(seed_name[len("seed"):])
        job = ledger.get(key, {})
        job_id = job.get("job_id")
        entry = in_queue.get(job_id) if job_id else None
        path = record_path(cell_dir(out, dataset, method, profile, seed))
        try:
            record = read_record(path) if path.is_file() else None
        except RecordError as exc:
            record = {"status": FAILED, "error": {"type": "RecordError", "message": str(exc)}}
        launch = (record or {}).get("launch") or {}
        row = {"dataset": dataset, "method": method, "profile": profile, "seed": seed,
               "job_id": job_id, "slurm_state": entry.state if entry else None,
               "node": (entry.node if entry and entry.node else None) or launch.get("node"),
               "note": ""}
        if record is not None and record.get("status") == FINISHED:
            row["state"] = "finished"
        elif is_alive(entry):
            row["state"] = "running" if entry.state in ("RUNNING", "COMPLETING") else "pending"
            if row["state"] == "pending" and entry.reason not in ("", "None", "(null)"):
                row["note"] = f"waiting: {entry.reason}"
            if launch.get("restarts"):
                row["note"] = (row["note"] + "; " if row["note"] else "") + "requeued"
        elif record is not None:
            row["state"] = record.get("status") or "unknown"
            error = record.get("error") or {}
            if error:
                row["note"] = f"{error.get('type')}: {error.get('message', '')[:80]}"
        else:
            row["state"] = "failed"
            row["note"] = (f"job {job_id} left the queue without a record (cancelled or lost); "
                           "the same command submits it again")
        if launch.get("launcher") == "slurm" and launch.get("restarts"):
            row["requeues"] = launch["restarts"]
        rows.append(row)
    if queue_note and rows:
        rows[0]["note"] = (rows[0]["note"] + "; " if rows[0]["note"] else "") + queue_note
    return jsonable(rows)
