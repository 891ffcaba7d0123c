"""What exactly ran in a cell, as facts a reader can compare: the hash of its resolved config, the
file its backbone started from (with its sha256), and how its config and init stand to the paper's.

Integrity rule 4 of DESIGN.md: a claim stands only beside a run of the paper's protocol, config and
initial weights on a clean tree, and seeds pool only when all of these agree. A record that holds
just the parameters a user typed cannot answer that: the same `--weights` path may hold other bytes
next week, and a profile default may change in a later commit. So the record holds hashes of what was
actually used, and the leaderboard (and `check`) compare those.

This module imports no torch: `leaderboard` and `check` read records without it.

Initial weights are named by an *init key*:
- `random`: the profile's backbone randomly initialised (seeded);
- `imagenet:<tag>`: a torchvision ImageNet ResNet-50 file, recognised by its sha256 (torchvision's
  file names carry the first 8 hex digits of it, e.g. `resnet50-0676ba61.pth`). The papers (2019-2023)
  use `torchvision.models.resnet50(pretrained=True)`, which is IMAGENET1K_V1; V2 is a different,
  stronger start and is named apart;
- `checkpoint:<dataset>/<method>/<profile>`: the last checkpoint of another cell of this harness
  (e.g. similarity guidance's STL-10 run starting from its CIFAR-10 cell, as the paper does);
- `standin:<profile>`: the `quick` / `ci` profiles' pretrained stand-in for ImageNet (the small
  backbone learned with labels on a source synthetic population, `methods.common.standin`), named by
  the file's sha256 like any other;
- `file`: any other weights file, known only by its sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RANDOM = "random"
IMAGENET_V1 = "imagenet:IMAGENET1K_V1"
# sha256 prefix of torchvision's published ResNet-50 files -> init key
TORCHVISION_RESNET50 = {"0676ba61": IMAGENET_V1, "11ad3fa6": "imagenet:IMAGENET1K_V2"}
OTHER_FILE = "file"
STANDIN_PREFIX = "standin:"
NO_NETWORK = "none"  # an encoder with no learned weights (k-means on pixels)

INIT_DESCRIPTIONS = {
    RANDOM: "random init (seeded)",
    IMAGENET_V1: "ImageNet ResNet-50 (torchvision IMAGENET1K_V1)",
    "imagenet:IMAGENET1K_V2": "ImageNet ResNet-50 (torchvision IMAGENET1K_V2)",
    OTHER_FILE: "a weights file not recognised as torchvision's ImageNet ResNet-50",
    NO_NETWORK: "no learned weights",
}
_CELL_CHECKPOINT = re.compile(r"seed\d+")


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, ASCII (so the hash does not depend on dict order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def config_hash(config: Mapping[str, Any], profile_settings: Mapping[str, Any],
                execution: Mapping[str, Any] | None = None) -> str:
    """sha256 of the resolved config together with the profile's settings (input size, backbone,
    pretrained, ...): two runs with the same hash trained the same recipe at the same scale.

    `execution` holds what changes the numbers beyond the recipe (bf16, a multi-process world);
    it enters the hash only when given, so a one-process fp32 run keeps the hash it always had."""
    content: dict[str, Any] = {"config": dict(config), "profile": dict(profile_settings)}
    if execution:
        content["execution"] = dict(execution)
    text = canonical_json(content)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def execution_identity(precision: str = "fp32", world_size: int = 1) -> dict[str, Any]:
    """What of a run's execution enters its config hash: nothing for one fp32 process."""
    identity: dict[str, Any] = {}
    if precision != "fp32":
        identity["precision"] = precision
    if world_size > 1:
        identity["world_size"] = int(world_size)
    return identity


def record_execution(record: Mapping[str, Any]) -> dict[str, Any]:
    """`execution_identity` of a record (older records ran one fp32 process)."""
    precision = (record.get("precision") or {}).get("mode", "fp32")
    world_size = (record.get("distributed") or {}).get("world_size", 1)
    return execution_identity(str(precision), int(world_size))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_init(key: str) -> str:
    if key.startswith(STANDIN_PREFIX):
        return (f"the {key.removeprefix(STANDIN_PREFIX)} profile's pretrained stand-in for "
                "ImageNet (learned with labels on a source synthetic population, not the target)")
    if key.startswith("checkpoint:"):
        return f"the last checkpoint of this harness's cell {key.removeprefix('checkpoint:')}"
    return INIT_DESCRIPTIONS.get(key, key)


def init_record(key: str, path: str | Path | None = None, sha256: str | None = None) -> dict[str, Any]:
    """The record's `init` block: key, file, sha256 and a description in words."""
    return {"key": key, "file": str(path) if path is not None else None, "sha256": sha256,
            "description": describe_init(key)}


def init_from_weights_file(path: str | Path) -> dict[str, Any]:
    """An ImageNet (or other) weights file the backbone is built from, named by its content."""
    sha = file_sha256(path)
    return init_record(TORCHVISION_RESNET50.get(sha[:8], OTHER_FILE), path, sha)


def init_from_standin(name: str, path: str | Path) -> dict[str, Any]:
    """The profile's pretrained stand-in for ImageNet, named by the file's content."""
    return init_record(f"{STANDIN_PREFIX}{name}", path, file_sha256(path))


def init_from_checkpoint(path: str | Path) -> dict[str, Any]:
    """Weights taken from a checkpoint file: another cell's when the file sits where the engine
    keeps a cell's checkpoints (`<out>/<dataset>/<method>/<profile>/seed<N>/checkpoints/`)."""
    path = Path(path)
    parts = path.parts
    key = OTHER_FILE
    if len(parts) >= 6 and path.parent.name == "checkpoints" and _CELL_CHECKPOINT.fullmatch(parts[-3]):
        key = f"checkpoint:{parts[-6]}/{parts[-5]}/{parts[-4]}"
    return init_record(key, path, file_sha256(path))


def paper_config_diff(config: Mapping[str, Any], paper: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The keys where a run's resolved config departs from the paper's for its dataset, each with
    both values (a key only one side has counts, with None on the other)."""
    keys = sorted(set(config) | set(paper))
    return {k: {"paper": paper.get(k), "run": config.get(k)} for k in keys
            if canonical_json(config.get(k)) != canonical_json(paper.get(k))}


def init_identity(init: Mapping[str, Any] | None) -> str:
    """What seeds must share to pool: the file's content where there is a file, else the key."""
    if not init:
        return "unknown init"
    return str(init.get("sha256") or init.get("key") or "unknown init")
