"""Image transforms: one evaluation transform for every method, and the re-ID training augmentations.

Why shared: the harness evaluates every encoder through `test_transform`, so a method trained with
a different resize or normalisation would be scored on inputs it never saw; methods build their
training pipeline from `train_transform` with the augmentations re-ID papers use (horizontal flip,
pad + random crop, random erasing; Zhong et al. 2020 for erasing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageTransform = Callable[[Image.Image], torch.Tensor]


def _size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"transform size must be positive (H, W), got {size}")
    return h, w


def test_transform(size: tuple[int, int]) -> ImageTransform:
    """Resize to (H, W) (bicubic), to tensor, ImageNet normalisation."""
    return T.Compose([
        T.Resize(_size(size), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def train_transform(
    size: tuple[int, int],
    *,
    flip: bool = True,
    pad: int = 10,
    erasing: float = 0.5,
    color_jitter: float = 0.0,
) -> ImageTransform:
    """Resize, random horizontal flip, zero-pad by `pad` then random crop back to (H, W), optional
    colour jitter (brightness, contrast and saturation by up to +-`color_jitter`, hue by up to
    +-`color_jitter` / 4), to tensor, normalise, random erasing with probability `erasing` (area
    2-40 %, aspect 0.3-3.3, filled with 0 = the mean colour after normalisation).

    Random draws come from torch's generator of the process (or DataLoader worker) that applies it.
    """
    h, w = _size(size)
    steps: list[Callable] = [T.Resize((h, w), interpolation=T.InterpolationMode.BICUBIC)]
    if flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    if pad > 0:
        steps += [T.Pad(pad), T.RandomCrop((h, w))]
    if color_jitter > 0:
        c = float(color_jitter)
        steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5)))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erasing > 0:
        steps.append(T.RandomErasing(p=erasing, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=0))
    return T.Compose(steps)


test_transform.__test__ = False  # not a pytest test, even when a test module imports it by name
