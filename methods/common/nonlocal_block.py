"""Non-local block (Wang et al., CVPR 2018), embedded-Gaussian form, with a residual connection.

Why shared: a non-local block relates every position of a feature map to every other one
(o_j = z_j + W_o 1/N(z) sum_i exp(theta(z_j)^T phi(z_i)) W_v z_i, the softmax being the
normalisation), the standard way to let a prediction at one position depend on distant ones; methods
use it for attention and for offset estimation alike.
"""

from __future__ import annotations

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    """(B, C, H, W) -> (B, C, H, W). `zero_init` starts the output projection W_o at zero, so the
    block begins as the identity (Wang et al.'s initialisation of the last BN's scale)."""

    def __init__(self, channels: int, inner: int | None = None, *, zero_init: bool = True) -> None:
        super().__init__()
        inner = int(inner) if inner is not None else max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def attention(self, z: torch.Tensor) -> torch.Tensor:
        """(B, HW, HW): row j is the normalised u(z_j, z_i) = exp(theta_j^T phi_i) / N(z)."""
        q = self.theta(z).flatten(2).transpose(1, 2)  # (B, HW, inner)
        k = self.phi(z).flatten(2)  # (B, inner, HW)
        return torch.softmax(q @ k, dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        v = self.value(z).flatten(2).transpose(1, 2)  # (B, HW, inner)
        y = (self.attention(z) @ v).transpose(1, 2).reshape(b, -1, h, w)
        return z + self.out(y)
