"""Feature extraction: one function for the harness's evaluation and for methods' pseudo-labelling.

Why one function: the harness scores every encoder with it, and methods that cluster their own
training features each epoch (the Cluster Contrast family) call the same code, so the features a
method clusters are computed exactly like the features it is judged on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from benchmark.engine.contract import RunContext


class TransformedImages(Dataset):
    """`images[i]` (a PIL image, e.g. from an UnlabeledView) passed through `transform`; with
    `with_index`, items are (tensor, i) so that a training loop can look up its pseudo labels."""

    def __init__(self, images: Sequence, transform: Callable, *, with_index: bool = False) -> None:
        self.images = images
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        image = self.transform(self.images[index])
        return (image, index) if self.with_index else image


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Sequence,
    transform: Callable,
    *,
    batch_size: int,
    device: torch.device | str,
    num_workers: int = 0,
    normalize: bool = True,
) -> torch.Tensor:
    """Embed `images` in order with `model` in eval mode: (N, D) float32 on the CPU.

    `normalize` L2-normalises each row. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    loader = DataLoader(
        TransformedImages(images, transform), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in loader:
            out = model(batch.to(device, non_blocking=True))
            if out.ndim != 2:
                raise ValueError(
                    f"encoder must return (B, D) features, got shape {tuple(out.shape)}"
                )
            chunks.append(out.float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        dim = int(getattr(model, "feature_dim", 0))
        return torch.empty(0, dim)
    features = torch.cat(chunks)
    return F.normalize(features, dim=1) if normalize else features


def training_loader(
    view: Dataset, transform: Callable, ctx: "RunContext", device: torch.device, *,
    batch_size: int | None = None, batch_sampler: Iterable | None = None,
) -> DataLoader:
    """The training loader every adapter uses: (image, view index) pairs, either shuffled batches
    of `batch_size` (last partial batch dropped) or the batches of `batch_sampler` (PK sampling).

    Its shuffling and the workers' seeds come from a generator seeded by one draw from
    `ctx.torch_generator`, so an epoch's order is fixed by the run's seed and survives resume."""
    from methods.common.backbones import draw_seed

    if (batch_size is None) == (batch_sampler is None):
        raise ValueError("give exactly one of batch_size or batch_sampler")
    batching: dict = (
        {"batch_sampler": batch_sampler} if batch_sampler is not None
        else {"batch_size": batch_size, "shuffle": True, "drop_last": True}
    )
    return DataLoader(
        TransformedImages(view, transform, with_index=True), **batching,
        num_workers=ctx.profile.num_workers, worker_init_fn=ctx.worker_init_fn,
        generator=torch.Generator().manual_seed(draw_seed(ctx.torch_generator)),
        pin_memory=device.type == "cuda",
    )
