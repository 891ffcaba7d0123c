"""The result record: one JSON file per cell, the single source the leaderboard and `check` read.

Integrity rule 3 of DESIGN.md: every number carries its provenance, so the record holds, beside the
metrics, the seed, profile, resolved config, the adapter's deviations, the dataset's facts (synthetic,
withdrawn), the evaluation protocol, the environment (commit, dirty tree, package versions, device)
and how the run was seeded. It is written atomically (temporary file, then `os.replace`) so that a
reader never sees half a record, and a killed run leaves either the old record or none.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.engine import failpoints
from benchmark.paths import REPO_ROOT

SCHEMA_VERSION = 2  # 2: config_hash, init, paper_run; environment.diff_sha256
RECORD_NAME = "record.json"
FINISHED, FAILED = "finished", "failed"
PACKAGES = (
    "torch", "torchvision", "numpy", "scipy", "scikit-learn", "faiss-cpu", "faiss-gpu",
    "faiss-gpu-cu12", "pandas",
    "pillow", "mlflow", "optuna", "timm",
)


def cell_dir(out: str | os.PathLike[str], dataset: str, method: str, profile: str, seed: int) -> Path:
    """`<out>/<dataset>/<method>/<profile>/seed<seed>`: the record and the checkpoints of a cell."""
    return Path(out) / dataset / method / profile / f"seed{seed}"


def record_path(folder: Path) -> Path:
    return Path(folder) / RECORD_NAME


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy/torch scalars and arrays become numbers and lists, paths become
    strings, tuples lists, and non-finite floats None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_record(path: Path, record: Mapping[str, Any]) -> Path:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: a shared results folder is read
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        failpoints.reached(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create `folder` if needed and prove a file can be written there, before any work; a
    ValueError naming the option otherwise (a read-only folder, or a file in the way)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


class RecordError(ValueError):
    """A record file that cannot be read; the message names the file."""


def read_record(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: no result record") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc}); a cut-off write leaves this: rerun "
                          "the cell with --force, or delete the file") from None
    if not isinstance(record, dict) or "status" not in record:
        raise RecordError(f"{path}: not a result record (no 'status')")
    return record


def is_finished(folder: Path) -> bool:
    path = record_path(folder)
    if not path.is_file():
        return False
    try:
        return read_record(path).get("status") == FINISHED
    except RecordError:
        return False


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- environment ----------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """Commit of the harness's checkout and whether it differs from it (untracked files count)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    state: dict[str, Any] = {"commit": commit, "dirty": bool(status) if status is not None else None}
    if status:  # which changes: two dirty runs of one commit pool only with the same diff
        diff = _git("diff", "HEAD", "--binary") or ""
        state["diff_sha256"] = hashlib.sha256((status + "\n" + diff).encode()).hexdigest()
    return state


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _faiss_build() -> dict[str, Any] | None:
    try:
        from methods.common.faiss_index import build
    except ImportError:
        return None
    return build()


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        **git_state(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "executable": sys.executable,
        "faiss": _faiss_build(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        env["gpu"] = torch.cuda.get_device_name(index)
        env["gpu_capability"] = list(torch.cuda.get_device_capability(index))
    return env


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive POSIX record lock (`lockf`, which NFS v4 and Lustre honour) on `path`, for
    writers in several processes or on several nodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def launch_facts() -> dict[str, Any]:
    """Where this process runs, for the record: the launcher, and under Slurm the job id (as squeue
    and submitit name it), node, partition, GPUs and how often the job was requeued."""
    env = os.environ
    gpus = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or env.get("CUDA_VISIBLE_DEVICES")
    if not env.get("SLURM_JOB_ID"):
        return {"launcher": "local", "node": platform.node(), "gpus": gpus}
    array = env.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env["SLURM_JOB_ID"]
    return {
        "launcher": "slurm",
        "job_id": job_id,
        "slurm_job_id": env["SLURM_JOB_ID"],
        "node": env.get("SLURMD_NODENAME") or platform.node(),
        "partition": env.get("SLURM_JOB_PARTITION"),
        "gpus": gpus,
        "cpus": env.get("SLURM_CPUS_PER_TASK") or env.get("SLURM_CPUS_ON_NODE"),
        "restarts": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        "cluster": env.get("SLURM_CLUSTER_NAME"),
    }
