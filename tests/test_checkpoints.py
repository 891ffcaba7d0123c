"""Checkpoints survive damage: each carries its sha256, the last two are kept, and a corrupt latest
one is moved aside with a warning naming it while the run resumes from the one before, to the same
numbers as an uninterrupted run."""

from __future__ import annotations

import pytest

from benchmark.engine.records import FAILED, FINISHED, cell_dir
from benchmark.engine.runner import run_cell

PROBE = "engine_probes:ProbeMethod"


def _run(out, **params):
    return run_cell(PROBE, "digits", 0, "ci", out, "cpu", tracking=False, log=None,
                    params={"epochs": 4, **params})


def _cut(tmp_path):
    """A cell that failed in epoch 2, after the checkpoints of epochs 0 and 1."""
    cut = _run(tmp_path / "cut", fail_at_epoch=2)
    assert cut["status"] == FAILED
    folder = cell_dir(tmp_path / "cut", "digits", "engine-probe", "ci", 0) / "checkpoints"
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("epoch-"))
    assert names == ["epoch-0000.pt", "epoch-0000.pt.sha256", "epoch-0001.pt",
                     "epoch-0001.pt.sha256"]
    return folder


@pytest.mark.parametrize("damage", ["flipped", "truncated", "truncated-no-digest"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, damage, fault_table):
    full = _run(tmp_path / "full")
    folder = _cut(tmp_path)
    latest = folder / "epoch-0001.pt"
    data = bytearray(latest.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
        latest.write_bytes(bytes(data))
    else:
        latest.write_bytes(bytes(data[: len(data) // 3]))
        if damage == "truncated-no-digest":
            (folder / "epoch-0001.pt.sha256").unlink()
    with pytest.warns(RuntimeWarning, match=r"epoch-0001\.pt .*moved aside"):
        again = _run(tmp_path / "cut")
    survived = again["status"] == FINISHED and again["metrics"] == full["metrics"]
    fault_table.append({"fault": f"corrupt file: checkpoint ({damage})", "trials": 1,
                        "survived": int(survived), "lost": int(not survived)})
    assert again["status"] == FINISHED
    assert again["metrics"] == full["metrics"]
    assert (folder / "epoch-0001.pt.corrupt").is_file()
    assert sorted(p.name for p in folder.glob("epoch-*.pt")) == ["epoch-0002.pt", "epoch-0003.pt"]


def test_every_checkpoint_corrupt_starts_over_to_the_same_numbers(tmp_path):
    full = _run(tmp_path / "full")
    folder = _cut(tmp_path)
    for path in folder.glob("epoch-*.pt"):
        path.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning):
        again = _run(tmp_path / "cut")
    assert again["status"] == FINISHED and again["metrics"] == full["metrics"]
