"""Intra-similarity learning (U-SSL Sec. III-C1, Eq. 6-8): J channel part attention modules, a shared
embedding g, an adversary A behind a gradient reversal layer, and the proximal regulariser.

Why the gradient reversal layer: Eq. 7 is a max-min game (A minimises the discrepancy among the
J subject-attention outputs SA[j]; the backbone, the CPAMs and g maximise it so that the CPAMs attend
to different channels). With A behind the layer, adding lambda1 * L_Adv to the loss trains A to
minimise it and everything before the layer to maximise it, in one backward pass (the paper says so).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from methods.common.gradient_reversal import GradientReversal


class ChannelPartAttention(nn.Module):
    """CPAM[j] = U * sigmoid(W2 ReLU(W1 GAP(U))) (Eq. 6), W1: C -> hidden, W2: hidden -> C."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gates(self, u: torch.Tensor) -> torch.Tensor:
        """(B, C) channel weights in [0, 1]."""
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(u.mean(dim=(2, 3))))))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.gates(u)[:, :, None, None]


class IntraSimilarity(nn.Module):
    """J CPAMs on the last feature block U, a shared embedding g (GAP -> Linear -> BN) giving SA[j],
    and the adversary A (two linear layers) behind a gradient reversal layer.

    `forward(u)` returns the attended block (the mean of the J reweighted blocks, what the embedding
    and the inter-similarity branch see) and the J subject-attention outputs SA[j], (J, B, D)."""

    def __init__(self, channels: int, parts: int, sa_dim: int, adv_dim: int,
                 hidden: int = 64) -> None:
        super().__init__()
        if parts < 1:
            raise ValueError(f"need at least one part attention module, got J={parts}")
        self.cpams = nn.ModuleList(ChannelPartAttention(channels, hidden) for _ in range(parts))
        self.embed = nn.Sequential(nn.Linear(channels, sa_dim), nn.BatchNorm1d(sa_dim))
        self.adversary = nn.Sequential(
            GradientReversal(1.0), nn.Linear(sa_dim, adv_dim), nn.ReLU(inplace=True),
            nn.Linear(adv_dim, adv_dim),
        )

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended = [cpam(u) for cpam in self.cpams]
        sa = torch.stack([self.embed(x.mean(dim=(2, 3))) for x in attended])
        return torch.stack(attended).mean(dim=0), sa

    def prior_parameters(self) -> Iterator[nn.Parameter]:
        """phi of Eq. 8: the parameters of the subject-attention learners (CPAMs and g)."""
        yield from self.cpams.parameters()
        yield from self.embed.parameters()


def adversarial_loss(adversary: nn.Module, sa: torch.Tensor) -> torch.Tensor:
    """L_Adv = sum over ordered pairs j != j' of ||A(SA[j]) - A(SA[j'])||^2 (Eq. 7), averaged over the
    batch. 0 for a single module."""
    j, b = sa.shape[:2]
    out = adversary(sa.reshape(j * b, -1)).reshape(j, b, -1)
    diff = out[:, None] - out[None, :]  # (J, J, B, D)
    return diff.pow(2).sum(dim=(0, 1, 3)).mean()


def proximal_penalty(params: list[torch.Tensor], prior: list[torch.Tensor], beta: float) -> torch.Tensor:
    """beta / 2 ||phi - psi||^2 (Eq. 8): keeps the attention learners near the prior psi."""
    total = sum(((p - q.detach()) ** 2).sum() for p, q in zip(params, prior))
    return 0.5 * beta * total
