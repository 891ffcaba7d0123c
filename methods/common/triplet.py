"""Batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss", 2017).

Why shared: re-ID methods that train on pseudo labels with PK batches (P classes x K images) add a
triplet term to their classification or memory loss; for each anchor the batch's farthest positive
and closest negative form the triplet, which needs nothing but the batch and its labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances; clamped before the square root so the gradient stays finite
    on the diagonal."""
    sq = (features * features).sum(1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * features @ features.t()
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3, *, normalize: bool = True
) -> torch.Tensor:
    """mean over anchors of max(0, max_p d(a, p) - min_n d(a, n) + margin), Euclidean d.

    Positives are the other batch entries with the anchor's label (a repeated image counts), an
    anchor without a positive or without a negative in the batch is left out; a batch where none
    is left gives 0 (still connected to the graph). `normalize` L2-normalises the features first.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features (B, D) and labels (B,) expected, got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x = F.normalize(features, dim=1) if normalize else features
    dist = pairwise_euclidean(x)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
