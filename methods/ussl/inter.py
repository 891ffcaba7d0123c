"""Inter-similarity learning (U-SSL Sec. III-C2, Eq. 9-11): a deformable convolution aligns the
feature block of a reference image (another camera) to the input's, with offsets estimated by
non-local blocks over the concatenation [X, X^] at several scales; a classifier on X (+) X~ is
trained with the pseudo labels (L_S).

Why torchvision.ops.deform_conv2d: it is the reference implementation of Dai et al.'s deformable
convolution (Eq. 9). Its CUDA backward accumulates with atomics and has no deterministic variant,
which the adapter declares so that run records list it.

Scales: the paper's 2x / 4x / 8x are read as the factors by which [X, X^] is average-pooled before
each non-local block (each position then covers 2, 4, 8 times the extent, so larger displacements
are seen); the three outputs are brought back to the block's size and a convolution, zero-initialised
as in Dai et al. (training starts from a plain convolution), maps them to the offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from methods.common.nonlocal_block import NonLocalBlock


def _pool(z: torch.Tensor, scale: int) -> torch.Tensor:
    """Average pooling by `scale` (window clipped to the map; partial windows averaged)."""
    kh, kw = min(scale, z.shape[2]), min(scale, z.shape[3])
    if kh == 1 and kw == 1:
        return z
    return F.avg_pool2d(z, (kh, kw), stride=(kh, kw), ceil_mode=True)


class OffsetEstimator(nn.Module):
    """[X, X^] -> offsets (B, 2 k k, H, W): 1x1 reduction, per scale pooling + non-local block (or
    nothing, the "w/o NB" ablation), nearest upsampling, concatenation, 3x3 conv (zero init)."""

    def __init__(self, channels: int, kernel: int, scales: tuple[int, ...], inner: int,
                 use_nonlocal: bool = True) -> None:
        super().__init__()
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"offset scales must be positive integers, got {scales}")
        self.scales = tuple(int(s) for s in scales)
        self.reduce = nn.Sequential(nn.Conv2d(2 * channels, inner, 1), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(
            NonLocalBlock(inner, max(1, inner // 2)) if use_nonlocal else nn.Identity()
            for _ in self.scales
        )
        self.head = nn.Conv2d(inner * len(self.scales), 2 * kernel * kernel, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        z = self.reduce(torch.cat([x, ref], dim=1))
        size = z.shape[2:]
        outs = [F.interpolate(block(_pool(z, s)), size=size, mode="nearest")
                for s, block in zip(self.scales, self.blocks)]
        return self.head(torch.cat(outs, dim=1))


class DeformableAlign(nn.Module):
    """X~ = deform_conv2d(X^, offsets(X, X^), w) (Eq. 9): the reference block sampled at the learned
    offsets, so that its patches line up with the input's."""

    def __init__(self, channels: int, kernel: int, scales: tuple[int, ...], inner: int,
                 use_nonlocal: bool = True) -> None:
        super().__init__()
        self.kernel = int(kernel)
        self.offsets = OffsetEstimator(channels, self.kernel, scales, inner, use_nonlocal)
        self.weight = nn.Parameter(torch.empty(channels, channels, self.kernel, self.kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        offset = self.offsets(x, ref)
        return deform_conv2d(ref, offset, self.weight, self.bias, padding=self.kernel // 2)


class CosineClassifier(nn.Module):
    """logits = s cos(z, w_c): a classifier whose rows can be set to class prototypes."""

    def __init__(self, in_features: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max(1, int(num_classes)), in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = float(scale)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).T


class InterSimilarity(nn.Module):
    """Alignment plus the classifier Theta on GAP(X (+) X~) (Eq. 11); `reset_classifier` re-creates
    Theta (the paper re-initialises it every N iterations; pseudo classes also change in number).
    Theta is a linear layer, or with `cosine` a cosine classifier whose rows start at given class
    prototypes."""

    def __init__(self, channels: int, num_classes: int, *, kernel: int = 3,
                 scales: tuple[int, ...] = (2, 4, 8), inner: int = 64,
                 use_nonlocal: bool = True, cosine: bool = False, scale: float = 10.0) -> None:
        super().__init__()
        self.channels = int(channels)
        self.cosine = bool(cosine)
        self.scale = float(scale)
        self.align = DeformableAlign(channels, kernel, scales, inner, use_nonlocal)
        self.classifier = self._new_classifier(num_classes)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        if self.cosine:
            return CosineClassifier(2 * self.channels, num_classes, self.scale)
        return nn.Linear(2 * self.channels, max(1, int(num_classes)))

    def reset_classifier(self, num_classes: int, prototypes: torch.Tensor | None = None) -> None:
        """A fresh Theta for `num_classes` classes (random weights from torch's global RNG); a
        cosine Theta takes `prototypes` (C, 2 channels) as its rows when given."""
        device = self.align.weight.device
        self.classifier = self._new_classifier(num_classes).to(device)
        if prototypes is not None:
            if not self.cosine:
                raise ValueError("prototype rows need the cosine classifier")
            with torch.no_grad():
                self.classifier.weight.copy_(prototypes.to(device))

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        aligned = self.align(x, ref)
        pooled = torch.cat([x, aligned], dim=1).mean(dim=(2, 3))
        return self.classifier(pooled)
