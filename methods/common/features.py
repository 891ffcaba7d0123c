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
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Subset

from benchmark.engine import distributed

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

    Under torchrun every rank embeds its own whole batches (`distributed.shard_of_batches`) with
    rank 0's buffers, and the rows are gathered in order: every rank returns all N rows, the bytes
    one process would compute. Every rank must call it (it is collective). A model with
    channels_last weights gets channels_last inputs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    dataset: Dataset = TransformedImages(images, transform)
    world = distributed.world()
    if world.active:
        distributed.sync_buffers(model)
        start, stop = distributed.shard_of_batches(len(images), batch_size)
        dataset = Subset(dataset, range(start, stop))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )
    layout = _input_layout(model)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in loader:
            out = model(batch.to(device, non_blocking=True, memory_format=layout))
            if out.ndim != 2:
                raise ValueError(
                    f"encoder must return (B, D) features, got shape {tuple(out.shape)}"
                )
            chunks.append(out.float().cpu())
    finally:
        model.train(was_training)
    local = torch.cat(chunks) if chunks else torch.empty(0, int(getattr(model, "feature_dim", 0)))
    features = distributed.gather_rows(local)  # every rank's rows, in order; one process: local
    return F.normalize(features, dim=1) if normalize else features


def _input_layout(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's first 4-D weight is (the harness converts conv backbones
    under bf16), else the default layout."""
    for param in model.parameters():
        if param.ndim == 4:
            return (torch.channels_last if param.is_contiguous(memory_format=torch.channels_last)
                    and not param.is_contiguous() else torch.contiguous_format)
    return torch.contiguous_format


def training_loader(
    view: Dataset, transform: Callable, ctx: "RunContext", device: torch.device, *,
    batch_size: int | None = None, batch_sampler: Iterable | None = None,
) -> DataLoader:
    """The training loader every adapter uses: (image, view index) pairs, either shuffled batches
    of `batch_size` (last partial batch dropped) or the batches of `batch_sampler` (PK sampling).

    Its shuffling and the workers' seeds come from a generator seeded by one draw from
    `ctx.torch_generator`, so an epoch's order is fixed by the run's seed and survives resume.

    Under torchrun the batches are the global ones (every rank draws the same) and each rank
    loads its slice (`distributed.RankSlices`): `batch_size` stays the paper's global batch. The
    workers' seeds then differ per rank (`distributed.rank_seed`)."""
    from methods.common.backbones import draw_seed

    if (batch_size is None) == (batch_sampler is None):
        raise ValueError("give exactly one of batch_size or batch_sampler")
    data = TransformedImages(view, transform, with_index=True)
    seed = draw_seed(ctx.torch_generator)
    if distributed.world().active:
        if batch_sampler is None:
            batch_sampler = BatchSampler(
                RandomSampler(data, generator=torch.Generator().manual_seed(seed)),
                batch_size, drop_last=True)
        batching: dict = {"batch_sampler": distributed.RankSlices(batch_sampler)}
        seed = distributed.rank_seed(seed)
    else:
        batching = (
            {"batch_sampler": batch_sampler} if batch_sampler is not None
            else {"batch_size": batch_size, "shuffle": True, "drop_last": True}
        )
    return DataLoader(
        data, **batching,
        num_workers=ctx.profile.num_workers, worker_init_fn=ctx.worker_init_fn,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )
