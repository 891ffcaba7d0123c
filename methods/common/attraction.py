"""The attracted loss (FGU Eq. 3; the centre loss of Wen et al., ECCV 2016): pull each feature toward
its cluster's centre.

Why apart from `losses`: the memory softmaxes there push clusters apart; this term only shrinks the
spread inside a cluster, and its centres are fixed targets computed outside the loss (FGU: the
cluster means after each merge step), so it takes them as a constant.
"""

from __future__ import annotations

import torch


def attracted_loss(
    features: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of 1/2 ||v_i - c_{y_i}||^2 (Eq. 3 up to the batch mean). `features` are
    used as given (normalise them first where the paper's v is a unit vector); no gradient reaches
    `centres`."""
    if features.ndim != 2 or centres.ndim != 2 or features.shape[1] != centres.shape[1]:
        raise ValueError(
            f"features (B, D) and centres (C, D) must share D, got {tuple(features.shape)} and "
            f"{tuple(centres.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch size {features.shape[0]}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= centres.shape[0]):
        raise ValueError(f"labels must lie in [0, {centres.shape[0]})")
    target = centres.detach().to(features.dtype)[labels.long()]
    return 0.5 * (features - target).pow(2).sum(dim=1).mean()
