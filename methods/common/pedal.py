"""PEDAL, the patch-based discriminative feature learning loss (Yang et al., CVPR 2019, Eq. 6 of FGU),
and the per-patch memory it reads.

Why a shared piece: PEDAL is a self-contained unsupervised loss on part features (one memory of
patch features per patch position, k nearest memory patches as soft positives), used by FGU as its
local branch and usable by any method that splits a feature map into parts. The memory is a
constant inside the loss (gradients reach the batch's patch features only) and is updated after the
backward pass, like every memory in `methods.common.memory`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.memory import momentum_update_


def stripe_features(feature_map: torch.Tensor, num_stripes: int) -> torch.Tensor:
    """Average of each of `num_stripes` horizontal stripes of a (B, C, H, W) map: (B, U, C).

    Stripes have equal height when U divides H (adaptive pooling's bins otherwise, which overlap
    by at most one row)."""
    if feature_map.ndim != 4:
        raise ValueError(f"feature map must be (B, C, H, W), got {tuple(feature_map.shape)}")
    if num_stripes < 1:
        raise ValueError(f"num_stripes must be >= 1, got {num_stripes}")
    pooled = F.adaptive_avg_pool2d(feature_map, (int(num_stripes), 1))  # (B, C, U, 1)
    return pooled.squeeze(3).transpose(1, 2)


def pedal_loss(
    patches: torch.Tensor,
    memory: torch.Tensor,
    indices: torch.Tensor,
    *,
    k: int,
    scale: float,
) -> torch.Tensor:
    """PEDAL (FGU Eq. 6), averaged over the batch and then over the U patch positions:

        L^u_i = -log( sum_{w in kNN^u_i} exp(-s/2 ||x^u_i - w||^2)
                      / sum_{j != i} exp(-s/2 ||x^u_i - W^u_j||^2) )

    patches: (B, U, D) the batch's patch features; memory: (U, N, D) the memory of every training
    image's patches; indices: (B,) the batch images' rows in the memory (their own slot is left out
    of both sums); kNN^u_i: the k memory patches at position u nearest to x^u_i (k is capped at
    N - 1). Computed with log-sum-exp, so large s does not underflow.
    """
    if patches.ndim != 3 or memory.ndim != 3:
        raise ValueError(
            f"patches (B, U, D) and memory (U, N, D) expected, got {tuple(patches.shape)} and "
            f"{tuple(memory.shape)}"
        )
    b, u, d = patches.shape
    if memory.shape[0] != u or memory.shape[2] != d:
        raise ValueError(
            f"memory {tuple(memory.shape)} does not match patches {tuple(patches.shape)} "
            "(U and D must agree)"
        )
    n = memory.shape[1]
    if n < 2:
        raise ValueError(f"PEDAL needs at least 2 memory slots, got {n}")
    if indices.shape != (b,):
        raise ValueError(f"indices shape {tuple(indices.shape)} != batch size {b}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    k = min(int(k), n - 1)
    x = patches.transpose(0, 1)  # (U, B, D)
    bank = memory.detach().to(x.dtype)
    sq = torch.cdist(x, bank).pow(2)  # (U, B, N)
    own = F.one_hot(indices.to(sq.device).long(), n).bool().unsqueeze(0).expand_as(sq)
    logits = (-0.5 * float(scale) * sq).masked_fill(own, float("-inf"))
    near = logits.topk(k, dim=2).values  # the k nearest: largest -s/2 d^2
    loss = torch.logsumexp(logits, dim=2) - torch.logsumexp(near, dim=2)  # (U, B)
    return loss.mean()


class PatchMemory(nn.Module):
    """One L2-normalised feature per (patch position, training image): buffer `features` (U, N, D),
    updated per instance by slot <- normalise(momentum * slot + (1 - momentum) * x)."""

    def __init__(self, features: torch.Tensor, *, momentum: float = 0.5) -> None:
        super().__init__()
        if features.ndim != 3:
            raise ValueError(f"features must be (U, N, D), got {tuple(features.shape)}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer(
            "features", F.normalize(features.detach().float(), dim=2).contiguous().clone()
        )

    @torch.no_grad()
    def update(self, patches: torch.Tensor, indices: torch.Tensor) -> None:
        """patches (B, U, D) of the images `indices` (B,)."""
        u, n, d = self.features.shape
        flat = self.features.view(u * n, d)  # shares storage: updates land in `features`
        indices = indices.to(flat.device).long()
        slots = (torch.arange(u, device=flat.device).unsqueeze(1) * n + indices).reshape(-1)
        values = F.normalize(patches.detach().float(), dim=2).transpose(0, 1).reshape(-1, d)
        momentum_update_(flat, slots, values, self.momentum)
