"""Data-parallel training over processes (torch.distributed, DDP), as torchrun launches it.

Why in the harness: the authors' code that users compare against trains on 4 GPUs, and a method
must not have to know it. Under torchrun every process runs the same cell with the same seed, and
these helpers keep what must agree across processes the same on every rank:

- the global batch is drawn by every rank from the same generator and sliced by rank
  (`RankSlices`): the paper's batch stays the global batch, each rank takes `batch / world`;
- feature extraction is split into whole batches per rank and gathered in order
  (`methods.common.features.extract_features`), so the features, and with them epoch 0's pseudo
  labels, are the bytes one process computes;
- decisions (pseudo labels) are taken once on rank 0 and broadcast (`on_main`);
- memories update with the whole global batch, in rank order (`gather_rows` in
  `methods.common.memory`), as one process updates them with the same batch;
- rank 0 writes checkpoints and records; each rank's RNG state travels in the checkpoint.

What legitimately differs from one process: BatchNorm statistics are per-rank batches
(batch / world images) during training, gradients are averaged in another order, and each rank's
augmentations come from its own fork of the run's generator (`rank_seed`).

Outside torchrun every helper is the identity: one process runs exactly the code it always ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

# torchrun's environment (torch.distributed.run): set in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.size, "backend": self.backend,
                "launcher": "torchrun" if self.backend else None}


def world() -> World:
    """This process's place in the group (rank 0 of 1 when not launched by torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 dist.get_backend())


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def init_from_torchrun(device: str | None) -> tuple[World, str | None]:
    """Join the group torchrun set up: NCCL on CUDA (one GPU per process, `cuda:LOCAL_RANK`), gloo
    on CPU. Returns the world and the device this process must use (None: not under torchrun)."""
    if not launched_by_torchrun():
        return World(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and (device is None or device in ("auto", "cuda")
                                              or str(device).startswith("cuda"))
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"torchrun started local rank {local_rank}, but this node has "
                             f"{torch.cuda.device_count()} GPU(s): lower --nproc-per-node")
        torch.cuda.set_device(local_rank)
        chosen = f"cuda:{local_rank}"
    else:
        chosen = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world(), chosen


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors."""
    if world().backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if world().active:
        dist.barrier()


def on_main(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0 only, its result sent to every rank (a decision taken once)."""
    w = world()
    if not w.active:
        return compute()
    box = [compute() if w.main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device() if w.backend == "nccl" else None)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    w = world()
    if not w.active:
        return [obj]
    found: list[Any] = [None] * w.size
    dist.all_gather_object(found, obj)
    return found


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (ranks may hold different numbers of rows,
    and a rank with none may give any trailing shape: it takes the others'); returned on
    `tensor`'s device. Outside a group: `tensor` itself."""
    w = world()
    if not w.active:
        return tensor
    comm = _comm_device()
    local = tensor.detach().to(comm).contiguous()
    shape = torch.tensor(local.shape, device=comm)
    shapes = [torch.zeros_like(shape) for _ in range(w.size)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    trailing = [int(d) for d in shapes[counts.index(max(counts))][1:]]
    local = local.reshape(local.shape[0], *trailing)
    longest = max(counts)
    padded = torch.zeros((longest, *trailing), dtype=local.dtype, device=comm)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(tensor.device)


def shard_of_batches(total: int, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the items this rank embeds: whole batches of `batch_size`, contiguous per
    rank, so each batch is the one a single process would run (its features are the same bytes)."""
    w = world()
    batches = -(-total // batch_size)
    first = batches * w.rank // w.size
    last = batches * (w.rank + 1) // w.size
    return min(first * batch_size, total), min(last * batch_size, total)


def rank_seed(seed: int) -> int:
    """The seed this rank's own random draws (augmentations) use: `seed` on rank 0, a different one
    per rank elsewhere, so ranks do not augment their halves of a batch with the same draws."""
    rank = world().rank
    if rank == 0:
        return seed
    return int(torch.randint(0, 2**63 - 1, (1,),
                             generator=torch.Generator().manual_seed(seed + rank)).item())


class RankSlices:
    """This rank's part of every batch a batch sampler yields: the same global batch is drawn on
    every rank (same seed), and rank r takes items [r * B / N, (r + 1) * B / N)."""

    def __init__(self, batches: Iterable[list[int]]) -> None:
        self.batches = batches
        self.world = world()

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        n, r = self.world.size, self.world.rank
        for batch in self.batches:
            batch = list(batch)
            if len(batch) % n:
                raise ValueError(f"a batch of {len(batch)} cannot be split over {n} processes: "
                                 f"the batch size must be a multiple of the world size")
            per = len(batch) // n
            yield batch[r * per:(r + 1) * per]


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to run training forwards through: DDP around `model` in a group (gradients
    averaged over ranks, buffers broadcast from rank 0), `model` itself otherwise. Checkpoints keep
    using `model`, whose state_dict has no `module.` prefix."""
    w = world()
    if not w.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each rank's last training
    forward updated its own, and every rank must embed with the same model."""
    w = world()
    if not w.active:
        return
    comm = _comm_device()
    for buffer in model.buffers():
        moved = buffer.data.to(comm)
        dist.broadcast(moved, src=0)
        buffer.data.copy_(moved.to(buffer.device))
