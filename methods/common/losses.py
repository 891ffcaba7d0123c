"""Memory-based non-parametric softmax losses (ClusterNCE, BUC's repelled loss).

Why together: both are a cross-entropy over the cosine similarities between a batch of features
and a memory bank divided by a temperature, with the sample's cluster as the target; they differ in
what the bank holds (cluster centroids vs. BUC's cluster features) and how it is updated, which is
the business of `methods.common.memory`. The bank is a constant here: gradients flow to the
features only, and the memory is updated after the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(features: torch.Tensor, labels: torch.Tensor, bank: torch.Tensor, temperature: float):
    if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(
            f"features (B, D) and memory (C, D) must share D, got {tuple(features.shape)} and "
            f"{tuple(bank.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch size {features.shape[0]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= bank.shape[0]):
        raise ValueError(
            f"labels must lie in [0, {bank.shape[0]}) (outliers removed before the loss), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def memory_logits(features: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(f_i, bank_j) / temperature, features L2-normalised here, the bank taken as given."""
    return F.normalize(features, dim=1) @ bank.detach().to(features.dtype).t() / temperature


def cluster_nce(
    features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """ClusterNCE (Dai et al., Eq. 3): mean over the batch of
    -log( exp(q . c_y / tau) / sum_k exp(q . c_k / tau) ), q the normalised feature, c the
    centroids, y the pseudo label."""
    _check(features, labels, centroids, temperature)
    return F.cross_entropy(memory_logits(features, centroids, temperature), labels.long())


def repelled_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    memory: torch.Tensor,
    temperature: float,
    *,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """BUC's repelled loss (Lin et al., AAAI 2019, Eq. 1-2): softmax over the similarities to every
    cluster feature V_j / tau, target = the sample's cluster; optional per-cluster weights."""
    _check(features, labels, memory, temperature)
    return F.cross_entropy(
        memory_logits(features, memory, temperature), labels.long(), weight=class_weights
    )
