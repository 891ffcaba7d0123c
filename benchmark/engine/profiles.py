"""Profiles set scale, never code paths: the same adapter code runs at paper, quick and ci scale.

A profile fixes what every method shares (input size, backbone, pretrained weights, feature-extraction
batch); each adapter scales its own epoch counts and sizes per profile in `profile_overrides`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    reid_size: tuple[int, int]  # (H, W) of re-ID inputs
    clustering_size: int | None  # side of clustering inputs; None keeps the dataset's own size
    backbone: str  # key in methods.common.backbones
    pretrained: bool  # ImageNet weights from a local file (never downloaded)
    eval_batch_size: int
    num_workers: int
    description: str
    # CPU threads torch uses; None leaves torch's default. CPU float sums depend on how work is split
    # between threads, so a fixed count makes quick/ci numbers the same on every machine.
    cpu_threads: int | None = None
    # The pretrained stand-in for ImageNet (a key of methods.common.standin.RECIPES) that re-ID
    # backbones start from; None: ImageNet weights (`pretrained`) or random init. Clustering sets
    # keep random init: the stand-in is a person re-ID source.
    standin: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        reid_size=(256, 128),
        clustering_size=None,
        backbone="resnet50",
        pretrained=True,
        eval_batch_size=256,
        num_workers=4,
        description="the papers' settings: ResNet-50 with ImageNet weights (local file), 256x128, "
        "full epochs; needs a GPU",
    ),
    "quick": Profile(
        name="quick",
        reid_size=(64, 32),
        clustering_size=None,
        backbone="resnet-tiny",
        pretrained=False,
        eval_batch_size=256,
        num_workers=0,
        description="small backbone, small images, few epochs: minutes on a laptop CPU; re-ID "
        "backbones start from the quick pretrained stand-in (a source synthetic population)",
        cpu_threads=1,
        standin="quick",
    ),
    "ci": Profile(
        name="ci",
        reid_size=(32, 16),
        clustering_size=None,
        backbone="resnet-tiny",
        pretrained=False,
        eval_batch_size=256,
        num_workers=0,
        description="smaller still, for CI; re-ID backbones start from the ci stand-in",
        cpu_threads=1,
        standin="ci",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]
