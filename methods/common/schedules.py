"""Decay schedules for a quantity annealed over a training stage (a probability, a weight).

Why here: self-paced methods start from a strict setting and relax it epoch by epoch (Li et al.,
"Pseudo labels refinement with intra-camera similarity", Table 2, decays the probability of
discarding doubtful samples: none, linear, exponential, cosine). The shapes are written against the
fraction of the stage that has passed, t / T, so that a profile that runs fewer epochs keeps the
same shape, only sampled more coarsely.
"""

from __future__ import annotations

import math

DECAYS = ("none", "linear", "exponential", "cosine")


def decay_factor(kind: str, step: int, total: int, *, rate: float = 5.0) -> float:
    """The multiplier in [0, 1] at `step` (0-based) of a stage of `total` steps; 1 at step 0.

    none: 1; linear: 1 - t / T; exponential: exp(-rate * t / T); cosine: (1 + cos(pi t / T)) / 2.
    The last step is T - 1, so linear and cosine never quite reach 0: every epoch still refines.
    """
    if kind not in DECAYS:
        raise ValueError(f"unknown decay {kind!r}; choose from {', '.join(DECAYS)}")
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if not 0 <= step < total:
        raise ValueError(f"step {step} outside 0..{total - 1}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    t = step / total
    if kind == "none":
        return 1.0
    if kind == "linear":
        return 1.0 - t
    if kind == "exponential":
        return math.exp(-rate * t)
    return 0.5 * (1.0 + math.cos(math.pi * t))
