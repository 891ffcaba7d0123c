"""A disk that fills up: first during a checkpoint write, then during the record write, on a small
tmpfs mounted as --out. The previous checkpoint and record survive whole, the error says the disk
is full, and once space is freed the same command resumes to the numbers of an uninterrupted run.

Needs root (CI runs as root) to mount the tmpfs; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CELL = ("synthetic-reid", "cluster-contrast", "ci", "seed0")
PAGE = 4096


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _run(out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BENCHMARK_FAILPOINT"}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "--method", "cluster-contrast", "--dataset",
         "synthetic-reid", "--profile", "ci", "--out", str(out), "--no-tracking"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _mount(folder: Path, size: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True,
                   capture_output=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path):
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        _mount(folder, 64 * PAGE)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


@pytest.mark.slow
def test_a_full_disk_loses_nothing_and_the_rerun_resumes(tmp_path, tmpfs, fault_table,
                                                         synthetic_reid_generated):
    reference = tmp_path / "reference"
    assert _run(reference).returncode == 0
    cell_ref = reference.joinpath(*CELL)
    c0, c1 = (_pages((cell_ref / "checkpoints" / f"epoch-000{e}.pt").stat().st_size)
              for e in (0, 1))
    finished = json.loads((cell_ref / "record.json").read_text())
    record_size = _pages((cell_ref / "record.json").stat().st_size)
    cell = tmpfs.joinpath(*CELL)

    # 1. full during the second checkpoint: the first survives, the error says so
    _mount(tmpfs, c0 + 4 * PAGE + c1 // 2, remount=True)
    first = _run(tmpfs)
    assert first.returncode == 1
    failed = json.loads((cell / "record.json").read_text())
    assert failed["status"] == "failed" and "no space left" in failed["error"]["message"]
    assert sorted(p.name for p in (cell / "checkpoints").glob("epoch-*")) == [
        "epoch-0000.pt", "epoch-0000.pt.sha256"]
    state = torch.load(cell / "checkpoints" / "epoch-0000.pt", weights_only=True)
    assert state["epoch"] == 0

    # 2. room for both checkpoints, not for the new record: the failed record stays whole
    old_record = (cell / "record.json").read_bytes()
    import shutil

    used = shutil.disk_usage(tmpfs).used  # the first checkpoint, its digest, the failed record
    _mount(tmpfs, _pages(used + c1 + PAGE + record_size // 2), remount=True)
    second = _run(tmpfs)
    assert second.returncode == 1 and "cannot write the record" in second.stderr
    assert "full" in second.stderr and "Traceback" not in second.stderr
    assert (cell / "record.json").read_bytes() == old_record
    assert (cell / "checkpoints" / "epoch-0001.pt").is_file()

    # 3. space freed: the same command resumes and ends where an uninterrupted run does
    _mount(tmpfs, 4096 * PAGE, remount=True)
    third = _run(tmpfs)
    assert third.returncode == 0, third.stderr[-2000:]
    record = json.loads((cell / "record.json").read_text())
    survived = record["metrics"] == finished["metrics"]
    fault_table.append({"fault": "disk full (checkpoint, then record)", "trials": 2,
                        "survived": 2 * int(survived), "lost": 0 if survived else 1})
    assert record["metrics"] == finished["metrics"] and record["history"] == finished["history"]
