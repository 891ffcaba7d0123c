"""Corrupt files on disk are named, never a raw traceback: here a symlink loop inside a split folder
(`datasets verify --json` still prints its report; `run` fails before training, naming the path).
The other corrupt-file cases live beside the code they exercise and add their rows to the fault
table: an undecodable image (tests/test_verify_cli.py), a damaged checkpoint
(tests/test_checkpoints.py), a truncated record (tests/test_input_validation.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from miniature_reid import write_market1501

from benchmark.data.cards import get_card
from benchmark.engine.runner import run_cell

REPO = Path(__file__).resolve().parents[2]


def test_a_symlink_loop_in_a_split_folder_is_named(tmp_path, fault_table, monkeypatch):
    built = write_market1501(tmp_path / "root")
    loop = built.location / "bounding_box_train" / "0003_c2s1_009999_00.jpg"
    os.symlink(loop, loop)  # points at itself
    done = subprocess.run(
        [sys.executable, "-m", "benchmark", "datasets", "verify", "market1501", "--root",
         str(tmp_path / "root"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not report["ok"]
    assert str(loop) in report["problems"][0]["message"]

    monkeypatch.setattr("benchmark.data.registry.get_card",
                        lambda name: built.card(name) if name == "market1501" else get_card(name))
    record = run_cell("engine_probes:LabelSnoop", "market1501", 0, "ci", tmp_path / "out", "cpu",
                      tracking=False, log=None, root=tmp_path / "root")
    named = record["status"] == "failed" and str(loop) in record["error"]["message"]
    fault_table.append({"fault": "corrupt file: symlink loop in a split", "trials": 2,
                        "survived": 1 + int(named), "lost": 0})
    assert named, record.get("error")
