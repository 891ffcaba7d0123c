"""K-means on raw pixels: the clustering floor that needs no network at all.

The harness feeds every encoder ImageNet-normalised tensors; this encoder undoes that normalisation
so that k-means sees the pixel values themselves (in [0, 1]), flattened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import MethodAdapter, Paper, RunContext
from benchmark.engine.method_registry import register_method
from benchmark.engine.run_identity import NO_NETWORK
from methods.common.transforms import IMAGENET_MEAN, IMAGENET_STD


class RawPixelEncoder(nn.Module):
    """Normalised images (B, 3, H, W) -> their pixel values in [0, 1], flattened (B, 3 H W)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean).flatten(1)


@register_method
class RawPixels(MethodAdapter):
    """Flattened pixels as features; the harness then runs k-means with k = number of classes.

    Deviations:
    - Not a paper: the "K-means on pixels" baseline row of the deep-clustering literature. Grey
      images are repeated over three channels by the data view, which scales every distance by
      the same factor and so leaves k-means unchanged.
    - The harness L2-normalises every encoder's features before k-means, so this is k-means on
      unit-length pixel vectors (spherical k-means in effect), not on raw intensities.
    """

    key = "raw-pixels"
    paper = Paper(
        title="K-means on raw pixels",
        authors="baseline",
        venue="baseline",
        seed_file=None,
    )
    tasks = ("clustering",)
    uses_camera_ids = False
    supports_distributed = True  # nothing trains: under torchrun only the extraction is shared
    paper_init_default = NO_NETWORK
    defaults: ClassVar[dict[str, Any]] = {}

    def fit(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> nn.Module:
        return RawPixelEncoder().to(ctx.device).eval()
