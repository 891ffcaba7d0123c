"""The embedded `synthetic-reid` dataset: a person re-ID problem generated from a seed.

Why it exists: the benchmark has to run end to end on a fresh CPU machine with nothing downloaded,
and the re-ID code paths (the Market-1501 file-name parser, junk and distractor handling,
cross-camera evaluation) must be exercised by something that is a real matching problem rather than
a toy. So the generator writes the exact Market-1501 layout and naming, and makes identity hard to
read off colours alone:

- an identity is a combination of attributes drawn from small, skewed palettes (most people wear
  black, grey or blue), so many identities share most of them;
- each camera has its own white balance, brightness, contrast, saturation, blur, resolution, noise
  and background scene, so the same person changes colour between cameras while different people
  seen by one camera look alike;
- images come in tracklets (one identity passing one camera), so same-camera images are near
  duplicates, as in Market, and the evaluation's same-camera exclusion matters;
- the viewpoint (front, back, left, right) decides what is visible: a logo or an open jacket only
  from the front, a backpack mostly from the back, a shoulder bag on one side;
- occlusion (objects, other people), people behind the target and detector-style crop jitter add
  the nuisances that real detections have;
- junk (-1) and distractor (0000) images sit in bounding_box_test exactly as in Market.

Determinism: one numpy Generator, seeded once, drives every random choice, in a fixed order; JPEG is
encoded with fixed quality and 4:4:4 chroma. The same seed gives identical files on one software
stack (another Pillow/libjpeg build may encode different bytes; the decoded content is the same).
The dataset is written into a temporary folder beside the target and moved in place with one
os.replace, so an interrupted run never leaves a half-written dataset where the loader looks.

GENERATOR_VERSION changes whenever the output for a given seed and config changes; the cache folder
name carries it, so a new version regenerates instead of reusing stale images.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from benchmark.data.cards import ProtocolCard
from benchmark.data.market1501 import load_market_style
from benchmark.data.registry import register_dataset
from benchmark.data.types import ReidDataset
from benchmark.paths import cache_dir

GENERATOR_VERSION = 2
DATASET_NAME = "synthetic-reid"
REGISTERED_SEED = 0
METADATA_FILE = "synthetic-reid.json"
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

_F = np.float32


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and difficulty of a generated dataset; the defaults are what the protocol card states.

    A tracklet is one identity passing one camera: its images share camera, viewpoint and lighting.
    Image and identity counts are exact for any seed: random draws decide how images spread over
    identities and cameras, never how many there are.
    """

    train_ids: int = 200
    train_tracklets: int = 700
    train_images: int = 2400
    test_ids: int = 200
    test_tracklets: int = 500
    query_images: int = 550
    gallery_images: int = 1000  # images of test identities; distractors and junk come on top
    distractors: int = 200
    junk: int = 150
    cameras: int = 6
    height: int = 128
    width: int = 64
    max_tracklet_images: int = 8
    # Difficulty.
    colour_jitter: float = 0.08  # per-identity shift of garment colours off their palette entry
    white_balance: float = 0.04  # std of each camera's log gain per RGB channel
    brightness: tuple[float, float] = (0.88, 1.12)  # camera brightness range
    saturation: tuple[float, float] = (0.9, 1.05)  # camera colour saturation range
    contrast: tuple[float, float] = (0.92, 1.08)  # camera contrast range
    gamma: tuple[float, float] = (0.92, 1.08)  # camera gamma range
    blur: tuple[float, float] = (0.3, 1.4)  # camera Gaussian blur radius range (pixels)
    resolution: tuple[float, float] = (0.35, 1.0)  # camera down-sampling factor range
    noise: tuple[float, float] = (0.01, 0.04)  # camera pixel noise std range
    image_jitter: float = 0.05  # std of per-image log brightness
    light_jitter: float = 0.06  # std of per-tracklet log brightness (sun, shade)
    light_ramp: float = 0.2  # largest brightness slope across an image (uneven light)
    view_change: float = 0.2  # chance that an image's viewpoint differs from its tracklet's
    occlusion: float = 0.15  # chance of an occluder in front of the person
    background_person: float = 0.2  # chance of another person behind
    crop_jitter: float = 0.05  # detector box shift, as a fraction of the image size
    scene_colour: float = 0.35  # colourfulness of backgrounds (0 grey, 1 the palettes' own colours)
    # Turn of the garment palettes' hues, as a fraction of the colour circle: 0 keeps them; another
    # value gives a population dressed in other colours (achromatic black, grey and white stay).
    garment_hue_shift: float = 0.0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.cameras < 2:
            raise ValueError(f"SynthConfig: cameras must be >= 2, got {self.cameras}")
        if self.cameras > 9:
            raise ValueError(
                f"SynthConfig: at most 9 cameras (names use c1..c9), got {self.cameras}"
            )
        for name in ("train", "test"):
            ids = getattr(self, f"{name}_ids")
            tracklets = getattr(self, f"{name}_tracklets")
            if ids < 1:
                raise ValueError(f"SynthConfig: {name}_ids must be >= 1, got {ids}")
            if not 2 * ids <= tracklets <= self.cameras * ids:
                raise ValueError(
                    f"SynthConfig: {name}_tracklets={tracklets} must lie in [2 * {name}_ids, "
                    f"cameras * {name}_ids] = [{2 * ids}, {self.cameras * ids}] (each identity "
                    "is seen by at least two cameras, once per camera)"
                )
        m = self.max_tracklet_images
        if not self.train_tracklets <= self.train_images <= m * self.train_tracklets:
            raise ValueError(
                f"SynthConfig: train_images={self.train_images} must lie in [train_tracklets, "
                f"max_tracklet_images * train_tracklets] = [{self.train_tracklets}, "
                f"{m * self.train_tracklets}]"
            )
        if not self.test_tracklets <= self.query_images <= 2 * self.test_tracklets:
            raise ValueError(
                f"SynthConfig: query_images={self.query_images} must lie in [test_tracklets, "
                f"2 * test_tracklets] (one or two queries per identity and camera)"
            )
        if not self.test_tracklets <= self.gallery_images <= (m - 2) * self.test_tracklets:
            raise ValueError(
                f"SynthConfig: gallery_images={self.gallery_images} must lie in [test_tracklets, "
                f"(max_tracklet_images - 2) * test_tracklets] (every query needs a gallery image "
                "of its tracklet left over)"
            )
        if self.distractors < 0 or self.junk < 0:
            raise ValueError("SynthConfig: distractors and junk must be >= 0")
        if self.height < 32 or self.width < 16:
            raise ValueError(f"SynthConfig: image size {self.height}x{self.width} is below 32x16")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(
                f"SynthConfig: jpeg_quality must be in [1, 95], got {self.jpeg_quality}"
            )

    def expected_counts(self) -> dict[str, dict[str, int]]:
        """Split sizes as the Market parser counts them (junk dropped, distractors are id 0)."""
        return {
            "train": {"images": self.train_images, "identities": self.train_ids,
                      "cameras": self.cameras},
            "query": {"images": self.query_images, "identities": self.test_ids,
                      "cameras": self.cameras},
            "gallery": {"images": self.gallery_images + self.distractors,
                        "identities": self.test_ids + (1 if self.distractors else 0),
                        "cameras": self.cameras},
        }


