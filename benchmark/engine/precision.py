"""Which arithmetic a run trains in, chosen once and written in its record.

Why a harness setting and not an adapter's: the paper profile is hours of ResNet-50 training per
cell, and bf16 autocast with channels_last convolutions is what makes a GPU fast at it, for every
method alike. The choice changes numbers, so it is part of the run's identity (the config hash
includes it when it is not fp32) and the record says what ran:

- "fp32": float32 everywhere (quick and ci, and any run on CPU unless asked).
- "bf16": bf16 autocast over training and feature extraction, conv weights and inputs in
  channels_last. bf16 has float32's exponent range, so no loss scaling is needed. Features leave
  the encoder as float32 and the metric code (distances, ranking, mAP, clustering scores) never
  runs under autocast.

"auto" (the default) is bf16 for the paper profile on CUDA and fp32 otherwise, so CPU numbers and
the quick / ci references never move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(requested: str | None, device: torch.device, profile: str) -> str:
    """fp32 or bf16 for `requested` ("auto" / None, "fp32", "bf16") on `device`."""
    import torch

    choice = requested or "auto"
    if choice not in PRECISIONS:
        raise ValueError(f"--precision {choice!r}: choose from {', '.join(PRECISIONS)}")
    if choice == "auto":
        return "bf16" if device.type == "cuda" and profile == "paper" else "fp32"
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 "
                         "support; use --precision fp32")
    return choice


def describe_precision(precision: str, requested: str | None, seeding: dict[str, Any]) -> dict[str, Any]:
    """The record's `precision`: what ran, what was asked, and the TF32 policy in effect."""
    bf16 = precision == "bf16"
    return {
        "mode": precision,
        "requested": requested or "auto",
        "autocast": "bfloat16 (training epochs and feature extraction)" if bf16 else None,
        "channels_last": bf16,
        "metrics_dtype": "float32 features; distances and metrics in float32 / float64",
        # TF32 is off whenever the run is deterministic (benchmark.engine.seeding): fp32 matmuls
        # and convolutions then keep all 23 mantissa bits on Ampere and later GPUs.
        "tf32_matmul": bool(seeding.get("tf32")),
        "tf32_cudnn": bool(seeding.get("tf32")),
        "float32_matmul_precision": seeding.get("float32_matmul_precision"),
    }
