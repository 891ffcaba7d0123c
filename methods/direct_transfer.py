"""Direct transfer: the profile's backbone, untouched, as the encoder (the floor every method must beat).

On re-ID data this is the usual "ImageNet model applied as is" baseline of the unsupervised re-ID
papers (in the quick / ci profiles: the pretrained stand-in for ImageNet applied as is); on
clustering data it is k-means on the features of an untrained backbone (random initialisation in the
quick / ci profiles, seeded from the run, so the floor is reproducible too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import MethodAdapter, Paper, RunContext
from benchmark.engine.method_registry import register_method
from methods.common.backbones import run_backbone


@register_method
class DirectTransfer(MethodAdapter):
    """The profile's backbone with no training: ImageNet weights in the `paper` profile, the
    pretrained stand-in (re-ID) or a seeded random initialisation (clustering) in `quick` and
    `ci`; globally pooled features.

    Deviations:
    - Not a paper: the baseline row the unsupervised re-ID papers print as "direct transfer" /
      "ImageNet pre-trained", here always with the profile's backbone and input size, so it is
      comparable only with methods run under the same profile.
    - In the quick and ci profiles the re-ID backbone is the pretrained stand-in (learned with
      labels on a source synthetic population, `methods.common.standin`), so the numbers measure
      transfer from that source, not from ImageNet; on clustering sets it is randomly initialised.
    """

    key = "direct-transfer"
    paper = Paper(
        title="Direct transfer (no adaptation)",
        authors="baseline",
        venue="baseline",
        seed_file=None,
    )
    tasks = ("reid", "clustering")
    uses_camera_ids = False
    supports_distributed = True  # nothing trains: under torchrun only the extraction is shared
    defaults: ClassVar[dict[str, Any]] = {"pooling": "avg", "last_stride": 2}

    def fit(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> nn.Module:
        encoder = run_backbone(ctx, last_stride=int(config["last_stride"]),
                               pooling=str(config["pooling"]))
        return encoder.eval()
