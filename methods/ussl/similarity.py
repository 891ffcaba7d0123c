"""Bilinear similarity F, L_C, the gradient-guided similarity separation and the pseudo pairs
(U-SSL Sec. III-B, Eq. 1-5).

Why the factorised form: F(x, v_c) = x^T W v_c (Eq. 2; here with x and v_c L2-normalised and a fixed
logit scale s), so the per-sample gradient of the softmax cross-entropy L_C with respect to W is an
outer product: dL_C/dW = s x (V^T (p - y))^T = a r^T with a = x (the normalised feature) and
r = s V^T (p - y) (p the softmax over the classes, y the one-hot pseudo label). Hence
  d_st = cos(g_s, g_t) = cos(a_s, a_t) cos(r_s, r_t)                         (Eq. 3)
  ||g_s - g_t||^2 = |a_s|^2 |r_s|^2 + |a_t|^2 |r_t|^2 - 2 (a_s . a_t)(r_s . r_t)
without ever forming a d x d gradient per sample, and both stay differentiable with respect to the
network (a and r depend on it), which is what L_GS trains.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GS_FORMS = ("cosine", "l2")
LABEL_MODES = ("pairs", "adopt")


class BilinearSimilarity(nn.Module):
    """F(x, v_c) = s * x^T W v_c over every class centroid (bias omitted, as the paper does). W starts
    as the identity, so F starts as the scaled cosine similarity."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"logit scale must be > 0, got {scale}")
        self.weight = nn.Parameter(torch.eye(dim))
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        return similarity_logits(x, self.weight, centroids, self.scale)


def similarity_logits(
    x: torch.Tensor, weight: torch.Tensor, centroids: torch.Tensor, scale: float
) -> torch.Tensor:
    """(B, C): s * normalise(x) W normalise(v_c); the centroids are constants (no gradient)."""
    v = F.normalize(centroids.detach().to(x.dtype), dim=1)
    return scale * F.normalize(x, dim=1) @ weight @ v.T


def gradient_factors(
    x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, r), both (B, D): the per-sample gradient of L_C = CE(logits, labels) with respect to W is
    the outer product a_i r_i^T (differentiable in x and in the logits)."""
    a = F.normalize(x, dim=1)
    p = torch.softmax(logits, dim=1)
    residual = p - F.one_hot(labels.long(), logits.shape[1]).to(p.dtype)
    r = scale * residual @ F.normalize(centroids.detach().to(p.dtype), dim=1)
    return a, r


def gradient_cosine(
    a_s: torch.Tensor, r_s: torch.Tensor, a_t: torch.Tensor, r_t: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """d_st of Eq. 3 for row-aligned pairs (s_i, t_i): (B,)."""
    ca = F.cosine_similarity(a_s, a_t, dim=1, eps=eps)
    cr = F.cosine_similarity(r_s, r_t, dim=1, eps=eps)
    return ca * cr


def gradient_cosine_matrix(
    a: torch.Tensor, r: torch.Tensor, a2: torch.Tensor | None = None,
    r2: torch.Tensor | None = None, eps: float = 1e-12,
) -> torch.Tensor:
    """d_st for every pair (rows of (a, r) against rows of (a2, r2), default themselves): (N, M)."""
    a2 = a if a2 is None else a2
    r2 = r if r2 is None else r2

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.norm(dim=1, keepdim=True).clamp_min(eps)

    return (unit(a) @ unit(a2).T) * (unit(r) @ unit(r2).T)


def gradient_sq_distance(
    a_s: torch.Tensor, r_s: torch.Tensor, a_t: torch.Tensor, r_t: torch.Tensor
) -> torch.Tensor:
    """||g_s - g_t||^2 (the Frobenius distance of the outer products) for row-aligned pairs: (B,)."""
    ns = (a_s * a_s).sum(1) * (r_s * r_s).sum(1)
    nt = (a_t * a_t).sum(1) * (r_t * r_t).sum(1)
    cross = (a_s * a_t).sum(1) * (r_s * r_t).sum(1)
    return ns + nt - 2 * cross


def gradient_separation_loss(d: torch.Tensor, alpha: float = 2.0, delta: float = 0.25) -> torch.Tensor:
    """L_GS = E[1 - alpha / 2 (d_st - delta)^2] (Eq. 4): pairs above delta are pushed up, pairs
    below it down; dL/dd_st = -alpha (d_st - delta) per pair (divided by the number of pairs)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if d.numel() == 0:
        return d.sum()
    return (1.0 - 0.5 * alpha * (d - delta) ** 2).mean()


# -- pseudo pairs and pseudo labels ---------------------------------------------------------------
@torch.no_grad()
def best_partners(
    a: torch.Tensor, r: torch.Tensor, camids: np.ndarray, *, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's partner: the image of another camera with the highest gradient similarity d_st
    (any other image when no other camera exists). Returns (partner index, d_st), both (N,)."""
    n = a.shape[0]
    if n < 2:
        raise ValueError("need at least 2 images to pair")
    cams = torch.as_tensor(np.array(camids, dtype=np.int64), device=a.device)
    multi = bool((cams != cams[0]).any())
    partner = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        d = gradient_cosine_matrix(a[start:stop], r[start:stop], a, r).double()
        rows = torch.arange(stop - start, device=a.device)
        if multi:
            d = d.masked_fill(cams[start:stop, None] == cams[None, :], -float("inf"))
        else:
            d[rows, rows + start] = -float("inf")
        value, index = d.max(dim=1)
        partner[start:stop] = index.cpu().numpy()
        score[start:stop] = value.cpu().numpy()
    return partner, score


def mutual_pairs(partner: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """(k, 2) pairs i < j that are each other's partner with d_st > threshold: the pseudo pairs."""
    partner = np.asarray(partner)
    i = np.arange(partner.size)
    keep = (partner[partner] == i) & (i < partner) & (np.asarray(score) > threshold)
    return np.stack([i[keep], partner[keep]], axis=1).astype(np.int64)


def adopt_labels(labels: np.ndarray, pairs: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Each pseudo pair is put in one class: the less confident image (lower softmax probability of
    its own label; ties: the higher index) takes the other's label. Labels are then renumbered
    0..C'-1 in the order of their old ids. Individuals move, classes are never merged wholesale."""
    out = np.asarray(labels, dtype=np.int64).copy()
    conf = np.asarray(confidence, dtype=np.float64)
    for s, t in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        keep, move = (s, t) if conf[s] >= conf[t] else (t, s)
        out[move] = labels[keep]
    _, inverse = np.unique(out, return_inverse=True)
    return inverse.astype(np.int64)


def pair_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    """Pseudo labels that cluster images in pseudo pairs: each pair one class, every other image its
    own class; numbered 0..C-1 by the smallest image index of each class."""
    labels = np.arange(n, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    labels[pairs.max(axis=1)] = pairs.min(axis=1)
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64)
