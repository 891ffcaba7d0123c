"""The U-SSL network: backbone blocks, intra-similarity attention on the last block, the embedding
x that F(x, v_c) scores, and the two test-time encoders (plain and "*").

Why the backbone is split: the "*" variant (Tables II-IV, "U-SSL (ResNet-50*)") concatenates the
globally pooled features of every residual stage, so the network keeps the stages apart. Both
backbones of the harness end in four residual stages (ResNet-50's layer1-4, resnet-tiny's four
BasicBlock stages); everything before them is the stem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.ussl.intra import IntraSimilarity

NUM_STAGES = 4


def stage_widths(trunk: nn.Sequential, image_size: tuple[int, int]) -> list[int]:
    """Output channels of the last four children of the trunk (probed with one tiny forward)."""
    was = trunk.training
    trunk.eval()
    widths = []
    with torch.no_grad():
        x = torch.zeros(1, 3, *image_size, device=next(trunk.parameters()).device)
        children = list(trunk.children())
        for i, module in enumerate(children):
            x = module(x)
            if i >= len(children) - NUM_STAGES:
                widths.append(int(x.shape[1]))
    trunk.train(was)
    return widths


class USSLNetwork(nn.Module):
    """images -> (last block U, attended block, SA[j], embedding x). `forward` is the test-time
    encoder: the L2-normalised embedding, or with `star` the normalised concatenation of the
    L2-normalised pooled features of stages 1-3 and of the embedding (which stands for stage 4)."""

    def __init__(self, backbone: nn.Module, *, image_size: tuple[int, int], feature_dim: int,
                 intra: bool, parts: int, cpam_hidden: int, sa_dim: int, adv_dim: int,
                 star: bool = False) -> None:
        super().__init__()
        trunk = backbone.trunk
        children = list(trunk.children())
        if len(children) <= NUM_STAGES:
            raise ValueError("the backbone trunk must be a stem followed by four residual stages")
        widths = stage_widths(trunk, image_size)
        self.stem = nn.Sequential(*children[:-NUM_STAGES])
        self.stages = nn.ModuleList(children[-NUM_STAGES:])
        self.channels = widths[-1]
        self.stage_widths = widths
        self.intra = IntraSimilarity(self.channels, parts, sa_dim, adv_dim, cpam_hidden) \
            if intra else None
        self.head = nn.Linear(self.channels, feature_dim)
        self.neck = nn.BatchNorm1d(feature_dim)
        nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
        nn.init.zeros_(self.head.bias)
        self.feature_dim = int(feature_dim)
        self.star = bool(star)

    def blocks(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def attend(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.intra is None:
            return u, None
        return self.intra(u)

    def embed_block(self, attended: torch.Tensor) -> torch.Tensor:
        return self.neck(self.head(attended.mean(dim=(2, 3))))

    def train_forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        u = self.blocks(images)[-1]
        attended, sa = self.attend(u)
        return {"block": u, "attended": attended, "sa": sa, "x": self.embed_block(attended)}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding x (what F scores and pseudo pairs are built from)."""
        attended, _ = self.attend(self.blocks(images)[-1])
        return F.normalize(self.embed_block(attended), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.star:
            return self.embed(images)
        blocks = self.blocks(images)
        attended, _ = self.attend(blocks[-1])
        parts = [F.normalize(b.mean(dim=(2, 3)), dim=1) for b in blocks[:-1]]
        parts.append(F.normalize(self.embed_block(attended), dim=1))
        return F.normalize(torch.cat(parts, dim=1), dim=1)


class PairingFeatures(nn.Module):
    """[normalised embedding x, GAP of the attended block] per image, whatever the `star` flag: what
    pseudo pairs and the prototypes of the inter-similarity classifier are computed from."""

    def __init__(self, net: USSLNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        attended, _ = self.net.attend(self.net.blocks(images)[-1])
        x = F.normalize(self.net.embed_block(attended), dim=1)
        return torch.cat([x, attended.mean(dim=(2, 3))], dim=1)
