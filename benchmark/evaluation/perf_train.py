"""`perf --train`: images/s and peak memory of the paper-scale training step, fp32 against bf16 with
channels_last, on CUDA where present and on CPU with a small batch.

Why: a paper-profile cell is hours of ResNet-50 training at 256x128, so the precision the harness
trains in (benchmark.engine.precision) decides whether a full suite is days or weeks of GPU time.

What one step is: the re-ID methods' shared step, measured once per distinct shape among them.
The paper-profile backbone (ResNet-50, random init: nothing is downloaded) with each method's paper
`last_stride` and `pooling`, the BN neck, forward on a batch at 256x128, ClusterNCE against a
memory of `MEMORY_CLUSTERS` centroids, backward, and one Adam step. The batch is the paper's
per-GPU batch: its global `batch_size` over `PAPER_GPUS`, which is the 4 GPUs of the authors' code
(Cluster Contrast's `-b 256` on 4 GPUs); for a paper that trained on one GPU this is a quarter
of its batch, and images/s at a larger batch is at least as high. A method's own extra losses
(part features, camera terms) are not in the step; they cost little beside the backbone.

On CPU the peak is the growth of the process's resident memory (each measurement runs in a fresh
process); on CUDA it is torch's peak allocation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmark.evaluation.perf import _in_fresh_process
from benchmark.evaluation.perf_memory import GIB, peak_gib, reset_peak

PAPER_GPUS = 4
MEMORY_CLUSTERS = 500
INPUT_SIZE = (256, 128)
SPEEDUP_TARGET = 2.5  # bf16 + channels_last over fp32, images/s, on one GPU (issue 16)
CPU_BATCH = 4  # the per-step batch on CPU, where the paper's would take minutes per step


@dataclass
class TrainRow:
    """One training-step shape: fp32 beside bf16 + channels_last."""

    methods: str
    shape: str
    device: str
    batch: int
    fp32_images_per_s: float
    bf16_images_per_s: float
    speedup: float
    fp32_peak_gib: float
    bf16_peak_gib: float
    target: str
    target_met: bool | None
    note: str = ""


def step_shapes() -> dict[tuple[int, str, int], list[str]]:
    """(last_stride, pooling, per-GPU batch) -> the re-ID methods whose paper step has that shape."""
    from benchmark.engine.method_registry import get_method, method_names

    shapes: dict[tuple[int, str, int], list[str]] = {}
    for name in method_names():
        cls = get_method(name)
        config = cls.defaults
        if "reid" not in cls.tasks or cls.uses_labels or "batch_size" not in config:
            continue
        key = (int(config.get("last_stride", 2)), str(config.get("pooling", "avg")),
               max(1, int(config["batch_size"]) // PAPER_GPUS))
        shapes.setdefault(key, []).append(name)
    return shapes


def _peak_start(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / GIB
    return reset_peak()


def _peak(device: torch.device, base: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB - base
    return peak_gib() - base


def time_step(last_stride: int, pooling: str, batch: int, device: str, precision: str,
              steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, peak GiB beyond what was allocated before) of the training step; run it in a
    fresh process (`perf._in_fresh_process`), so that no earlier row's allocations hide its peak."""
    from methods.common.backbones import BNNeckEncoder, build_backbone
    from methods.common.losses import cluster_nce

    device = torch.device(device)
    torch.manual_seed(0)
    model = BNNeckEncoder(build_backbone("resnet50", pretrained=False, last_stride=last_stride,
                                         pooling=pooling)).to(device)
    bf16 = precision == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    model.to(memory_format=layout)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4)
    centroids = torch.nn.functional.normalize(
        torch.randn(MEMORY_CLUSTERS, model.feature_dim, device=device), dim=1)
    images = torch.randn(batch, 3, *INPUT_SIZE, device=device).to(memory_format=layout)
    targets = torch.randint(0, MEMORY_CLUSTERS, (batch,), device=device)
    model.train()
    base = _peak_start(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = cluster_nce(model(images), targets, centroids, 0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return batch * steps / seconds, _peak(device, base)


def train_rows(device: str | None = None, *, batch: int | None = None, steps: int | None = None,
               methods: list[str] | None = None) -> list[TrainRow]:
    """One row per training-step shape (or only the shapes of `methods`)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = dev.type == "cuda"
    steps = steps or (20 if on_gpu else 2)
    warmup = 5 if on_gpu else 0  # a GPU tunes kernels and warms caches; a CPU step has no such start
    rows = []
    for (last_stride, pooling, paper_batch), names in step_shapes().items():
        if methods and not set(methods) & set(names):
            continue
        size = batch or (paper_batch if on_gpu else min(paper_batch, CPU_BATCH))
        fp32, fp32_peak, bf16, bf16_peak = (
            value for precision in ("fp32", "bf16") for value in _in_fresh_process(
                time_step, last_stride=last_stride, pooling=pooling, batch=size,
                device=str(dev), precision=precision, steps=steps, warmup=warmup))
        speedup = bf16 / fp32
        rows.append(TrainRow(
            methods=", ".join(names),
            shape=f"ResNet-50 {INPUT_SIZE[0]}x{INPUT_SIZE[1]}, last stride {last_stride}, "
                  f"{pooling} pool, BN neck, ClusterNCE, Adam",
            device=torch.cuda.get_device_name(dev) if on_gpu else "cpu",
            batch=size, fp32_images_per_s=fp32, bf16_images_per_s=bf16, speedup=speedup,
            fp32_peak_gib=fp32_peak, bf16_peak_gib=bf16_peak,
            target=f">= {SPEEDUP_TARGET:g}x fp32 on one GPU",
            target_met=speedup >= SPEEDUP_TARGET if on_gpu else None,
            note="" if size == paper_batch else
            f"batch {size}, not the paper's per-GPU {paper_batch}: CPU-sized; the target is "
            "open without a GPU",
        ))
    return rows


def format_train_table(rows: list[TrainRow]) -> str:
    head = ("methods", "device", "batch", "fp32 img/s", "bf16+cl img/s", "speedup",
            "fp32 peak GiB", "bf16 peak GiB", "target", "met")
    lines = [(r.methods, r.device, str(r.batch), f"{r.fp32_images_per_s:.1f}",
              f"{r.bf16_images_per_s:.1f}", f"{r.speedup:.2f}x", f"{r.fp32_peak_gib:.2f}",
              f"{r.bf16_peak_gib:.2f}", r.target,
              "-" if r.target_met is None else ("yes" if r.target_met else "NO")) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    shapes = dict.fromkeys(r.shape for r in rows)
    out += ["", *(f"step: {shape}" for shape in shapes)]
    out += [f"[{r.methods}] {r.note}" for r in rows if r.note]
    return "\n".join(out)


def train_report(rows: list[TrainRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
