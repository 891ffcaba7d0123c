"""Slurm through submitit: what a job asks the cluster for, its requeue hook, and what the queue says.

Why it is built this way:
- submitit, not a scheduler of our own: it writes the sbatch script, pickles the call, and when
  Slurm signals a job before its time limit or a preemption (USR2, `--signal=USR2@90`) it calls the
  job's `checkpoint` and requeues it (`scontrol requeue`). The work itself keeps its own checkpoints
  (a cell's epoch checkpoints, a sweep's study in its database), so a requeued job resumes through
  the same path as a local crash.
- The queue is read with `squeue`, which every Slurm answers. `sacct` needs an accounting database
  that small clusters (and the tests' one-node cluster) often do not run. A job that is no longer
  in the queue has ended; whether it ended well is what its own output says (a cell's record).
- Requeues are capped (`max_requeue`, counted by Slurm's SLURM_RESTART_COUNT): a job preempted or
  timed out more often than that ends, and its cell is recorded failed, not requeued forever.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

# States in which a job is still queued, running or on its way back to the queue (squeue's %T).
ALIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
    "SPECIAL_EXIT", "POWER_UP_NODE",
})
DEFAULT_TIME_MIN = 24 * 60
DEFAULT_MAX_REQUEUE = 3
_SLURM_COMMANDS = ("sbatch", "squeue", "scancel")


class SlurmError(RuntimeError):
    """Slurm's commands are missing or answered with an error."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each job (one cell, or one sweep worker) asks for; None leaves the cluster's default."""

    partition: str | None = None
    gpus_per_cell: int | None = None
    cpus_per_cell: int | None = None
    mem: str | None = None  # Slurm's own syntax: 32G, 64000M
    time_min: int = DEFAULT_TIME_MIN
    max_parallel: int | None = None  # the array throttle: at most this many jobs run at once
    extra: dict[str, str | bool] = field(default_factory=dict)  # more `#SBATCH` lines
    max_requeue: int = DEFAULT_MAX_REQUEUE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_time(text: str) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes,
    rounded up, as submitit takes them."""
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError(f"--time {text!r}: expected minutes or Slurm's [D-]HH:MM:SS")
    days, a, b, c = (int(x) if x is not None else None for x in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # minutes
        seconds = a * 60
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise ValueError(f"--time {text!r}: must be at least one minute")
    return minutes


def parse_extra(items: Iterable[str] | None) -> dict[str, str | bool]:
    """`--slurm-extra KEY=VALUE` (repeatable) as sbatch options, KEY without its leading dashes; a
    bare KEY is a flag (e.g. `exclusive`, `hold`)."""
    extra: dict[str, str | bool] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ValueError(f"--slurm-extra {item!r}: expected KEY=VALUE or a bare flag, e.g. "
                             "account=myproject, constraint=a100 or exclusive")
        extra[key] = value.strip() if sep else True
    return extra


def require_slurm() -> None:
    missing = [c for c in _SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise SlurmError(f"--launcher slurm: {', '.join(missing)} not found on PATH; run this on a "
                         "machine with Slurm's client commands (a login node), or use --launcher "
                         "local")


def executor(folder: Path, options: SlurmOptions, job_name: str) -> submitit.SlurmExecutor:
    """A submitit executor whose jobs ask for `options`; each job's logs and pickles go to
    `folder/<job id>/`."""
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=options.max_requeue)
    params: dict[str, Any] = {"job_name": job_name, "time": options.time_min}
    if options.partition:
        params["partition"] = options.partition
    if options.cpus_per_cell:
        params["cpus_per_task"] = options.cpus_per_cell
    if options.gpus_per_cell:
        params["gpus_per_node"] = options.gpus_per_cell
    if options.max_parallel:
        params["array_parallelism"] = options.max_parallel
    extra = dict(options.extra)
    if options.mem:
        extra.setdefault("mem", options.mem)  # passed through in Slurm's syntax, not as GB
    if extra:
        params["additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


class RequeueLimitReached(RuntimeError):
    """Slurm signalled a job (time limit or preemption) that was already requeued `max_requeue`
    times: the work stops here instead of being requeued again."""


class RequeueCapped(submitit.helpers.Checkpointable):
    """A job Slurm may requeue (time limit, preemption) at most `max_requeue` times.

    The work keeps its own checkpoints, so the requeued call is the same call: it resumes. Past
    the cap, `checkpoint` raises `RequeueLimitReached` from submitit's signal handler, in the middle
    of the work: a cell records itself failed with that message (its checkpoints stay)."""

    max_requeue: int = DEFAULT_MAX_REQUEUE

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeue:
            raise RequeueLimitReached(
                f"Slurm signalled this job (time limit or preemption) after {restarts} "
                f"requeue(s), the cap (--max-requeue {self.max_requeue}); its checkpoints are "
                "kept: the same command submits it again and it resumes")
        return super().checkpoint(*args, **kwargs)


@dataclass(frozen=True)
class QueueEntry:
    state: str  # squeue's %T, e.g. PENDING, RUNNING
    node: str
    reason: str


def queue() -> dict[str, QueueEntry]:
    """Every job in the queue by id, array tasks one per line as `<array id>_<task>`."""
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T|%N|%r"],
                              capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError("squeue not found on PATH: Slurm's client commands are needed") from None
    except subprocess.TimeoutExpired:
        raise SlurmError("squeue did not answer within 120 s") from None
    if done.returncode != 0:
        raise SlurmError(f"squeue failed: {done.stderr.strip() or done.returncode}")
    entries = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            entries[parts[0]] = QueueEntry(parts[1], parts[2], parts[3])
    return entries


def is_alive(entry: QueueEntry | None) -> bool:
    return entry is not None and entry.state in ALIVE


def wait_for(
    job_ids: Iterable[str],
    on_end: Callable[[str, QueueEntry | None], None],
    *,
    poll_s: float = 10.0,
    on_poll: Callable[[Mapping[str, QueueEntry]], None] | None = None,
) -> None:
    """Poll the queue until every job has left it (or reached a final state); call `on_end` once per
    job as it ends, with its last queue entry (None when it had already left)."""
    waiting = set(job_ids)
    last: dict[str, QueueEntry] = {}
    while waiting:
        entries = queue()
        for job_id in sorted(waiting):
            entry = entries.get(job_id)
            if entry is not None:
                last[job_id] = entry
            if not is_alive(entry):
                waiting.discard(job_id)
                on_end(job_id, entry or last.get(job_id))
        if on_poll is not None:
            on_poll({j: entries[j] for j in waiting if j in entries})
        if waiting:
            time.sleep(poll_s)
