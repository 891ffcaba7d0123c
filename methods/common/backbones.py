"""Backbones: torchvision ResNet-50 for the `paper` profile, a small ResNet for `quick` / `ci`.

Why this module exists apart from torchvision: runs are offline and reproducible, so ImageNet weights
come only from a local file (`--weights`, else torch's hub cache) and a missing file is an error that
says where it looked, never a download. Every backbone returns pooled features (B, D) and states
`feature_dim`, so a method can put its own head on top (e.g. the BN neck of the Cluster Contrast
family) and a backbone alone is already an encoder (the direct-transfer baseline).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

if TYPE_CHECKING:
    from benchmark.engine.contract import RunContext
    from benchmark.engine.profiles import Profile

BACKBONES = ("resnet50", "resnet-tiny")
TINY_WIDTHS = (16, 32, 64, 128)


class BackboneWeightsError(FileNotFoundError):
    """Pretrained weights were asked for but no usable local file exists."""


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenovic et al.): (mean x^p)^(1/p) over space; p = 1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


def _pooling(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "max":
        return nn.AdaptiveMaxPool2d(1)
    if kind == "gem":
        return GeneralizedMeanPooling()
    raise ValueError(f"unknown pooling {kind!r}; choose avg, max or gem")


class PooledBackbone(nn.Module):
    """A convolutional trunk followed by global pooling: images (B, 3, H, W) -> features (B, D)."""

    def __init__(self, trunk: nn.Module, feature_dim: int, pooling: str = "avg") -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = _pooling(pooling)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.trunk(x)), 1)


class BNNeckEncoder(nn.Module):
    """Backbone -> BatchNorm1d neck (bias frozen at 0) -> L2-normalised at eval time.

    The re-ID head of the Cluster Contrast family: training sees the BN output (the memory
    normalises it), evaluation and pseudo-labelling see unit vectors.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        self.neck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.neck(self.backbone(x))
        return features if self.training else F.normalize(features, dim=1)


# -- resnet-tiny ----------------------------------------------------------------------------------
def _stage(inplanes: int, planes: int, stride: int) -> nn.Module:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    return BasicBlock(inplanes, planes, stride=stride, downsample=downsample)


def _tiny_trunk(last_stride: int) -> nn.Module:
    w = TINY_WIDTHS
    trunk = nn.Sequential(
        nn.Conv2d(3, w[0], 3, stride=2, padding=1, bias=False),  # stride 2: cheap at 64x32
        nn.BatchNorm2d(w[0]),
        nn.ReLU(inplace=True),
        _stage(w[0], w[0], 1),
        _stage(w[0], w[1], 2),
        _stage(w[1], w[2], 2),
        _stage(w[2], w[3], last_stride),
    )
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return trunk


# -- resnet50 -------------------------------------------------------------------------------------
def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_resnet50_weights(weights: str | Path | None) -> Path:
    """The weights file to use: `weights` if given, else the newest resnet50-*.pth in the hub cache."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"resnet50: ImageNet weights file {path} does not exist (given by --weights); "
                "nothing is downloaded at run time"
            )
        return path
    cache = hub_checkpoint_dir()
    found = sorted(cache.glob("resnet50-*.pth")) if cache.is_dir() else []
    if not found:
        raise BackboneWeightsError(
            f"resnet50: no ImageNet weights found: no --weights file given and no resnet50-*.pth in "
            f"the torch hub cache {cache}. Nothing is downloaded at run time: put torchvision's "
            "resnet50-*.pth there or pass --weights PATH (or use a profile without pretrained "
            "weights, e.g. --profile quick)"
        )
    return found[-1]


def _load_resnet50_state(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        # unreadable, truncated, not a tensor file, or holding objects weights_only refuses
        raise BackboneWeightsError(f"resnet50: cannot read weights file {path}: {exc}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise BackboneWeightsError(f"resnet50: {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}


def _resnet50_trunk(pretrained: bool, weights: str | Path | None, last_stride: int) -> nn.Module:
    state, path = None, None
    if pretrained:  # find and read the file before building 25M parameters
        path = find_resnet50_weights(weights)
        state = _load_resnet50_state(path)
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BackboneWeightsError(
                f"resnet50: {path} does not match torchvision's ResNet-50 "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
    if last_stride != 2:
        net.layer4[0].conv2.stride = (last_stride, last_stride)
        net.layer4[0].downsample[0].stride = (last_stride, last_stride)
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def build_backbone(
    name: str,
    *,
    pretrained: bool,
    weights: str | Path | None = None,
    last_stride: int = 2,
    pooling: str = "avg",
) -> nn.Module:
    """A pooled backbone with attribute `feature_dim` (2048 for resnet50, 128 for resnet-tiny).

    Random initialisation draws from torch's global generator: build under a seeded
    `torch.random.fork_rng` for a seeded model.
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if name == "resnet50":
        return PooledBackbone(_resnet50_trunk(pretrained, weights, last_stride), 2048, pooling)
    if name == "resnet-tiny":
        if pretrained:
            raise BackboneWeightsError(
                "resnet-tiny has no ImageNet weights; profiles that use it start from their "
                "pretrained stand-in (methods.common.standin) or random init"
            )
        return PooledBackbone(_tiny_trunk(last_stride), TINY_WIDTHS[-1], pooling)
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


# -- seeding --------------------------------------------------------------------------------------
def draw_seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from a run's torch generator (advances it, so resumes stay in step)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())


@contextmanager
def forked_torch_rng(
    seed: int, device: torch.device | str = "cpu", *, per_rank: bool = False
) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU, and `device` if CUDA) seeded from `seed`, and
    restore the outer state afterwards: what the block draws (weight init, augmentations) then
    depends on the run's generators only, not on what ran before in the process.

    `per_rank` (a training epoch's block): under torchrun each rank forks its own seed from `seed`
    (`distributed.rank_seed`; rank 0 and a single process keep `seed`), so ranks augment their
    slices of a batch with different draws. Leave it off where every rank must draw the same
    (weight init)."""
    if per_rank:
        from benchmark.engine.distributed import rank_seed

        seed = rank_seed(seed)
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def standin_path(profile: "Profile", task: str, random_init: bool = False) -> Path | None:
    """The pretrained stand-in's weights file a run's backbone starts from (built on first use),
    or None when it starts from ImageNet weights or random init."""
    if random_init or profile.standin is None or task != "reid":
        return None
    from methods.common.standin import standin_weights

    return standin_weights(profile.standin)


def load_trunk(model: nn.Module, path: Path) -> None:
    """Load a pooled backbone's trunk weights saved by the stand-in builder (all keys must match)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    trunk = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
    model.trunk.load_state_dict(trunk, strict=True)


def run_backbone(ctx: RunContext, *, last_stride: int = 2, pooling: str = "avg") -> nn.Module:
    """The run profile's backbone (`ctx.profile.backbone`): ImageNet weights per profile from
    `ctx.weights` or the hub cache, or the profile's pretrained stand-in on re-ID data, or random
    (`ctx.random_init`); randomly initialised parts seeded from `ctx.torch_generator`; on
    `ctx.device`."""
    with forked_torch_rng(draw_seed(ctx.torch_generator), ctx.device):
        model = build_backbone(
            ctx.profile.backbone, pretrained=ctx.profile.pretrained and not ctx.random_init,
            weights=ctx.weights, last_stride=last_stride, pooling=pooling,
        )
    standin = standin_path(ctx.profile, ctx.task, ctx.random_init)
    if standin is not None:
        load_trunk(model, standin)
    return model.to(ctx.device)
