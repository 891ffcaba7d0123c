"""The leaderboard's figures, drawn with matplotlib's object API on the Agg canvas.

`matplotlib.figure.Figure` is used directly instead of pyplot: no global figure state and no GUI
backend, so drawing works headless (CI, servers) and from threads, and one figure never leaks into
the next. Every function writes one PNG and returns its path; numbers arrive in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CMC_MAX_RANK = 20
DPI = 110
QUALITY_PANELS = (("precision", "pair precision (%)"), ("recall", "pair recall (%)"),
                  ("fscore", "pair F-score (%)"), ("num_clusters", "clusters"))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_cmc(curves: Mapping[str, np.ndarray], title: str, path: Path,
             max_rank: int = CMC_MAX_RANK) -> Path:
    """CMC curves (fractions, rank 1 first), one line per method, ranks 1..max_rank, in percent."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for method, curve in sorted(curves.items()):
        depth = min(len(curve), max_rank)
        ax.plot(np.arange(1, depth + 1), 100 * np.asarray(curve[:depth]), marker="o",
                markersize=3, label=method)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 100)
    ax.set_xlim(1, max_rank)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_claims_scatter(points: pd.DataFrame, path: Path) -> Path:
    """Reproduced vs claimed, one panel per metric; `points` has metric, method, dataset, claim,
    mean and std (percent). The diagonal is perfect reproduction."""
    metrics = list(dict.fromkeys(points["metric"]))
    fig = Figure(figsize=(4.2 * len(metrics), 4.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        sub = points[points["metric"] == metric]
        ax.plot([0, 100], [0, 100], color="grey", linewidth=1, linestyle="--", label="y = x")
        ax.errorbar(sub["claim"], sub["mean"], yerr=sub["std"].fillna(0), fmt="o", capsize=3)
        for row in sub.itertuples():
            ax.annotate(f"{row.method}\n{row.dataset}", (row.claim, row.mean), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_aspect("equal")
        ax.set_xlabel(f"claimed {metric} (%)")
        ax.set_ylabel(f"reproduced {metric} (%), mean ± std")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Reproduced vs claimed (paper profile, comparable claims only)", fontsize=10)
    return _save(fig, path)


def plot_pseudo_label_quality(history: pd.DataFrame, title: str, path: Path) -> Path:
    """Per-epoch pseudo-label quality, one line per method (mean over seeds; the band spans the
    seeds' minimum to maximum). `history` has method, seed, epoch and the QUALITY_PANELS fields,
    precision/recall/fscore as fractions."""
    fig = Figure(figsize=(13.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(QUALITY_PANELS))
    for ax, (field, label) in zip(axes, QUALITY_PANELS):
        scale = 1.0 if field == "num_clusters" else 100.0
        for method, sub in history.groupby("method", sort=True):
            stats = (sub.groupby("epoch")[field].agg(["mean", "min", "max"]) * scale).dropna()
            if stats.empty:
                continue
            line = ax.plot(stats.index, stats["mean"], marker="o", markersize=3, label=method)[0]
            if sub["seed"].nunique() > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2,
                                color=line.get_color())
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        if field != "num_clusters":
            ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
