"""The harness's evaluation of a trained encoder: the same for every method, never the method's own.

DESIGN.md: the harness, never the adapter, extracts features, evaluates and writes results. Every
encoder is fed the profile's evaluation input (re-ID: the profile's `reid_size`; clustering: the
dataset's own image size unless the profile sets `clustering_size`) through the shared test transform
(resize + ImageNet normalisation), its features are L2-normalised, and then
- re-ID: query x gallery ranking by cosine distance (`evaluate_reid_features`), the standard
  single-query protocol (same-identity same-camera gallery images removed);
- clustering: k-means with k = number of classes on the features of all images, scored by ACC, NMI
  and ARI (`evaluate_clustering_features`).
The returned protocol describes exactly what was done, for the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from benchmark.data.errors import DatasetFileError
from benchmark.data.types import ClusteringDataset, Dataset, ReidDataset
from benchmark.data.unlabeled import UnlabeledView
from benchmark import metrics as metric_names
from benchmark.engine.profiles import Profile


REID_METRICS = (*metric_names.BY_TASK["reid"], "cmc")  # the scalars, and the whole CMC curve
CLUSTERING_METRICS = metric_names.BY_TASK["clustering"]


class PathImages(Sequence):
    """Images read from files on demand (query / gallery), as RGB PIL images; picklable."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as exc:
            raise DatasetFileError(path, f"cannot read image: {exc}") from None


def evaluation_size(dataset: Dataset, profile: Profile) -> tuple[int, int]:
    """(H, W) the encoder sees at evaluation."""
    if isinstance(dataset, ReidDataset):
        return tuple(profile.reid_size)  # type: ignore[return-value]
    if profile.clustering_size is not None:
        return (profile.clustering_size, profile.clustering_size)
    return (int(dataset.images.shape[1]), int(dataset.images.shape[2]))


def encoder_features(
    encoder: nn.Module, images: Sequence, size: tuple[int, int], profile: Profile,
    device: torch.device,
) -> torch.Tensor:
    from methods.common.features import extract_features
    from methods.common.transforms import test_transform

    return extract_features(
        encoder, images, test_transform(size), batch_size=profile.eval_batch_size, device=device,
        num_workers=profile.num_workers, normalize=True,
    )


def evaluate_encoder(
    encoder: nn.Module, dataset: Dataset, *, profile: Profile, device: torch.device, seed: int,
    precision: str = "fp32",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics (fractions in [0, 1]) and the protocol used, for a re-ID or a clustering dataset.

    Under `precision` "bf16" the encoder embeds under bf16 autocast; its features are float32 and
    everything after them (distances, ranking, metrics) runs outside autocast."""
    encoder.eval()
    size = evaluation_size(dataset, profile)
    protocol: dict[str, Any] = {
        "input_size": list(size),
        "transform": "resize to input_size, ImageNet mean/std normalisation",
        "features": "L2-normalised encoder output"
                    + (" (bf16 autocast, float32 out)" if precision == "bf16" else ""),
        "model": "last epoch",
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if isinstance(dataset, ReidDataset):
        from benchmark.evaluation.reid import evaluate_reid_features

        with autocast:
            q = encoder_features(encoder, PathImages(dataset.query.paths), size, profile, device)
            g = encoder_features(encoder, PathImages(dataset.gallery.paths), size, profile, device)
        result = evaluate_reid_features(
            q, g, dataset.query.pids, dataset.gallery.pids, dataset.query.camids,
            dataset.gallery.camids, metric="cosine", device=device,
        )
        protocol.update(task="reid", splits="query x gallery", feature_dim=int(q.shape[1]),
                        **result.pop("protocol", {}))
        return _split(result, REID_METRICS, protocol)
    if isinstance(dataset, ClusteringDataset):
        from benchmark.evaluation.clustering import evaluate_clustering_features

        images = UnlabeledView(pixels=dataset.images, kind="clustering")  # dataset order, no shuffle
        with autocast:
            feats = encoder_features(encoder, images, size, profile, device)
        result = evaluate_clustering_features(feats.numpy(), dataset.labels, seed)
        protocol.update(task="clustering", splits="all images (train and test together)",
                        feature_dim=int(feats.shape[1]),
                        clustering="k-means, k = number of classes")
        return _split(result, CLUSTERING_METRICS, protocol)
    raise TypeError(f"cannot evaluate a {type(dataset).__name__}")


def _split(
    result: dict[str, Any], names: tuple[str, ...], protocol: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics (fractions) apart from what describes how they were computed (counts, settings)."""
    metrics = {k: _plain(v) for k, v in result.items() if k in names}
    protocol.update({k: _plain(v) for k, v in result.items() if k not in names})
    return metrics, protocol


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
