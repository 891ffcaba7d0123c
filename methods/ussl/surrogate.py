"""Surrogate classes (U-SSL Sec. III-A): patches, K random transformations each, the pixel-level RGB
mean of each transformed set, k-means into C classes.

Why this form: the surrogate classes are U-SSL's only initial supervision. Each image is cut into a
grid of patches (a 128x64 image into four 64x32 patches in the paper); each patch is transformed K
times (flip, translation up to 0.2 of the patch size, scaling in [0.7, 1.4], rotation up to 20
degrees, then colour jitter) and the K results are averaged pixel by pixel into one mean vector m_i;
k-means over the m_i gives the classes and their centroids v_c. An image's initial pseudo label is
its nearest surrogate class (the paper's "1-nearest neighbour across the surrogate classes"), read
here as the class minimising the summed squared distance to the mean vectors of the image's patches.
All random draws come from an explicit torch generator, so the classes are a function of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from threadpoolctl import threadpool_limits

from methods.common import faiss_index
from methods.common.faiss_index import faiss

# Paper: about 8,000 classes best for the 51,744 patches of Market-1501 (12,936 images x 4 patches).
PAPER_CLASS_RATIO = 8000 / (12936 * 4)


def load_images(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Images resized (bicubic, as the harness's transforms) to (H, W): float (N, 3, H, W) in [0, 1]."""
    h, w = (int(s) for s in size)
    out = torch.empty(len(images), 3, h, w)
    for i in range(len(images)):
        img = images[i].convert("RGB").resize((w, h), Image.BICUBIC)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return out


