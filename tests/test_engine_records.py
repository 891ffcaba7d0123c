"""Records are written atomically and read back with clear errors; seeding is what it claims."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch

from benchmark.engine import records
from benchmark.engine.records import (
    RecordError,
    cell_dir,
    is_finished,
    jsonable,
    read_record,
    record_path,
    write_record,
)
from benchmark.engine.seeding import (
    collect_nondeterministic_ops,
    seed_everything,
    silent_nondeterministic_modules,
)
from benchmark.engine.tracking import flatten, record_metrics


def test_cell_layout(tmp_path):
    assert cell_dir(tmp_path, "digits", "raw-pixels", "quick", 2) == (
        tmp_path / "digits" / "raw-pixels" / "quick" / "seed2"
    )


def test_jsonable_turns_arrays_scalars_and_nan_into_json():
    value = {
        "a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor([1.5, 2.0]), "d": (1, 2),
        "e": float("nan"), "f": np.int64(7), "g": {3: math.inf},
    }
    out = jsonable(value)
    assert out == {"a": 0.5, "b": [0, 1, 2], "c": [1.5, 2.0], "d": [1, 2], "e": None, "f": 7,
                   "g": {"3": None}}
    json.dumps(out, allow_nan=False)  # strict JSON


def test_write_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "cell" / "record.json"
    write_record(path, {"status": "finished", "metrics": {"mAP": 0.25}})
    assert read_record(path)["metrics"] == {"mAP": 0.25}

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_record(path, {"status": "failed"})
    # the old record is intact and no temporary file is left behind
    assert read_record(path)["status"] == "finished"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_read_record_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "record.json"
    with pytest.raises(RecordError, match=str(missing)):
        read_record(missing)
    bad = tmp_path / "record.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_record(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(RecordError, match="no 'status'"):
        read_record(bad)
    assert not is_finished(tmp_path)
    write_record(record_path(tmp_path), {"status": "failed"})
    assert not is_finished(tmp_path)
    write_record(record_path(tmp_path), {"status": "finished"})
    assert is_finished(tmp_path)


def test_environment_names_commit_packages_and_device():
    env = records.environment(torch.device("cpu"))
    assert env["device"] == "cpu"
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"]
    assert env["packages"]["numpy"] == np.__version__
    assert "python" in env["packages"] and env["cpu"]
    assert env["commit"] is None or len(env["commit"]) == 40
    assert env["dirty"] in (True, False, None)


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_seed_everything_drives_python_numpy_and_torch():
    desc = seed_everything(5)
    first = _draws()
    seed_everything(5)
    assert _draws() == first
    seed_everything(6)
    assert _draws() != first
    assert desc["seed"] == 5 and desc["deterministic_algorithms"] is True
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


@pytest.mark.filterwarnings("ignore:put_ does not have")
def test_ops_without_deterministic_kernel_are_collected():
    seed_everything(0)
    with collect_nondeterministic_ops() as found:
        # put_ without accumulate has no deterministic implementation on any device: torch warns
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]), accumulate=False)
    assert any("put_" in op for op in found), found


def test_silent_nondeterministic_modules_are_found_in_the_encoder():
    from torchvision.ops import DeformConv2d

    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    assert silent_nondeterministic_modules(plain) == []
    deform = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), DeformConv2d(4, 4, 3))
    assert silent_nondeterministic_modules(deform) == ["torchvision.ops.deform_conv2d backward"]


def test_flatten_and_metrics_of_a_record():
    assert flatten({"a": 1, "b": {"c": [1, 2], "d": "x"}}) == {"a": "1", "b.c": "[1, 2]", "b.d": "x"}
    rec = {
        "history": [
            {"epoch": 0, "loss": 2.0, "pseudo_labels": {"precision": 0.5}},
            {"epoch": 1, "loss": 1.0, "pseudo_labels": {"precision": 0.75}},
        ],
        "metrics": {"mAP": 0.3, "cmc": [0.4, 0.6]},
        "wall_time_s": 3.0,
    }
    got = sorted(record_metrics(rec))
    assert got == sorted([
        ("epoch/loss", 2.0, 0), ("epoch/loss", 1.0, 1), ("pseudo_labels/precision", 0.5, 0),
        ("pseudo_labels/precision", 0.75, 1), ("mAP", 0.3, 0), ("cmc", 0.4, 1), ("cmc", 0.6, 2),
        ("wall_time_s", 3.0, 0),
    ])