# --- Palettes (RGB in [0, 1]) and how often each entry is worn: skewed, so attributes repeat. ---

def _rgb(*hexes: str) -> np.ndarray:
    return np.array([[int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)] for h in hexes], dtype=_F)


UPPER = _rgb("1c1c1e", "f2f2ee", "8a8a8a", "b3202a", "2a4f9c", "1f2a48", "2f6b3a", "e3c53a",
             "e58fb0", "6a3d8f", "e07b26", "6b4a2e", "d8c7a3", "8db8e0")
UPPER_P = np.array([18, 12, 10, 6, 8, 9, 5, 3, 3, 3, 3, 4, 5, 4], dtype=float)
LOWER = _rgb("1a1a1c", "2d3f66", "5c5c60", "b9a57e", "e8e8e4", "5a4030", "34442e")
LOWER_P = np.array([30, 25, 12, 10, 4, 6, 4], dtype=float)
SKIN = _rgb("f1c9a5", "d9a27b", "a8714f", "6b4631")
SKIN_P = np.array([4, 4, 2, 1], dtype=float)
HAIR = _rgb("141210", "3b2a1e", "6e4a2c", "c9a55f", "9a9a98")
HAIR_P = np.array([10, 6, 3, 2, 1], dtype=float)
SHOES = _rgb("151515", "ececec", "5a3c26", "707070")
SHOES_P = np.array([6, 4, 2, 2], dtype=float)
BAG = _rgb("101010", "5c5c5c", "6b4a2e", "23345c", "a32c2c")
BAG_P = np.array([8, 3, 3, 2, 1], dtype=float)
# Scene colours: walls, floors, and objects (cars, bins, benches, signs).
WALL = _rgb("a8a296", "8f8f92", "9c7a66", "7c8a96", "b4ae9c", "6f8068", "a0a4a8", "8a7e72")
FLOOR = _rgb("7d7d7a", "6a6a68", "969080", "6f7a62", "8f8270")
OBJECT = _rgb("1f1f1f", "c8c8c8", "a82424", "25408a", "2f6b3a", "d9b83a", "6b4a2e", "7f7f7f")
OBJECT_P = np.array([4, 3, 1, 1, 1, 1, 2, 4], dtype=float)

# Garment pattern, lower-body kind, bag kind.
PLAIN, HSTRIPES, VSTRIPES, CHECKS, JACKET = range(5)
PATTERN_P = np.array([10, 3, 1, 2, 3], dtype=float)
TROUSERS, SHORTS, SKIRT = range(3)
LOWER_KIND_P = np.array([12, 3, 2], dtype=float)
NO_BAG, BACKPACK, SHOULDER_BAG = range(3)
BAG_KIND_P = np.array([5, 3, 2], dtype=float)
FRONT, BACK, RIGHT, LEFT = range(4)  # RIGHT / LEFT: side views facing image right / left
VIEW_P = np.array([3, 3, 2, 2], dtype=float)


def _pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    """Index drawn with probability proportional to `weights`."""
    cum = np.cumsum(weights)
    return int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))


@dataclass(frozen=True)
class Person:
    """Appearance attributes of one identity (or of a passer-by)."""

    upper: np.ndarray
    upper2: np.ndarray  # second colour of a pattern (stripes, checks, the shirt under a jacket)
    pattern: int
    period: float  # stripe / check period, in body heights
    short_sleeves: bool
    lower: np.ndarray
    lower_kind: int
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    bag_kind: int
    bag_side: int  # +1 / -1: image side of the bag in the front view
    bag: np.ndarray
    logo: np.ndarray | None
    width: float  # body width relative to an average build
    height: float  # body height relative to average (how much of the box the person fills)
    head: float  # head size relative to average


def _hue_turned(palette: np.ndarray, turn: float) -> np.ndarray:
    if turn == 0.0:
        return palette
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(palette)
    hsv[:, 0] = (hsv[:, 0] + turn) % 1.0
    return hsv_to_rgb(hsv).astype(_F)


