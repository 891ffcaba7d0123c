"""Data-parallel training (DDP through torchrun) on CPU with gloo: the helpers against what one
process computes, and a whole ci cell with two processes against one process and against itself
after one rank is killed.

What legitimately differs between one and two processes (benchmark.engine.distributed): BatchNorm
statistics over each process's half of a batch, gradient sums in another order, and each rank's own
augmentation draws. Epoch 0's pseudo labels cannot differ (the features are extracted batch for
batch as one process does, before any training step); the final metrics may, within
MULTI_PROCESS_TOLERANCE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark.engine import distributed
from benchmark.engine.distributed import RankSlices, World

ROOT = Path(__file__).resolve().parents[1]
DDP_METHODS = ("cluster-contrast", "buc")  # the adapters that declare supports_distributed
# mAP / rank-1 of a 2-process ci cell against 1 process, absolute: the ci reference's tolerance
# for this cell (leaderboards/reference/ci.toml), since BatchNorm over half-batches is the kind of
# change that reference must absorb.
MULTI_PROCESS_TOLERANCE = 0.02


# -- the helpers, one rank at a time ------------------------------------------------------------
def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, size: int) -> None:
    monkeypatch.setattr(distributed, "world", lambda: World(rank, size, rank, "gloo"))


def test_rank_slices_partition_every_global_batch(monkeypatch):
    batches = [list(range(b * 8, b * 8 + 8)) for b in range(3)]
    parts = []
    for rank in range(4):
        _as_rank(monkeypatch, rank, 4)
        parts.append(list(RankSlices(batches)))
    for b, batch in enumerate(batches):
        assert sum((parts[r][b] for r in range(4)), []) == batch  # rank order = batch order
        assert all(len(parts[r][b]) == 2 for r in range(4))


def test_rank_slices_refuse_a_batch_the_world_cannot_split(monkeypatch):
    _as_rank(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match="multiple of the world size"):
        list(RankSlices([list(range(8))]))


@pytest.mark.parametrize("total,batch,size", [(10, 4, 2), (1000, 256, 4), (3, 256, 2), (17, 1, 3)])
def test_extraction_shards_are_whole_batches_covering_every_item(monkeypatch, total, batch, size):
    shards = []
    for rank in range(size):
        _as_rank(monkeypatch, rank, size)
        shards.append(distributed.shard_of_batches(total, batch))
    covered = [i for start, stop in shards for i in range(start, stop)]
    assert covered == list(range(total))
    assert all(start % batch == 0 for start, _ in shards)


def test_rank_seeds_differ_per_rank_and_rank_0_keeps_the_seed(monkeypatch):
    seeds = []
    for rank in range(3):
        _as_rank(monkeypatch, rank, 3)
        seeds.append(distributed.rank_seed(12345))
    assert seeds[0] == 12345 and len(set(seeds)) == 3


def test_outside_a_group_the_helpers_are_the_identity():
    assert not distributed.world().active
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t) is t
    assert distributed.on_main(lambda: 7) == 7
    model = torch.nn.Linear(2, 2)
    assert distributed.data_parallel(model, torch.device("cpu")) is model


# -- the collectives, with a real 2-process gloo group --------------------------------------------
def _collectives(rank: int, size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    rows = torch.full((rank + 1, 3), float(rank))  # ranks hold different numbers of rows
    gathered = distributed.gather_rows(rows)
    # a rank with no rows (e.g. no extraction batch of its own) need not know their width
    one_sided = distributed.gather_rows(torch.ones(2, 3) if rank == 0 else torch.empty(0, 0))
    decided = distributed.on_main(lambda: np.arange(5) * 10 if rank == 0 else None)
    buffers = torch.nn.BatchNorm1d(2)
    buffers.running_mean.fill_(float(rank + 1))
    distributed.sync_buffers(buffers)
    torch.save({"gathered": gathered, "one_sided": one_sided, "decided": torch.from_numpy(decided),
                "running_mean": buffers.running_mean.clone()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_gather_broadcast_and_buffer_sync_across_two_processes(tmp_path):
    mp.spawn(_collectives, args=(2, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    expected = torch.cat([torch.zeros(1, 3), torch.ones(2, 3)])
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=True)
        assert torch.equal(got["gathered"], expected)
        assert torch.equal(got["one_sided"], torch.ones(2, 3))
        assert got["decided"].tolist() == [0, 10, 20, 30, 40]
        assert torch.equal(got["running_mean"], torch.ones(2))  # rank 0's statistics everywhere


# -- the CLI ---------------------------------------------------------------------------------------
def _run(out: Path, *extra: str, method: str = "cluster-contrast", env: dict | None = None,
         timeout: int = 600):
    command = [sys.executable, "-m", "benchmark", "run", "--method", method,
               "--dataset", "synthetic-reid", "--profile", "ci", "--out", str(out),
               "--no-tracking", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_gpus_without_cuda_is_refused_unless_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _run(tmp_path, "--gpus", "2")
    assert done.returncode == 2
    assert "--gpus 2: this machine has 0 CUDA GPU(s)" in done.stderr


def _cell(out: Path, method: str = "cluster-contrast") -> Path:
    return out / "synthetic-reid" / method / "ci" / "seed0"


def _record(out: Path, method: str = "cluster-contrast") -> dict:
    return json.loads((_cell(out, method) / "record.json").read_text())


def _epoch0_labels(out: Path, method: str) -> np.ndarray:
    state = torch.load(_cell(out, method) / "checkpoints" / "epoch-0000.pt", weights_only=True)
    return state["sink"]["pseudo"]["0"].numpy()


_TRAINED: dict[tuple[str, int], Path] = {}


def _trained(method: str, processes: int, tmp_path_factory) -> Path:
    """The ci cell of `method` trained by 1 or 2 (gloo) processes, once per test session."""
    if (method, processes) not in _TRAINED:
        out = tmp_path_factory.mktemp(f"{method}-{processes}")
        extra = ("--gpus", str(processes), "--device", "cpu") if processes > 1 else ()
        done = _run(out, *extra, method=method)
        assert done.returncode == 0, done.stderr[-3000:]
        _TRAINED[(method, processes)] = out
    return _TRAINED[(method, processes)]


@pytest.fixture
def two(tmp_path_factory, synthetic_reid_generated) -> Path:
    return _trained("cluster-contrast", 2, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("method", DDP_METHODS)
def test_two_processes_match_one_process(method, tmp_path_factory, synthetic_reid_generated):
    one = _trained(method, 1, tmp_path_factory)
    two = _trained(method, 2, tmp_path_factory)
    r1, r2 = _record(one, method), _record(two, method)
    batch = r1["config"]["batch_size"]
    assert r2["distributed"]["world_size"] == 2 and r2["distributed"]["backend"] == "gloo"
    assert r2["distributed"]["global_batch"] == batch
    assert r2["distributed"]["per_process_batch"] == batch // 2
    assert r1["distributed"]["world_size"] == 1
    # the same recipe, but not the same run: the hashes keep them apart when seeds are pooled
    assert r1["config"] == r2["config"] and r1["config_hash"] != r2["config_hash"]
    assert [d for d in r2["deviations"] if d not in r1["deviations"]] == [
        d for d in r2["deviations"] if "Trained with 2 processes (DDP)" in d]
    assert len(r2["deviations"]) == len(r1["deviations"]) + 1
    np.testing.assert_array_equal(_epoch0_labels(one, method), _epoch0_labels(two, method))
    for name in ("mAP", "R1"):
        assert abs(r1["metrics"][name] - r2["metrics"][name]) <= MULTI_PROCESS_TOLERANCE, name
    # the halves trained: two processes are not one process run twice over the same images
    assert r1["history"][1]["loss"] != r2["history"][1]["loss"]


@pytest.mark.slow
def test_sharded_evaluation_is_exact(tmp_path_factory, synthetic_reid_generated):
    """direct-transfer trains nothing: two processes must give one process's metrics exactly,
    since each query / gallery batch is embedded as one process embeds it and gathered in order
    (the gallery's 5 batches of 256 split 2 + 3 over the ranks)."""
    one = _trained("direct-transfer", 1, tmp_path_factory)
    two = _trained("direct-transfer", 2, tmp_path_factory)
    r1, r2 = _record(one, "direct-transfer"), _record(two, "direct-transfer")
    assert r2["distributed"]["world_size"] == 2
    assert r1["metrics"] == r2["metrics"]


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_uninterrupted_numbers(two, tmp_path):
    killed = _run(tmp_path, "--gpus", "2", "--device", "cpu",
                  env={"BENCHMARK_FAILPOINT": "epoch:2", "BENCHMARK_FAILPOINT_RANK": "1"})
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr  # rank 1 died after epoch 1's training
    checkpoints = sorted(p.name for p in (_cell(tmp_path) / "checkpoints").glob("epoch-*.pt"))
    assert checkpoints == ["epoch-0000.pt"]
    resumed = _run(tmp_path, "--gpus", "2", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record, uninterrupted = _record(tmp_path), _record(two)
    assert record["status"] == "finished" and record["resumed_from_epoch"] == 0
    assert record["metrics"] == uninterrupted["metrics"]
    assert [h["loss"] for h in record["history"]] == [h["loss"] for h in uninterrupted["history"]]


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_is_refused(two, tmp_path):
    import shutil

    shutil.copytree(_cell(two) / "checkpoints", _cell(tmp_path) / "checkpoints")
    (_cell(tmp_path) / "checkpoints" / "epoch-0001.pt").unlink()
    done = _run(tmp_path)
    record = _record(tmp_path)
    assert done.returncode == 1 and record["status"] == "failed"
    assert "written by 2 processes" in record["error"]["message"]


def test_a_method_without_ddp_support_is_refused_under_torchrun(monkeypatch, tmp_path):
    from benchmark.engine import runner

    monkeypatch.setattr(distributed, "world", lambda: World(0, 2, 0, "gloo"))
    with pytest.raises(ValueError, match="method gcl-scl does not run under torchrun yet") as err:
        runner.run_cell("gcl-scl", "synthetic-reid", 0, "ci", tmp_path, "cpu", tracking=False)
    assert "methods that do: buc, cluster-contrast, direct-transfer, raw-pixels" in str(err.value)
    assert not (tmp_path / "synthetic-reid").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="batch_size 32 .* cannot be split over 3 processes"):
        monkeypatch.setattr(distributed, "world", lambda: World(0, 3, 0, "gloo"))
        runner.run_cell("cluster-contrast", "synthetic-reid", 0, "ci", tmp_path, "cpu",
                        tracking=False)
