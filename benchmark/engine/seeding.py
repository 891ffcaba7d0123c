"""One seed drives every random number generator of a run, and the run says how it was made deterministic.

Integrity rule 2 of DESIGN.md: on CPU the same seed gives bit-identical numbers; on CUDA torch's
deterministic algorithms are switched on wherever torch has them, and the record names the ops that
have none. torch warns for most such ops under `use_deterministic_algorithms(True, warn_only=True)`;
those warnings are collected while the run trains. Some ops do not warn at all (torchvision's
`deform_conv2d` backward is the known case), so adapters declare them in
`MethodAdapter.nondeterministic_cuda_ops` and the harness also looks for their modules in the encoder.

cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when CUDA starts; `seed_everything` therefore sets it
before touching CUDA and says in its description when CUDA had already started.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

CUBLAS_WORKSPACE = ":4096:8"

# Modules whose CUDA backward has no deterministic kernel and which torch does not warn about.
_SILENT_NONDETERMINISTIC_MODULES = {
    "DeformConv2d": "torchvision.ops.deform_conv2d backward",
}
_WARNING_PATTERN = re.compile(r"^(.*?) does not have a deterministic implementation")


SEED_LIMIT = 2**32  # numpy's and torch's seeds: 0 <= seed < 2**32, for `run` and `sweep` alike


def check_seed(seed: object, option: str = "--seed") -> int:
    """The seed as an int; ValueError naming the option when it is not one in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{option}: a seed must be an integer in [0, 2**32), got {seed!r}")
    return seed


def seed_everything(
    seed: int, *, deterministic: bool = True, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Seed python, numpy and torch (CPU and every CUDA device) and set the deterministic mode.

    Returns what was set, for the run record. `device` only decides whether the CUDA settings are
    described as in effect; the seeds and flags are set either way.
    """
    check_seed(seed, "seed")
    cuda_started_before = torch.cuda.is_initialized()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too (lazily, without starting CUDA)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    on_cuda = torch.device(device).type == "cuda" if device is not None else False
    description: dict[str, Any] = {
        "seed": seed,
        "seeded": ["python", "numpy", "torch", "torch.cuda", "dataloader workers (worker_init_fn)",
                   "run generators (ctx.rng, ctx.torch_generator)"],
        "deterministic_algorithms": deterministic,
        "deterministic_warn_only": True,
        "cudnn_benchmark": False,
        "cudnn_deterministic": deterministic,
        "tf32": not deterministic,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_num_threads": torch.get_num_threads(),
        "device_type": torch.device(device).type if device is not None else None,
    }
    if on_cuda and cuda_started_before and deterministic:
        description["warning"] = (
            "CUDA had started before seeding: CUBLAS_WORKSPACE_CONFIG may not be in effect"
        )
    return description


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch CPU threads (None: unchanged), then restore the count.

    A CPU reduction splits its work by thread, so the last bits of a sum depend on the thread count:
    fixing it is what makes a CPU record the same on a 2-core laptop and a 64-core server.
    """
    previous = torch.get_num_threads()
    if count is not None:
        if count < 1:
            raise ValueError(f"cpu thread count must be >= 1, got {count}")
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def collect_nondeterministic_ops() -> Iterator[list[str]]:
    """Collect the ops torch reports as lacking a deterministic implementation while the block runs.

    Wrap the whole training of the run: torch may warn only at an op's first use in the process.
    Each op's warning is recorded and shown once.
    """
    found: list[str] = []
    previous = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        match = _WARNING_PATTERN.search(str(message))
        if match:
            op = match.group(1).strip()
            if op in found:
                return  # shown once per run
            found.append(op)
        previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = record
        try:
            yield found
        finally:
            warnings.showwarning = previous


def silent_nondeterministic_modules(model: nn.Module) -> list[str]:
    """Ops without a deterministic CUDA kernel that torch does not warn about, found in `model`."""
    found = []
    for module in model.modules():
        op = _SILENT_NONDETERMINISTIC_MODULES.get(type(module).__name__)
        if op and op not in found:
            found.append(op)
    return found