@functools.lru_cache(maxsize=8)
def garment_palettes(turn: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(upper, lower, shoes, bag) palettes with hues turned by `turn` of the colour circle."""
    return tuple(_hue_turned(p, float(turn)) for p in (UPPER, LOWER, SHOES, BAG))  # type: ignore


def draw_person(rng: np.random.Generator, cfg: SynthConfig) -> Person:
    """Attributes drawn from the shared palettes, each colour nudged slightly for this person."""
    colour_jitter = cfg.colour_jitter
    upper_pal, lower_pal, shoes_pal, bag_pal = garment_palettes(cfg.garment_hue_shift)

    def colour(
        palette: np.ndarray, weights: np.ndarray, jitter: float = colour_jitter
    ) -> np.ndarray:
        base = palette[_pick(rng, weights)]
        return np.clip(base + rng.normal(0.0, jitter, 3), 0.0, 1.0).astype(_F)

    upper = colour(upper_pal, UPPER_P)
    upper2 = colour(upper_pal, UPPER_P)
    return Person(
        upper=upper,
        upper2=upper2,
        pattern=_pick(rng, PATTERN_P),
        period=float(rng.uniform(0.03, 0.06)),
        short_sleeves=bool(rng.random() < 0.3),
        lower=colour(lower_pal, LOWER_P),
        lower_kind=_pick(rng, LOWER_KIND_P),
        shoes=colour(shoes_pal, SHOES_P),
        skin=colour(SKIN, SKIN_P, colour_jitter / 2),
        hair=colour(HAIR, HAIR_P, colour_jitter / 2),
        long_hair=bool(rng.random() < 0.3),
        bag_kind=_pick(rng, BAG_KIND_P),
        bag_side=int(rng.choice([-1, 1])),
        bag=colour(bag_pal, BAG_P),
        logo=colour(upper_pal, UPPER_P) if rng.random() < 0.25 else None,
        width=float(rng.choice([0.88, 1.0, 1.14])),
        height=float(rng.choice([0.94, 1.0, 1.05])),
        head=float(rng.choice([0.92, 1.0, 1.08])),
    )


# --- Drawing: soft-edged shapes in body coordinates, evaluated only inside their bounding box. ---
# u runs down the body (0 top of head, 1 soles), v across it; both are in body heights. Parts are
# painted flat into a person layer with its own coverage; shading and compositing happen once.
# Images are channel-first (3, H, W) float32 while drawn: per-pixel work then runs along image rows.


def _unit(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1]; two ufuncs are several times faster than np.clip on small arrays."""
    return np.minimum(np.maximum(x, 0.0), 1.0)


# Detector boxes are tight, so a body fills more of the 1:2 box than true proportions would give:
# widths are drawn this much wider than heights.
_WIDTH_SCALE = 1.4


class _Painter:
    """Paints soft-edged parts into a person layer, touching only each part's bounding box."""

    def __init__(self, h: int, w: int, top: float, hp: float, cx: float) -> None:
        self.h, self.w, self.top, self.cx, self.hp = h, w, top, cx, hp
        self.wp = hp * _WIDTH_SCALE  # pixels per body height, across
        self.u = ((np.arange(h, dtype=_F) + 0.5 - top) / hp)[:, None]
        self.v = ((np.arange(w, dtype=_F) + 0.5 - cx) / self.wp)[None, :]
        self.layer = np.zeros((3, h, w), dtype=_F)
        self.alpha = np.zeros((h, w), dtype=_F)

    def _box(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice] | None:
        r0 = max(0, int(np.floor(self.top + u0 * self.hp)) - 1)
        r1 = min(self.h, int(np.ceil(self.top + u1 * self.hp)) + 1)
        c0 = max(0, int(np.floor(self.cx + v0 * self.wp)) - 1)
        c1 = min(self.w, int(np.ceil(self.cx + v1 * self.wp)) + 1)
        if r1 <= r0 or c1 <= c0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _fill(self, box: tuple[slice, slice], mask: np.ndarray, colour: np.ndarray) -> None:
        rows, cols = box
        if colour.ndim == 3:  # a colour field (pattern) over the whole image
            colour = colour[:, rows, cols]
        else:
            colour = colour[:, None, None]
        layer = self.layer[:, rows, cols]
        layer += mask * (colour - layer)
        alpha = self.alpha[rows, cols]
        alpha += mask * (1.0 - alpha)

    def _cut(self, u: np.ndarray, until: float | None) -> np.ndarray | float:
        return 1.0 if until is None else _unit((until - u) * self.hp + 0.5)

    def quad(self, u0: float, u1: float, c0: float, c1: float, hw0: float, hw1: float,
             colour: np.ndarray, until: float | None = None) -> None:
        """A band from u0 to u1 whose centre moves c0 -> c1 and half-width hw0 -> hw1."""
        reach = max(hw0, hw1)
        box = self._box(u0, u1 if until is None else min(u1, until),
                        min(c0, c1) - reach, max(c0, c1) + reach)
        if box is None:
            return
        u, v = self.u[box[0]], self.v[:, box[1]]
        t = _unit((u - u0) / (u1 - u0))
        centre = c0 + (c1 - c0) * t
        half = hw0 + (hw1 - hw0) * t
        across = _unit((half - np.abs(v - centre)) * self.wp + 0.5)
        along = _unit(np.minimum(u - u0, u1 - u) * self.hp + 0.5) * self._cut(u, until)
        self._fill(box, across * along, colour)

    def ellipse(self, uc: float, vc: float, ru: float, rv: float, colour: np.ndarray,
                until: float | None = None, behind: float | None = None) -> None:
        """An ellipse; `until` keeps the part above a height, `behind` the half facing away."""
        box = self._box(uc - ru, uc + ru, vc - rv, vc + rv)
        if box is None:
            return
        u, v = self.u[box[0]], self.v[:, box[1]]
        d = np.sqrt(((u - uc) / ru) ** 2 + ((v - vc) / rv) ** 2)
        mask = _unit((1.0 - d) * min(ru, rv) * self.hp + 0.5)
        if behind is not None:
            back = _unit((-0.004 - v * behind) * self.wp + 0.5)
            mask = mask * np.maximum(back, self._cut(u, until))
        elif until is not None:
            mask = mask * self._cut(u, until)
        self._fill(box, mask, colour)

    def composite(self, img: np.ndarray, shade: np.ndarray) -> None:
        img += self.alpha * (self.layer * shade - img)


def render_person(
    img: np.ndarray, p: Person, view: int, phase: float, top: float, hp: float, cx: float
) -> None:
    """Paint person `p` into `img` (3, H, W float32) seen from `view`, `hp` pixels tall."""
    h, w = img.shape[1:]
    pt = _Painter(h, w, top, hp, cx)
    u, v = pt.u, pt.v
    side = view in (RIGHT, LEFT)
    face = 1.0 if view == RIGHT else -1.0  # side views: the direction the person faces
    ws = p.width
    torso_hw = (0.075 if side else 0.105) * ws

    # Upper-garment colour field (pattern), evaluated on the grid.
    if p.pattern == HSTRIPES:
        sel = np.floor((u - 0.15) / p.period) % 2
    elif p.pattern == VSTRIPES:
        sel = np.floor(v / p.period) % 2
    elif p.pattern == CHECKS:
        sel = (np.floor((u - 0.15) / p.period) + np.floor(v / p.period)) % 2
    elif p.pattern == JACKET and view == FRONT:
        sel = (np.abs(v) < 0.032 * ws).astype(_F)
    else:
        sel = None
    upper = p.upper if sel is None else np.broadcast_to(
        p.upper[:, None, None] + sel * (p.upper2 - p.upper)[:, None, None], (3, h, w))
    legs = p.lower if p.lower_kind == TROUSERS else p.skin
    head_u, head_ru, head_rv = 0.075, 0.062 * p.head, (0.042 if side else 0.046) * p.head

    if side:
        stride = 0.13 * phase
        # Far limbs first, darker; then the backpack bump; then the near side.
        pt.quad(0.5, 0.93, 0.0, -stride, 0.032 * ws, 0.024, legs * 0.8)
        pt.quad(0.925, 0.975, -stride + 0.02 * face, -stride + 0.025 * face, 0.035, 0.035,
                p.shoes * 0.8)
        pt.quad(0.16, 0.47, 0.0, 0.07 * phase, 0.024, 0.02, p.upper * 0.8)
        if p.long_hair:
            pt.quad(0.05, 0.24, -0.03 * face, -0.04 * face, 0.03, 0.025, p.hair)
        if p.bag_kind == BACKPACK:
            pt.quad(0.17, 0.42, -face * (torso_hw + 0.025), -face * (torso_hw + 0.03), 0.04, 0.04,
                    p.bag)
        pt.quad(0.5, 0.93, 0.0, stride, 0.032 * ws, 0.024, legs)
        pt.quad(0.925, 0.975, stride + 0.02 * face, stride + 0.025 * face, 0.035, 0.035, p.shoes)
        if p.lower_kind == SHORTS:
            pt.quad(0.47, 0.68, 0.0, 0.0, torso_hw, torso_hw + 0.01, p.lower)
        elif p.lower_kind == SKIRT:
            pt.quad(0.47, 0.72, 0.0, 0.0, torso_hw, torso_hw + 0.035, p.lower)
        else:
            pt.quad(0.47, 0.58, 0.0, 0.0, torso_hw * 0.95, torso_hw * 0.9, p.lower)
        pt.quad(0.14, 0.52, 0.0, 0.0, torso_hw, torso_hw * 0.92, upper)
        if p.bag_kind == SHOULDER_BAG and p.bag_side == face:
            pt.quad(0.15, 0.42, 0.0, 0.0, 0.006, 0.006, p.bag)
            pt.quad(0.41, 0.56, 0.01 * face, 0.01 * face, 0.045, 0.045, p.bag)
        arm = (0.16, 0.47, 0.0, -0.07 * phase, 0.025, 0.021)
        pt.quad(*arm, p.skin if p.short_sleeves else upper)
        if p.short_sleeves:
            pt.quad(*arm, upper, until=0.27)
        pt.ellipse(0.49, -0.075 * phase, 0.02, 0.018, p.skin)
        pt.quad(0.115, 0.16, 0.0, 0.0, 0.02, 0.02, p.skin)
        pt.ellipse(head_u, 0.004 * face, head_ru, head_rv, p.skin)
        pt.ellipse(head_u, 0.004 * face, head_ru, head_rv, p.hair, until=head_u - 0.02, behind=face)
    else:
        mirror = 1.0 if view == FRONT else -1.0  # the bag side flips when seen from the back
        spread = 0.036 * ws
        lift = 0.02 * phase  # walking: one leg a little shorter, as seen front-on
        if p.long_hair and view == FRONT:
            pt.quad(0.05, 0.22, 0.0, 0.0, 0.052 * p.head, 0.06, p.hair)
        for s, dl in ((-1.0, lift), (1.0, -lift)):
            pt.quad(0.5, 0.93 + dl, s * spread, s * spread * 1.15, 0.03 * ws, 0.024, legs)
            pt.quad(0.925 + dl, 0.975 + dl, s * spread * 1.15, s * spread * 1.15, 0.03, 0.03,
                    p.shoes)
        if p.lower_kind == SHORTS:
            for s in (-1.0, 1.0):
                pt.quad(0.5, 0.68, s * spread, s * spread * 1.05, 0.034 * ws, 0.03, p.lower)
        if p.lower_kind == SKIRT:
            pt.quad(0.47, 0.72, 0.0, 0.0, 0.088 * ws, 0.125 * ws, p.lower)
        else:
            pt.quad(0.47, 0.57, 0.0, 0.0, 0.09 * ws, 0.075 * ws, p.lower)
        for s in (-1.0, 1.0):
            c1 = s * (torso_hw + 0.034)
            arm = (0.155, 0.47, s * (torso_hw + 0.022), c1, 0.026, 0.021)
            pt.quad(*arm, p.skin if p.short_sleeves else upper)
            if p.short_sleeves:
                pt.quad(*arm, upper, until=0.27)
            pt.ellipse(0.49, c1, 0.02, 0.019, p.skin)
        pt.quad(0.14, 0.52, 0.0, 0.0, torso_hw, torso_hw * 0.88, upper)
        if p.logo is not None and view == FRONT:
            pt.quad(0.21, 0.28, 0.035 * ws, 0.035 * ws, 0.026, 0.026, p.logo)
        pt.quad(0.115, 0.16, 0.0, 0.0, 0.022, 0.022, p.skin)
        if view == FRONT:
            pt.ellipse(head_u, 0.0, head_ru, head_rv, p.skin)
            pt.ellipse(head_u, 0.0, head_ru, head_rv, p.hair, until=head_u - 0.022)
        else:
            pt.ellipse(head_u, 0.0, head_ru, head_rv, p.hair)
            if p.long_hair:
                pt.quad(0.06, 0.24, 0.0, 0.0, 0.05 * p.head, 0.056, p.hair)
        if p.bag_kind == BACKPACK:
            if view == BACK:
                pt.quad(0.17, 0.43, 0.0, 0.0, 0.078 * ws, 0.082 * ws, p.bag)
            else:
                for s in (-1.0, 1.0):
                    pt.quad(0.145, 0.36, s * 0.06 * ws, s * 0.065 * ws, 0.008, 0.008, p.bag)
        elif p.bag_kind == SHOULDER_BAG:
            s = p.bag_side * mirror
            pt.quad(0.15, 0.43, -s * 0.07 * ws, s * (torso_hw + 0.01), 0.007, 0.007, p.bag)
            pt.quad(0.41, 0.56, s * (torso_hw + 0.035), s * (torso_hw + 0.035), 0.042, 0.042, p.bag)
    # Cylinder shading across the body and a little light from above.
    across = 1.0 - 0.3 * _unit((v / (torso_hw + 0.03)) ** 2)
    shade = across * (1.05 - 0.15 * _unit(u))
    pt.composite(img, shade)


# --- Cameras and scenes. ------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    gain: np.ndarray  # white balance, per RGB channel
    brightness: float
    contrast: float
    saturation: float
    gamma: float
    blur: float
    resolution: float
    noise: float
    scene: np.ndarray  # (3, SH, SW) float32 background that images crop from
    response: np.ndarray  # tone curve (contrast, then gamma) as a uint8 lookup table


def _tone_curve(contrast: float, gamma: float) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    y = np.clip((x - 0.5) * contrast + 0.5, 0.0, 1.0) ** gamma
    return (y * 255.0 + 0.5).astype(np.uint8)


def _scene(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """A background: facades, floor, structures, parked objects and low-frequency texture.

    Each camera's scene is wide and made of several facades, so crops vary within a camera and
    share colours across cameras, as streets and campuses do.
    """
    h, w = cfg.height, cfg.width
    sh, sw = int(h * 1.5), w * 6
    y = np.arange(sh, dtype=_F)[:, None, None]
    horizon = int(rng.uniform(0.35, 0.6) * sh)
    floor = np.clip(FLOOR[rng.integers(len(FLOOR))] + rng.normal(0, 0.03, 3), 0, 1).astype(_F)
    img = np.broadcast_to(floor * (0.85 + 0.25 * y / sh), (sh, sw, 3)).astype(_F)
    edges = np.sort(rng.choice(np.arange(w // 2, sw - w // 2), size=int(rng.integers(1, 4)),
                               replace=False))
    for x0, x1 in zip(np.r_[0, edges], np.r_[edges, sw]):
        wall = np.clip(WALL[rng.integers(len(WALL))] + rng.normal(0, 0.03, 3), 0, 1).astype(_F)
        img[:horizon, x0:x1] = wall * (0.8 + 0.3 * y[:horizon] / horizon)
    # Wall structures: pillars, windows, doors, signs.
    for _ in range(int(rng.integers(4, 10))):
        x0 = int(rng.integers(0, sw))
        bw = int(rng.integers(3, w // 2))
        y0 = int(rng.integers(0, max(1, horizon - 8)))
        y1 = int(rng.integers(y0 + 4, horizon + 1))
        tone = (img[y0, x0] * rng.uniform(0.65, 1.15) if rng.random() < 0.7
                else OBJECT[_pick(rng, OBJECT_P)])
        img[y0:y1, x0:x0 + bw] = np.clip(tone, 0, 1)
    # Floor tiles: darker lines, spaced more widely towards the camera.
    pos = float(horizon)
    gap = 3.0
    while pos < sh:
        img[int(pos)] *= 0.8
        pos += gap
        gap *= 1.25
    # Objects standing on the floor (cars, bins, benches), often cut by the crop.
    for _ in range(int(rng.integers(2, 6))):
        ow = int(rng.integers(w // 6, w))
        oh = int(rng.integers(h // 10, h // 3))
        x0 = int(rng.integers(0, sw))
        base = int(rng.integers(horizon, sh))
        colour = OBJECT[_pick(rng, OBJECT_P)] * rng.uniform(0.7, 1.1)
        img[max(0, base - oh):base, x0:x0 + ow] = np.clip(colour, 0, 1)
    texture = rng.normal(0.0, 1.0, (sh // 6 + 2, sw // 6 + 2)).astype(_F)
    texture = np.asarray(Image.fromarray(texture).resize((sw, sh), Image.BILINEAR))
    img *= (1.0 + 0.1 * texture)[..., None]
    grey = img.mean(axis=2, keepdims=True)
    img = grey + cfg.scene_colour * (img - grey)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0).astype(_F).transpose(2, 0, 1))


def _camera(rng: np.random.Generator, cfg: SynthConfig) -> Camera:
    gain = np.exp(rng.normal(0.0, cfg.white_balance, 3)).astype(_F)
    brightness = float(rng.uniform(*cfg.brightness))
    contrast = float(rng.uniform(*cfg.contrast))
    saturation = float(rng.uniform(*cfg.saturation))
    gamma = float(rng.uniform(*cfg.gamma))
    return Camera(
        gain=gain,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        gamma=gamma,
        blur=float(rng.uniform(*cfg.blur)),
        resolution=float(rng.uniform(*cfg.resolution)),
        noise=float(rng.uniform(*cfg.noise)),
        scene=_scene(rng, cfg),
        response=_tone_curve(contrast, gamma),
    )


def _background(rng: np.random.Generator, cam: Camera, h: int, w: int) -> np.ndarray:
    sh, sw = cam.scene.shape[1:]
    y0 = int(rng.integers(0, sh - h + 1))
    x0 = int(rng.integers(0, sw - w + 1))
    crop = cam.scene[:, y0:y0 + h, x0:x0 + w]
    return (crop[:, :, ::-1] if rng.random() < 0.5 else crop).copy()


def _occlude(rng: np.random.Generator, img: np.ndarray, cfg: SynthConfig) -> None:
    """An object or another person in front of the target."""
    h, w = img.shape[1:]
    kind = rng.random()
    if kind < 0.4:  # another person, mostly outside the box
        other = draw_person(rng, cfg)
        hp = h * rng.uniform(0.85, 1.15)
        cx = w / 2 + rng.choice([-1, 1]) * w * rng.uniform(0.45, 0.75)
        render_person(img, other, _pick(rng, VIEW_P), rng.uniform(-1, 1),
                      h * rng.uniform(-0.05, 0.1), hp, cx)
        return
    colour = np.clip(OBJECT[_pick(rng, OBJECT_P)] * rng.uniform(0.6, 1.1), 0, 1)[:, None, None]
    if kind < 0.75:  # low object across the legs (car, bench, bin)
        top = int(h * rng.uniform(0.55, 0.8))
        x0 = int(rng.integers(-w // 2, w // 2))
        img[:, top:, max(0, x0):max(0, x0 + int(w * rng.uniform(0.6, 1.2)))] = colour
    else:  # pole or pillar
        bw = int(w * rng.uniform(0.1, 0.3))
        x0 = int(rng.integers(0, w - bw))
        img[:, :, x0:x0 + bw] = colour


def _encode(rng: np.random.Generator, img: np.ndarray, cam: Camera, cfg: SynthConfig) -> bytes:
    """Camera response, sensor noise, optics and resolution, then JPEG."""
    h, w = img.shape[1:]
    gain = cam.gain * np.exp(rng.normal(0.0, 0.03, 3)).astype(_F)
    level = cam.brightness * float(np.exp(rng.normal(0.0, cfg.image_jitter)))
    # Uneven light: a linear ramp in a random direction.
    angle = rng.uniform(0.0, 2 * np.pi)
    ramp = (np.cos(angle) * (np.arange(h, dtype=_F)[:, None] / h - 0.5)
            + np.sin(angle) * (np.arange(w, dtype=_F)[None, :] / w - 0.5))
    img = img * (gain * level)[:, None, None] * (1.0 + rng.uniform(0.0, cfg.light_ramp) * ramp)
    grey = (img[0] + img[1] + img[2]) * _F(1.0 / 3.0)
    img = grey + cam.saturation * (img - grey)
    # Uniform noise with the camera's noise std (cheaper to draw than Gaussian).
    img += (rng.random(img.shape, dtype=_F) - 0.5) * (cam.noise * np.sqrt(12.0))
    pixels = cam.response[(_unit(img) * 255.0 + 0.5).astype(np.uint8)]
    pil = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    # Optics blur, then the sensor's resolution; blurring the small image is the same up to the
    # scale of the radius, and cheaper.
    radius = cam.blur * float(np.exp(rng.normal(0.0, 0.2)))
    scale = float(np.clip(cam.resolution * np.exp(rng.normal(0.0, 0.1)), 0.2, 1.0))
    if scale < 0.97:
        pil = pil.resize((max(8, round(w * scale)), max(16, round(h * scale))), Image.BILINEAR)
        radius *= scale
    if radius > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    if pil.size != (w, h):
        pil = pil.resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=cfg.jpeg_quality, subsampling=0, optimize=False)
    return buf.getvalue()


# --- Images of identities, distractors and junk. --------------------------------------------------


@dataclass(frozen=True)
class _Tracklet:
    """What stays fixed while one person passes one camera."""

    view: int
    light: float
    scale: float
    cx: float


def _tracklet(rng: np.random.Generator, cfg: SynthConfig) -> _Tracklet:
    return _Tracklet(
        view=_pick(rng, VIEW_P),
        light=float(np.exp(rng.normal(0.0, cfg.light_jitter))),
        scale=float(rng.uniform(0.88, 0.98)),
        cx=float(rng.normal(0.0, 0.5)),
    )


def _identity_image(
    rng: np.random.Generator, person: Person, cam: Camera, track: _Tracklet, cfg: SynthConfig
) -> bytes:
    h, w = cfg.height, cfg.width
    img = _background(rng, cam, h, w)
    if rng.random() < cfg.background_person:
        other = draw_person(rng, cfg)
        render_person(img, other, _pick(rng, VIEW_P), rng.uniform(-1, 1),
                      h * rng.uniform(0.0, 0.3), h * rng.uniform(0.5, 0.8),
                      w / 2 + rng.choice([-1, 1]) * w * rng.uniform(0.3, 0.6))
    view = track.view if rng.random() >= cfg.view_change else _pick(rng, VIEW_P)
    size = track.scale * person.height * np.exp(rng.normal(0.0, cfg.crop_jitter))
    hp = h * float(np.clip(size, 0.6, 1.2))
    top = (h - hp) / 2 + rng.normal(0.0, cfg.crop_jitter) * h
    cx = w / 2 + (track.cx + rng.normal(0.0, 1.0)) * cfg.crop_jitter * w
    render_person(img, person, view, float(rng.uniform(-1, 1)), top, hp, cx)
    img *= track.light
    if rng.random() < cfg.occlusion:
        _occlude(rng, img, cfg)
    return _encode(rng, img, cam, cfg)


def _distractor_image(rng: np.random.Generator, cam: Camera, cfg: SynthConfig) -> bytes:
    """A false detection: a passer-by badly framed, or a half body, never a test identity."""
    h, w = cfg.height, cfg.width
    img = _background(rng, cam, h, w)
    person = draw_person(rng, cfg)
    kind = rng.random()
    if kind < 0.4:  # whole passer-by
        hp, top = h * rng.uniform(0.8, 0.95), h * rng.uniform(0.0, 0.1)
        cx = w * rng.uniform(0.35, 0.65)
    elif kind < 0.75:  # zoomed-in upper or lower body
        hp = h * rng.uniform(1.4, 2.0)
        top = rng.choice([0.0, h - hp]) + h * rng.normal(0.0, 0.05)
        cx = w * rng.uniform(0.3, 0.7)
    else:  # off-centre, half outside the box
        hp, top = h * rng.uniform(0.7, 0.95), h * rng.uniform(0.0, 0.15)
        cx = w / 2 + rng.choice([-1, 1]) * w * rng.uniform(0.35, 0.6)
    render_person(img, person, _pick(rng, VIEW_P), float(rng.uniform(-1, 1)), top, hp, cx)
    if rng.random() < cfg.occlusion:
        _occlude(rng, img, cfg)
    return _encode(rng, img, cam, cfg)


def _junk_image(rng: np.random.Generator, cam: Camera, cfg: SynthConfig) -> bytes:
    """A detection with (almost) no person: background, a sliver of a body, or a tiny figure."""
    h, w = cfg.height, cfg.width
    img = _background(rng, cam, h, w)
    kind = rng.random()
    if kind < 0.6:
        person = draw_person(rng, cfg)
        if kind < 0.3:
            hp, top = h * rng.uniform(0.8, 1.0), h * rng.uniform(0.0, 0.1)
            cx = w / 2 + rng.choice([-1, 1]) * w * rng.uniform(0.7, 0.9)
        else:
            hp = h * rng.uniform(0.25, 0.45)
            top, cx = h * rng.uniform(0.0, 0.6), w * rng.uniform(0.2, 0.8)
        render_person(img, person, _pick(rng, VIEW_P), float(rng.uniform(-1, 1)), top, hp, cx)
    return _encode(rng, img, cam, cfg)


# --- Layout: who is seen by which camera, how often, and under which file name. -----------------


def _allocate(rng: np.random.Generator, total: int, n: int, low: int, high: int) -> np.ndarray:
    """n random integers in [low, high] summing to `total`, unevenly spread (some get many)."""
    if not n * low <= total <= n * high:
        raise ValueError(f"cannot split {total} into {n} parts of {low}..{high}")
    counts = np.full(n, low, dtype=np.int64)
    weights = rng.gamma(2.0, 1.0, n)
    for _ in range(total - n * low):
        p = np.where(counts < high, weights, 0.0)
        counts[rng.choice(n, p=p / p.sum())] += 1
    return counts


def _camera_sets(
    rng: np.random.Generator, ids: int, tracklets: int, cfg: SynthConfig
) -> list[np.ndarray]:
    """Cameras of each identity (at least two), busier cameras seeing more people."""
    per_id = _allocate(rng, tracklets, ids, 2, cfg.cameras)
    traffic = rng.uniform(0.5, 1.5, cfg.cameras)
    traffic /= traffic.sum()
    return [np.sort(rng.choice(cfg.cameras, size=k, replace=False, p=traffic)) for k in per_id]


class _Names:
    """Market-style file names, unique per folder: <id>_c<cam>s<seq>_<frame>_<box>.jpg."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.used: set[str] = set()

    @staticmethod
    def _pid(pid: int) -> str:
        return "-1" if pid == -1 else f"{pid:04d}"

    def tracklet(self, pid: int, cam: int, n: int) -> list[str]:
        seq = int(self.rng.integers(1, 7))
        start = int(self.rng.integers(1, 150_000))
        step = int(self.rng.integers(4, 40))
        names = []
        for k in range(n):
            names.append(self._unique(pid, cam, seq, start + k * step))
        return names

    def single(self, pid: int, cam: int) -> str:
        seq, frame = int(self.rng.integers(1, 7)), int(self.rng.integers(1, 150_000))
        return self._unique(pid, cam, seq, frame)

    def _unique(self, pid: int, cam: int, seq: int, frame: int) -> str:
        while True:
            box = int(self.rng.integers(1, 5))
            name = f"{self._pid(pid)}_c{cam + 1}s{seq}_{frame:06d}_{box:02d}.jpg"
            if name not in self.used:
                self.used.add(name)
                return name
            frame += 1


def _generate(folder: Path, seed: int, cfg: SynthConfig) -> None:
    """Write every image under `folder`, in a fixed order from one seeded Generator."""
    rng = np.random.default_rng(seed)
    cams = [_camera(rng, cfg) for _ in range(cfg.cameras)]
    pids = rng.permutation(np.arange(1, cfg.train_ids + cfg.test_ids + 1))
    train_pids = np.sort(pids[:cfg.train_ids])
    test_pids = np.sort(pids[cfg.train_ids:])
    names = _Names(rng)
    dirs = {key: folder / sub for key, sub in SPLIT_FOLDERS.items()}
    for d in dirs.values():
        d.mkdir(parents=True)

    def write(split: str, name: str, data: bytes) -> None:
        (dirs[split] / name).write_bytes(data)

    # Training identities.
    cam_sets = _camera_sets(rng, cfg.train_ids, cfg.train_tracklets, cfg)
    sizes = _allocate(rng, cfg.train_images, cfg.train_tracklets, 1, cfg.max_tracklet_images)
    k = 0
    for pid, cset in zip(train_pids, cam_sets):
        person = draw_person(rng, cfg)
        for cam in cset:
            track = _tracklet(rng, cfg)
            for name in names.tracklet(int(pid), int(cam), int(sizes[k])):
                write("train", name, _identity_image(rng, person, cams[cam], track, cfg))
            k += 1

    # Test identities: one or two queries per identity and camera, the rest in the gallery.
    cam_sets = _camera_sets(rng, cfg.test_ids, cfg.test_tracklets, cfg)
    queries = _allocate(rng, cfg.query_images, cfg.test_tracklets, 1, 2)
    gallery = _allocate(rng, cfg.gallery_images, cfg.test_tracklets, 1, cfg.max_tracklet_images - 2)
    k = 0
    for pid, cset in zip(test_pids, cam_sets):
        person = draw_person(rng, cfg)
        for cam in cset:
            track = _tracklet(rng, cfg)
            n = int(queries[k] + gallery[k])
            is_query = np.zeros(n, dtype=bool)
            is_query[rng.choice(n, size=int(queries[k]), replace=False)] = True
            for name, q in zip(names.tracklet(int(pid), int(cam), n), is_query):
                write("query" if q else "gallery", name,
                      _identity_image(rng, person, cams[cam], track, cfg))
            k += 1

    for _ in range(cfg.distractors):
        cam = int(rng.integers(cfg.cameras))
        write("gallery", names.single(0, cam), _distractor_image(rng, cams[cam], cfg))
    for _ in range(cfg.junk):
        cam = int(rng.integers(cfg.cameras))
        write("gallery", names.single(-1, cam), _junk_image(rng, cams[cam], cfg))


# --- Writing and registry. ----------------------------------------------------------------------


def _metadata(seed: int, cfg: SynthConfig) -> dict:
    return {
        "dataset": DATASET_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "config": asdict(cfg),
        "counts": cfg.expected_counts(),
        "note": "synthetic data: numbers measured on it are never comparable to paper numbers",
    }


def _metadata_json(seed: int, cfg: SynthConfig) -> str:
    return json.dumps(_metadata(seed, cfg), indent=2, sort_keys=True) + "\n"


def _is_generated(out: Path, seed: int, cfg: SynthConfig) -> bool:
    marker = out / METADATA_FILE
    try:
        return marker.read_text(encoding="utf-8") == _metadata_json(seed, cfg)
    except (OSError, UnicodeDecodeError):
        return False


def write_synthetic_reid(out: Path, seed: int = 0, config: SynthConfig | None = None) -> Path:
    """Generate the dataset into `out` (Market-1501 layout) and return `out`.

    If `out` already holds the dataset of this seed, config and generator version, nothing is
    written. Any other existing, non-empty `out` is refused rather than overwritten.
    """
    out = Path(out)
    cfg = config or SynthConfig()
    if _is_generated(out, seed, cfg):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out}: already exists and does not hold synthetic-reid seed {seed} (generator "
            f"v{GENERATOR_VERSION}) with this config; remove it or choose another output folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        _generate(tmp, seed, cfg)
        (tmp / METADATA_FILE).write_text(_metadata_json(seed, cfg), encoding="utf-8")
        try:
            os.replace(tmp, out)
        except OSError:
            if not _is_generated(out, seed, cfg):  # not a concurrent writer finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def registered_location() -> Path:
    """Cache folder of the registered dataset (seed 0, default config, this generator version)."""
    return cache_dir() / DATASET_NAME / f"seed{REGISTERED_SEED}-v{GENERATOR_VERSION}"


def locate_synthetic_reid(root: Path, card: ProtocolCard) -> Path:
    """Ignore the data root: the dataset lives in the cache and is generated on first use."""
    del root, card
    return write_synthetic_reid(registered_location(), seed=REGISTERED_SEED)


@register_dataset(DATASET_NAME, locate=locate_synthetic_reid)
def load_synthetic_reid(location: Path, card: ProtocolCard) -> ReidDataset:
    """Parsed by the Market-1501 parser, so the synthetic set exercises the same conventions."""
    return load_market_style(location, card.name)
