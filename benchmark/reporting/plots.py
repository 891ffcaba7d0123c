"""The leaderboard's figures, drawn with matplotlib's object API on the Agg canvas.

`matplotlib.figure.Figure` is used directly instead of pyplot: no global figure state and no GUI
backend, so drawing works headless (CI, servers) and from threads, and one figure never leaks into
the next. Every `plot_*` function writes one PNG and returns its path; numbers arrive in percent.
The `*_figure` companions build and return the Figure without saving it, so tests can inspect the
artists instead of pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

CMC_MAX_RANK = 20
DPI = 110
QUALITY_PANELS = (("precision", "pair precision (%)"), ("recall", "pair recall (%)"),
                  ("fscore", "pair F-score (%)"), ("num_clusters", "clusters"))

SCATTER_MAX_COLUMNS = 3
SCATTER_PANEL_INCHES = 4.0
SCATTER_COLUMNS = ("dataset", "metric", "method", "claim", "mean", "ci_low", "ci_high", "n")
SCATTER_TITLE = ("Reproduced vs claimed (paper profile, comparable runs only); "
                 "bars: 95% CI over seeds; hollow: n = 1")
# The "n=…" labels are placed in points (1/72 in) around their marker. A panel's axes box is about
# LABEL_AXES_POINTS wide and high (measured: ~238 pt for a 4-inch panel; a bit less is assumed, so
# neighbours are taken as closer than they are); text boxes are estimated from the font size.
LABEL_FONTSIZE = 7
LABEL_AXES_POINTS = 225.0
LABEL_GAP = 4.0
MARKER_SIZE = 6


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def method_colours(methods: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per method, fixed by the sorted names, so a method keeps its colour across panels
    and figures whatever order its rows arrive in. tab10 while it suffices, tab20 beyond (cycled
    past 20, where colours must repeat anyway)."""
    names = sorted(set(methods))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def cmc_figure(curves: Mapping[str, np.ndarray], title: str,
               claims: Mapping[str, Mapping[int, float]] | None = None,
               max_rank: int = CMC_MAX_RANK) -> Figure:
    """CMC curves, one line per method: the mean over seeds, with a band from the seeds' minimum to
    maximum where there are several, so the spread between seeds is visible and not just the mean.
    `curves[method]` has shape (n_seeds, n_ranks) in fractions, rank 1 first (1-D: one seed).
    `claims[method]` maps a rank to the paper's matching rate in percent, drawn as a star in the
    method's colour, so the gap to the claim reads off the plot; claims of methods without a curve
    are not drawn (there is no run to compare them with)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colours = method_colours(list(curves))
    claimed_ranks: set[int] = set()
    for method in sorted(curves):
        seeds = np.atleast_2d(np.asarray(curves[method], dtype=float))
        if seeds.ndim != 2:
            raise ValueError(f"CMC of {method!r} must be 1-D or 2-D (seeds x ranks), "
                             f"got shape {seeds.shape}")
        depth = min(seeds.shape[1], max_rank)
        if seeds.shape[0] == 0 or depth == 0:
            continue
        colour = colours[method]
        ranks = np.arange(1, depth + 1)
        values = 100 * seeds[:, :depth]
        ax.plot(ranks, values.mean(axis=0), marker="o", markersize=3, color=colour,
                label=f"{method} (n={seeds.shape[0]})")
        if seeds.shape[0] >= 2:
            ax.fill_between(ranks, values.min(axis=0), values.max(axis=0), color=colour,
                            alpha=0.2, linewidth=0)
        mine = {int(r): float(v) for r, v in (claims or {}).get(method, {}).items()
                if 1 <= int(r) <= max_rank and v is not None and np.isfinite(v)}
        if mine:
            ax.plot(list(mine), list(mine.values()), linestyle="none", marker="*", markersize=13,
                    markerfacecolor=colour, markeredgecolor="black", markeredgewidth=0.8,
                    zorder=4, clip_on=False)
            claimed_ranks.update(mine)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 100)
    ax.set_xlim(1, max_rank)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if claimed_ranks:
        # One proxy entry for all the stars: per-method entries would double the legend.
        label = "claimed " + "/".join(f"R{r}" for r in sorted(claimed_ranks))
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=11,
                              markerfacecolor="white", markeredgecolor="black"))
        labels.append(label)
    if handles:
        # beside the axes: inside, it hides the top ranks where the curves of many methods meet
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_cmc(curves: Mapping[str, np.ndarray], title: str, path: Path,
             claims: Mapping[str, Mapping[int, float]] | None = None,
             max_rank: int = CMC_MAX_RANK) -> Path:
    """Write `cmc_figure` as a PNG at `path`."""
    return _save(cmc_figure(curves, title, claims, max_rank), path)


def _zoomed_limits(values: np.ndarray) -> tuple[float, float]:
    """One range for both axes around the data (claims, means and CI ends), so differences of a few
    points are visible instead of squeezed into a 0-100 square, and the diagonal stays at 45°."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 100.0
    low, high = float(finite.min()), float(finite.max())
    margin = 0.08 * max(high - low, 4.0) + 1.0
    low, high = max(0.0, low - margin), min(100.0, high + margin)
    if high <= low:  # all at 0 or all at 100
        low, high = max(0.0, low - 5.0), min(100.0, high + 5.0)
    return low, high


