"""`--precision`: bf16 autocast and channels_last reach training and feature extraction, never the
metric code; fp32 one-process runs keep the numbers and hashes they always had."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.engine.contract import EpochMethod, run_epochs
from benchmark.engine.precision import resolve_precision
from benchmark.engine.profiles import get_profile
from benchmark.engine.run_identity import config_hash, execution_identity, record_execution
from benchmark.engine.runner import HistorySink, make_context

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("requested,device,profile,expected", [
    ("auto", "cuda", "paper", "bf16"), (None, "cuda", "paper", "bf16"),
    ("auto", "cuda", "quick", "fp32"), ("auto", "cuda", "ci", "fp32"),
    ("auto", "cpu", "paper", "fp32"), ("fp32", "cuda", "paper", "fp32"),
    ("bf16", "cpu", "ci", "bf16"),
])
def test_auto_is_bf16_only_for_the_paper_profile_on_cuda(requested, device, profile, expected):
    assert resolve_precision(requested, torch.device(device), profile) == expected


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="--precision 'fp16'"):
        resolve_precision("fp16", torch.device("cpu"), "ci")


def test_the_config_hash_moves_only_for_bf16_or_several_processes():
    config, profile = {"lr": 0.1, "epochs": 2}, get_profile("ci").as_dict()
    plain = config_hash(config, profile)
    assert config_hash(config, profile, execution_identity("fp32", 1)) == plain
    assert config_hash(config, profile, execution_identity("bf16", 1)) != plain
    assert config_hash(config, profile, execution_identity("fp32", 2)) != plain
    # a record's execution, as comparability recomputes it (older records: one fp32 process)
    assert record_execution({}) == {}
    assert record_execution({"precision": {"mode": "bf16"},
                             "distributed": {"world_size": 4}}) == {"precision": "bf16",
                                                                    "world_size": 4}


class _Probe(EpochMethod):
    """Records, per epoch, whether autocast was on and the conv weight's layout."""

    key = "precision-probe"
    tasks = ("clustering",)
    defaults = {"epochs": 2}

    def setup(self, view, config, ctx):
        self.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
        self.seen: list[tuple[bool, bool, torch.dtype]] = []

    def train_epoch(self, epoch):
        out = self.model(torch.randn(2, 3, 5, 5))
        weight = self.model[0].weight
        self.seen.append((torch.is_autocast_enabled("cpu"),
                          weight.is_contiguous(memory_format=torch.channels_last), out.dtype))
        return {}

    def state_dict(self):
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])

    def encoder(self):
        return self.model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_epoch_trains_under_the_runs_precision(tmp_path, precision):
    ctx = make_context(device=torch.device("cpu"), seed=0, profile=get_profile("ci"),
                       dataset="digits", task="clustering", checkpoint_dir=tmp_path,
                       sink=HistorySink(log=None), precision=precision)
    method = _Probe()
    run_epochs(method, None, {"epochs": 2}, ctx)
    bf16 = precision == "bf16"
    assert method.seen == [(bf16, bf16, torch.bfloat16 if bf16 else torch.float32)] * 2
    assert not torch.is_autocast_enabled("cpu")  # nothing leaks past the epoch


def test_bf16_evaluation_hands_float32_features_to_the_metric_code(monkeypatch):
    from benchmark.data.registry import load_dataset
    from benchmark.engine.evaluate import evaluate_encoder
    from benchmark.evaluation import reid

    seen = []
    real = reid.evaluate_reid_features

    def spy(q, g, *args, **kwargs):
        seen.append((q.dtype, g.dtype, torch.is_autocast_enabled("cpu")))
        return real(q, g, *args, **kwargs)

    monkeypatch.setattr(reid, "evaluate_reid_features", spy)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    encoder.to(memory_format=torch.channels_last)
    metrics, protocol = evaluate_encoder(encoder, load_dataset("synthetic-reid"),
                                         profile=get_profile("ci"), device=torch.device("cpu"),
                                         seed=0, precision="bf16")
    assert seen == [(torch.float32, torch.float32, False)]
    assert 0.0 <= metrics["mAP"] <= 1.0 and "bf16 autocast" in protocol["features"]


def _reference(method: str, dataset: str, metric: str) -> tuple[float, float]:
    cells = tomllib.loads((ROOT / "leaderboards/reference/ci.toml").read_text())["cell"]
    cell = next(c for c in cells if (c["method"], c["dataset"], c["metric"]) == (method, dataset,
                                                                                 metric))
    return float(cell["value"]), float(cell["tolerance"])


@pytest.mark.slow
def test_a_bf16_ci_cell_records_its_precision_and_stays_near_fp32(tmp_path, synthetic_reid_generated):
    command = [sys.executable, "-m", "benchmark", "run", "--method", "cluster-contrast",
               "--dataset", "synthetic-reid", "--profile", "ci", "--out", str(tmp_path),
               "--no-tracking", "--precision", "bf16", "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)
    assert record["precision"]["mode"] == "bf16" and record["precision"]["channels_last"]
    assert record["precision"]["tf32_matmul"] is False  # a deterministic run keeps TF32 off
    assert any(d.startswith("Trained under bf16 autocast") for d in record["deviations"])
    fp32, tolerance = _reference("cluster-contrast", "synthetic-reid", "mAP")
    # bf16 keeps 8 mantissa bits: the same recipe, within the ci reference's own tolerance
    assert abs(record["metrics"]["mAP"] - fp32) <= tolerance
