"""What a record says ran is what the leaderboard pools and compares on, so each fact is checked
against an independent computation: hashes against hashlib on the file and on a canonical JSON
written here, the init key against the file's content and place, the paper-config difference
against the adapter's declared defaults."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from benchmark.engine import run_identity
from benchmark.engine.contract import RunContext, run_epochs
from benchmark.engine.profiles import get_profile
from benchmark.engine.run_identity import (
    IMAGENET_V1,
    config_hash,
    init_from_checkpoint,
    init_from_weights_file,
    paper_config_diff,
)
from benchmark.engine.runner import profile_init, run_cell
from engine_probes import ProbeMethod


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_hash_is_the_content_not_the_order() -> None:
    profile = {"name": "ci", "backbone": "resnet-tiny"}
    expected = hashlib.sha256(json.dumps({"config": {"a": 1, "b": [1, 2]}, "profile": profile},
                                         sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config_hash({"b": [1, 2], "a": 1}, profile) == expected
    assert config_hash({"a": 1, "b": [1, 3]}, profile) != expected
    assert config_hash({"a": 1, "b": [1, 2]}, {**profile, "backbone": "resnet50"}) != expected


def test_weights_files_are_named_by_their_content(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "resnet50-0676ba61.pth"  # the name alone proves nothing
    weights.write_bytes(b"not the torchvision file")
    init = init_from_weights_file(weights)
    assert init["key"] == "file" and init["sha256"] == sha256(weights)
    # torchvision's file names carry the first 8 hex digits of the file's sha256
    monkeypatch.setitem(run_identity.TORCHVISION_RESNET50, sha256(weights)[:8], IMAGENET_V1)
    assert init_from_weights_file(weights)["key"] == IMAGENET_V1


def test_another_cells_checkpoint_is_named_by_its_cell(tmp_path: Path) -> None:
    ckpt = tmp_path / "out" / "cifar10" / "similarity-guidance" / "paper" / "seed2" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "epoch-0004.pt").write_bytes(b"weights")
    init = init_from_checkpoint(ckpt / "epoch-0004.pt")
    assert init["key"] == "checkpoint:cifar10/similarity-guidance/paper"
    assert init["sha256"] == sha256(ckpt / "epoch-0004.pt")
    (tmp_path / "loose.pt").write_bytes(b"weights")
    assert init_from_checkpoint(tmp_path / "loose.pt")["key"] == "file"


def test_paper_config_difference_names_both_values() -> None:
    assert paper_config_diff({"lr": 0.1, "epochs": 60}, {"lr": 0.1, "epochs": 60}) == {}
    assert paper_config_diff({"lr": 0.1, "epochs": 1, "extra": True}, {"lr": 0.1, "epochs": 60}) == {
        "epochs": {"paper": 60, "run": 1}, "extra": {"paper": None, "run": True}}


def test_profile_init(tmp_path: Path, monkeypatch) -> None:
    ci = get_profile("ci")
    assert profile_init(ProbeMethod, ci, None, "clustering")["key"] == "random"
    assert profile_init(ProbeMethod, ci, None, "reid", random_init=True)["key"] == "random"
    standin = profile_init(ProbeMethod, ci, None, "reid")
    assert standin["key"] == "standin:ci" and standin["sha256"] == sha256(Path(standin["file"]))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"imagenet, say")
    monkeypatch.setitem(run_identity.TORCHVISION_RESNET50, sha256(weights)[:8], IMAGENET_V1)
    init = profile_init(ProbeMethod, get_profile("paper"), weights)
    assert init == {"key": IMAGENET_V1, "file": str(weights), "sha256": sha256(weights),
                    "description": "ImageNet ResNet-50 (torchvision IMAGENET1K_V1)"}


def test_a_run_record_says_what_ran(tmp_path: Path) -> None:
    fast = {"epochs": 2, "steps": 1, "batch": 16}
    record = run_cell("engine_probes:ProbeMethod", "digits", 0, "ci", tmp_path, "cpu", params=fast,
                      tracking=False, log=None)
    assert record["schema"] == 2
    canonical = json.dumps({"config": record["config"], "profile": record["profile_settings"]},
                           sort_keys=True, separators=(",", ":"))
    assert record["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert record["init"]["key"] == "random" and record["init"]["sha256"] is None
    paper = {**ProbeMethod.defaults, **ProbeMethod.dataset_defaults.get("digits", {})}
    differs = {k: {"paper": paper.get(k), "run": record["config"].get(k)}
               for k in set(paper) | set(record["config"]) if paper.get(k) != record["config"].get(k)}
    assert record["paper_run"] == {"config_equal": not differs, "config_differs": differs,
                                   "init": IMAGENET_V1, "not_comparable": None}
    assert record["faiss_indexes"] == {}  # the probe searches nothing
    assert record["environment"]["faiss"]["version"] and "gpus" in record["environment"]["faiss"]
    assert isinstance(record["environment"]["dirty"], bool)
    if record["environment"]["dirty"]:  # which changes: a 64-hex digest
        assert len(record["environment"]["diff_sha256"]) == 64


def test_similarity_guidance_reports_the_checkpoint_it_starts_from(tmp_path: Path) -> None:
    from test_similarity_guidance import TINY, tiny_view

    from methods.similarity_guidance import SimilarityGuidance

    def context(folder: Path) -> RunContext:
        return RunContext(device=torch.device("cpu"), seed=0, profile=get_profile("ci"),
                          dataset="tiny", task="reid", checkpoint_dir=folder,
                          rng=np.random.default_rng(0), torch_generator=torch.Generator().manual_seed(0))

    torch.set_num_threads(1)
    cifar = tmp_path / "out" / "cifar10" / "similarity-guidance" / "ci" / "seed0" / "checkpoints"
    first = SimilarityGuidance(**TINY)
    ctx = context(cifar)
    run_epochs(first, tiny_view(), first.resolve_config("tiny", "ci"), ctx)
    assert ctx.reported_init is None  # started from the profile's backbone
    start = sorted(cifar.glob("epoch-*.pt"))[-1]
    second = SimilarityGuidance(**TINY, init_checkpoint=str(start))
    ctx = context(tmp_path / "stl")
    run_epochs(second, tiny_view(), second.resolve_config("tiny", "ci"), ctx)
    assert ctx.reported_init["key"] == "checkpoint:cifar10/similarity-guidance/ci"
    assert ctx.reported_init["sha256"] == sha256(start)
    assert SimilarityGuidance.paper_init("stl10") == "checkpoint:cifar10/similarity-guidance/paper"
    assert SimilarityGuidance.paper_init("market1501") == IMAGENET_V1


def test_gcl_scl_declares_why_no_run_here_is_the_papers() -> None:
    from methods.gcl_scl import GCLSCL

    reason = GCLSCL.not_comparable_reason("market1501")
    assert reason and "name" in reason and GCLSCL.not_comparable_reason("msmt17") == reason
    from methods.cluster_contrast import ClusterContrast

    assert ClusterContrast.not_comparable_reason("market1501") is None