def _label_offsets(xy: np.ndarray, texts: Sequence[str], low: float,
                   high: float) -> list[tuple[float, float, str, str]]:
    """An offset (dx, dy in points, ha, va) for each point's label: the first of a fixed list of
    candidates (the four diagonal neighbours, then further up and down) whose estimated text box
    clears every marker and every label placed so far, points taken in order. Deterministic, no
    drawing needed; where nothing fits, it falls back to cycling the four diagonals."""
    scale = LABEL_AXES_POINTS / (high - low)
    pts = (xy - low) * scale
    half = MARKER_SIZE / 2 + 1.0
    taken = [(x - half, y - half, x + half, y + half) for x, y in pts]
    height = 1.2 * LABEL_FONTSIZE
    candidates = [(sx, sy * (LABEL_GAP + ring * (height + 2.0)))
                  for ring in range(4) for sy, sx in ((1, 1), (-1, -1), (-1, 1), (1, -1))]
    offsets = []
    for i, ((x, y), text) in enumerate(zip(pts, texts)):
        width = 0.7 * LABEL_FONTSIZE * len(text) + 1.0
        chosen = None
        for sx, dy in candidates:
            dx = sx * (LABEL_GAP + 1.0)
            x0 = x + dx if sx > 0 else x + dx - width
            y0 = y + dy if dy > 0 else y + dy - height
            box = (x0 - 1.0, y0 - 1.0, x0 + width + 1.0, y0 + height + 1.0)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in taken):
                chosen = (dx, dy, box)
                break
        if chosen is None:
            sx, dy = candidates[i % 4]
            chosen = (sx * (LABEL_GAP + 1.0), dy, None)
        dx, dy, box = chosen
        if box is not None:
            taken.append(box)
        offsets.append((dx, dy, "left" if dx > 0 else "right", "bottom" if dy > 0 else "top"))
    return offsets


def _scatter_panel(ax: Axes, sub: pd.DataFrame, dataset: str, metric: str,
                   colours: Mapping[str, tuple[float, float, float, float]]) -> None:
    sub = sub.sort_values(["claim", "mean"], kind="stable")
    low, high = _zoomed_limits(sub[["claim", "mean", "ci_low", "ci_high"]].to_numpy(dtype=float))
    ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", zorder=1)
    texts = [f"n={int(n)}" for n in sub["n"]]
    offsets = _label_offsets(sub[["claim", "mean"]].to_numpy(dtype=float), texts, low, high)
    for row, text, (dx, dy, ha, va) in zip(sub.itertuples(index=False), texts, offsets):
        colour = colours[row.method]
        n = int(row.n)
        if n >= 2 and np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
            # Drawn from the interval's own ends (not mean ± offsets), so an interval that is not
            # centred on the mean is still shown exactly.
            ax.errorbar([row.claim], [(row.ci_low + row.ci_high) / 2],
                        yerr=[(row.ci_high - row.ci_low) / 2], fmt="none", ecolor=colour,
                        elinewidth=1.2, capsize=3, zorder=2)
        ax.plot([row.claim], [row.mean], linestyle="none", marker="o", markersize=MARKER_SIZE,
                markeredgecolor=colour, markeredgewidth=1.4,
                markerfacecolor=colour if n >= 2 else "none", zorder=3)
        ax.annotate(text, (row.claim, row.mean), xytext=(dx, dy), textcoords="offset points",
                    fontsize=LABEL_FONTSIZE, ha=ha, va=va, color="dimgray")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(f"{dataset} · {metric}", fontsize=10)
    ax.set_xlabel(f"claimed {metric} (%)")
    ax.set_ylabel(f"reproduced {metric} (%)")
    ax.grid(True, alpha=0.3)


def claims_scatter_figure(points: pd.DataFrame) -> Figure:
    """Reproduced vs claimed, one panel per (dataset, metric) in a grid of at most three columns,
    so many datasets grow the figure downwards instead of into an unreadably wide row. Each point
    is one method's mean over seeds with its 95% CI as a bar; a single run has no interval and is
    drawn hollow, so a lone seed is not mistaken for a tight estimate. The diagonal is perfect
    reproduction. `points` has the SCATTER_COLUMNS, numbers in percent (ci_* NaN where n < 2)."""
    missing = [c for c in SCATTER_COLUMNS if c not in points.columns]
    if missing:
        raise ValueError(f"claims scatter needs columns {missing}")
    if points.empty:
        raise ValueError("claims scatter needs at least one point")
    panels = list(dict.fromkeys(zip(points["dataset"], points["metric"])))
    ncols = min(SCATTER_MAX_COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(SCATTER_PANEL_INCHES * ncols, SCATTER_PANEL_INCHES * nrows + 1.2),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = method_colours(list(points["method"]))
    for ax, (dataset, metric) in zip(axes, panels):
        sub = points[(points["dataset"] == dataset) & (points["metric"] == metric)]
        _scatter_panel(ax, sub, str(dataset), str(metric), colours)
    for ax in axes[len(panels):]:
        ax.remove()  # the last row's empty cells
    # One legend for the figure, below the panels: inside a panel it would cover points.
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=6, color=colour,
                      label=method) for method, colour in colours.items()]
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=6, color="grey",
                          markerfacecolor="none", label="hollow: n = 1 (no interval)"))
    handles.append(Line2D([], [], color="grey", linewidth=1, linestyle="--",
                          label="y = x (claim reproduced)"))
    fig.legend(handles=handles, loc="outside lower center", fontsize=8,
               ncols=max(1, min(len(handles), 2 * ncols)))
    # Wrapped where the grid is narrow, so the title does not widen a one- or two-panel figure.
    title = SCATTER_TITLE if ncols >= SCATTER_MAX_COLUMNS else SCATTER_TITLE.replace("; ", "\n", 1)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_claims_scatter(points: pd.DataFrame, path: Path) -> Path:
    """Write `claims_scatter_figure` as a PNG at `path`."""
    return _save(claims_scatter_figure(points), path)


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
