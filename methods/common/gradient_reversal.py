"""Gradient reversal layer (Ganin & Lempitsky, ICML 2015): identity forward, -lambda * gradient
backward.

Why a layer: an adversarial min-max game (a network maximises a loss that an adversary minimises)
becomes one ordinary minimisation when the adversary sits behind this layer: the adversary's
parameters descend the loss while everything before the layer ascends it, in a single backward pass.
"""

from __future__ import annotations

import torch
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """`x` unchanged; the gradient flowing back through it is multiplied by -`scale`."""
    if scale < 0:
        raise ValueError(f"gradient reversal scale must be >= 0, got {scale}")
    return _GradReverse.apply(x, float(scale))


class GradientReversal(nn.Module):
    """`grad_reverse` as a module (no parameters)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if scale < 0:
            raise ValueError(f"gradient reversal scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