def patch_grid(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, grid * grid, 3, H / grid, W / grid): the non-overlapping patch grid."""
    n, c, h, w = images.shape
    if grid < 1 or h % grid or w % grid:
        raise ValueError(f"a {grid}x{grid} patch grid does not tile {h}x{w} images")
    ph, pw = h // grid, w // grid
    patches = images.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, grid * grid, c, ph, pw)


def random_affine(
    patches: torch.Tensor, generator: torch.Generator, *, max_translate: float = 0.2,
    scale: tuple[float, float] = (0.7, 1.4), max_rotation: float = 20.0, flip: bool = True,
) -> torch.Tensor:
    """Each patch warped by its own random flip, translation (fraction of the patch size), scaling
    and rotation (degrees); borders reflected."""
    p = patches.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(p, generator=generator)

    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    s = uniform(*scale)
    tx, ty = uniform(-max_translate, max_translate), uniform(-max_translate, max_translate)
    mirror = torch.where(torch.rand(p, generator=generator) < 0.5, -1.0, 1.0) if flip \
        else torch.ones(p)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    # affine_grid maps output to input coordinates: the inverse warp (zoom s = sampling 1/s).
    theta = torch.stack([
        torch.stack([cos * mirror, -sin, -2 * tx], dim=1),
        torch.stack([sin * mirror, cos, -2 * ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(patches.shape), align_corners=False)
    return F.grid_sample(patches, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def random_colour_jitter(
    patches: torch.Tensor, generator: torch.Generator, strength: float = 0.4
) -> torch.Tensor:
    """Per patch, brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]
    (torchvision's ColorJitter definitions, drawn per patch instead of per batch)."""
    if strength <= 0:
        return patches
    p = patches.shape[0]

    def factor() -> torch.Tensor:
        return (1 - strength + 2 * strength * torch.rand(p, generator=generator)).view(p, 1, 1, 1)

    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = (patches * factor()).clamp(0, 1)
    grey_mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (grey_mean + factor() * (x - grey_mean)).clamp(0, 1)
    grey = (x * weights).sum(1, keepdim=True)
    return (grey + factor() * (x - grey)).clamp(0, 1)


def transformed_means(
    patches: torch.Tensor, k: int, generator: torch.Generator, *, chunk: int = 4096,
    max_translate: float = 0.2, scale: tuple[float, float] = (0.7, 1.4),
    max_rotation: float = 20.0, jitter: float = 0.4,
) -> torch.Tensor:
    """(P, 3, h, w) -> (P, 3 h w): m_i, the pixel-level mean of K random transformations of patch i
    (accumulated transformation by transformation, so memory does not grow with K)."""
    if k < 1:
        raise ValueError(f"K (transformations per patch) must be >= 1, got {k}")
    out = torch.zeros(patches.shape[0], patches[0].numel())
    for start in range(0, patches.shape[0], chunk):
        part = patches[start:start + chunk]
        acc = torch.zeros_like(part)
        for _ in range(k):
            warped = random_affine(part, generator, max_translate=max_translate, scale=scale,
                                   max_rotation=max_rotation)
            acc += random_colour_jitter(warped, generator, jitter)
        out[start:start + chunk] = (acc / k).flatten(1)
    return out


def num_surrogate_classes(num_patches: int, ratio: float) -> int:
    """C = round(ratio * patches), at least 2 and at most the number of patches."""
    if num_patches < 2:
        raise ValueError(f"need at least 2 patches for surrogate classes, got {num_patches}")
    return int(min(num_patches, max(2, round(ratio * num_patches))))


@contextmanager
def _single_thread() -> Iterator[None]:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


def kmeans(
    vectors: torch.Tensor, num_classes: int, *, seed: int, niter: int = 20, gpu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means: (centroids (C, D) float32, assignment (P,) int64). On the CPU it runs on one
    thread, so the same seed gives the same classes on every machine."""
    x = np.ascontiguousarray(vectors.detach().cpu().numpy(), dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], int(num_classes), niter=int(niter), seed=int(seed) % 2**31,
                      gpu=bool(gpu and faiss_index.num_gpus() > 0), verbose=False,
                      min_points_per_centroid=1,
                      max_points_per_centroid=max(256, math.ceil(x.shape[0] / num_classes)))
    faiss_index.note("kmeans", "faiss-gpu" if km.gpu else "faiss-cpu")
    if km.gpu:
        km.train(x)
    else:
        with _single_thread():
            km.train(x)
    centroids = km.centroids.copy()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    _, assign = index.search(x, 1)
    return centroids, assign[:, 0].astype(np.int64)


def nearest_class(patch_means: torch.Tensor, centroids: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, G, D) mean vectors of each image's G patches -> (N,) the class c minimising
    sum_g ||m_g - v_c||^2, which is the class nearest to the images' average mean vector."""
    v = torch.as_tensor(centroids, dtype=torch.float64)
    avg = patch_means.double().mean(dim=1)
    dist = (v * v).sum(1)[None, :] - 2 * avg @ v.T  # ||avg - v||^2 up to a per-image constant
    return dist.argmin(dim=1).numpy().astype(np.int64)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..C'-1 in the order of their old ids (empty classes dropped)."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.astype(np.int64)


def surrogate_labels(
    images: Sequence[Image.Image], *, size: tuple[int, int], grid: int, k: int, ratio: float,
    generator: torch.Generator, seed: int, niter: int = 20, gpu: bool = False,
    max_translate: float = 0.2, scale: tuple[float, float] = (0.7, 1.4),
    max_rotation: float = 20.0, jitter: float = 0.4,
) -> tuple[np.ndarray, dict[str, float]]:
    """The whole of Sec. III-A: each image's initial pseudo label (0..C'-1, only classes that some
    image is nearest to) and a summary (patches, C, classes used)."""
    pixels = load_images(images, size)
    patches = patch_grid(pixels, grid)
    n, g = patches.shape[:2]
    flat = patches.reshape(n * g, *patches.shape[2:])
    means = transformed_means(flat, k, generator, max_translate=max_translate, scale=scale,
                              max_rotation=max_rotation, jitter=jitter)
    c = num_surrogate_classes(means.shape[0], ratio)
    centroids, _ = kmeans(means, c, seed=seed, niter=niter, gpu=gpu)
    labels = compact_labels(nearest_class(means.reshape(n, g, -1), centroids))
    return labels, {"patches": float(n * g), "surrogate_classes": float(c),
                    "image_classes": float(labels.max() + 1)}
