"""The leaderboard's figures: properties of the matplotlib artists, checked against the inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

from benchmark.reporting.plots import (
    claims_scatter_figure,
    cmc_figure,
    plot_claims_scatter,
    plot_cmc,
)

DATASETS = ("Market-1501", "DukeMTMC-reID")
METRICS = ("mAP", "R1", "R5")


def _points() -> pd.DataFrame:
    """2 datasets x 3 metrics; per panel "alpha" has 3 seeds (a CI), "gcl-scl (v2)" one run."""
    rows = []
    for d, (dataset, metric) in enumerate(itertools.product(DATASETS, METRICS)):
        base = 60.0 + 4 * d
        rows.append({"dataset": dataset, "metric": metric, "method": "alpha", "claim": base,
                     "mean": base - 3.0, "ci_low": base - 5.5, "ci_high": base - 0.5, "n": 3})
        rows.append({"dataset": dataset, "metric": metric, "method": "gcl-scl (v2)",
                     "claim": base + 10.0, "mean": base + 12.0, "ci_low": np.nan,
                     "ci_high": np.nan, "n": 1})
    return pd.DataFrame(rows)


def _panel(fig, dataset: str, metric: str):
    [ax] = [ax for ax in fig.axes if ax.get_title() == f"{dataset} · {metric}"]
    return ax


def _point(ax, x: float, y: float) -> Line2D:
    """The marker drawn at (x, y) (not an error-bar cap: caps use another marker)."""
    found = [line for line in ax.lines if line.get_marker() == "o"
             and np.allclose(line.get_xdata(), [x]) and np.allclose(line.get_ydata(), [y])]
    assert len(found) == 1, f"expected one marker at ({x}, {y}), found {len(found)}"
    return found[0]


def _bars_at(ax, x: float) -> list[np.ndarray]:
    """Vertical error-bar segments at x."""
    return [seg for coll in ax.collections if isinstance(coll, LineCollection)
            for seg in coll.get_segments() if np.allclose(seg[:, 0], x)]


def test_scatter_grid_has_one_panel_per_dataset_metric_in_at_most_three_columns():
    fig = claims_scatter_figure(_points())
    assert len(fig.axes) == 6
    titles = {ax.get_title() for ax in fig.axes}
    assert titles == {f"{d} · {m}" for d in DATASETS for m in METRICS}
    for ax in fig.axes:
        gridspec = ax.get_subplotspec().get_gridspec()
        assert gridspec.ncols <= 3
        assert gridspec.nrows == 2


def test_scatter_with_seven_panels_wraps_and_drops_the_empty_cells():
    extra = pd.DataFrame([{"dataset": "MSMT17", "metric": "mAP", "method": "alpha", "claim": 40.0,
                           "mean": 35.0, "ci_low": 33.0, "ci_high": 37.0, "n": 2}])
    fig = claims_scatter_figure(pd.concat([_points(), extra], ignore_index=True))
    assert len(fig.axes) == 7
    assert {ax.get_subplotspec().get_gridspec().get_geometry() for ax in fig.axes} == {(3, 3)}


def test_saved_scatter_png_is_narrower_than_a_single_row(tmp_path: Path):
    path = plot_claims_scatter(_points(), tmp_path / "plots" / "scatter.png")
    assert path == tmp_path / "plots" / "scatter.png" and path.exists()
    height, width = imread(path).shape[:2]
    assert width < 1800
    assert height > 500  # two rows of panels, not squeezed


def test_scatter_colours_are_per_method_and_the_same_in_every_panel():
    points = _points()
    fig = claims_scatter_figure(points)
    colours: dict[str, set[tuple[float, ...]]] = {"alpha": set(), "gcl-scl (v2)": set()}
    for row in points.itertuples():
        line = _point(_panel(fig, row.dataset, row.metric), row.claim, row.mean)
        colours[row.method].add(to_rgba(line.get_markeredgecolor()))
    assert len(colours["alpha"]) == 1 and len(colours["gcl-scl (v2)"]) == 1
    assert colours["alpha"] != colours["gcl-scl (v2)"]


def test_scatter_colour_does_not_depend_on_row_order():
    points = _points()
    a = claims_scatter_figure(points)
    b = claims_scatter_figure(points.iloc[::-1].reset_index(drop=True))
    row = points.iloc[0]
    colour = [to_rgba(_point(_panel(f, row.dataset, row.metric), row.claim, row["mean"])
                      .get_markeredgecolor()) for f in (a, b)]
    assert colour[0] == colour[1]


def test_single_run_is_hollow_without_bar_and_multi_seed_bar_spans_the_ci():
    points = _points()
    fig = claims_scatter_figure(points)
    for row in points.itertuples():
        ax = _panel(fig, row.dataset, row.metric)
        marker = _point(ax, row.claim, row.mean)
        bars = _bars_at(ax, row.claim)
        if row.n == 1:
            assert to_rgba(marker.get_markerfacecolor())[3] == 0  # hollow
            assert bars == []
        else:
            assert to_rgba(marker.get_markerfacecolor()) == to_rgba(marker.get_markeredgecolor())
            assert len(bars) == 1
            assert sorted(bars[0][:, 1]) == pytest.approx([row.ci_low, row.ci_high])


def test_every_point_is_labelled_with_its_n_at_its_coordinates():
    points = _points()
    fig = claims_scatter_figure(points)
    for (dataset, metric), sub in points.groupby(["dataset", "metric"]):
        ax = _panel(fig, dataset, metric)
        labels = sorted((t.get_text(), tuple(t.xy)) for t in ax.texts)
        expected = sorted((f"n={r.n}", (r.claim, r.mean)) for r in sub.itertuples())
        assert labels == expected


CLUSTERS = {
    "diagonal up": [(70.0 + 0.1 * i, 68.0 + 0.1 * i) for i in range(4)],
    "diagonal down": [(70.0 + 0.1 * i, 68.0 - 0.1 * i) for i in range(4)],
    "row": [(70.0 + 0.15 * i, 68.0) for i in range(5)],
    "column": [(70.0, 68.0 + 0.15 * i) for i in range(5)],
    "blob": [(70.0 + 0.1 * (i % 3), 68.0 + 0.1 * (i // 3)) for i in range(6)],
}


@pytest.mark.parametrize("layout", sorted(CLUSTERS))
def test_labels_of_nearly_coincident_points_overlap_neither_labels_nor_markers(layout: str):
    rows = [{"dataset": "Market-1501", "metric": "mAP", "method": f"m{i}", "claim": x, "mean": y,
             "ci_low": np.nan, "ci_high": np.nan, "n": 1 if i % 2 else 12}
            for i, (x, y) in enumerate(CLUSTERS[layout])]
    fig = claims_scatter_figure(pd.DataFrame(rows))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(rows)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    radius = 3 * fig.dpi / 72  # markersize 6 pt
    for row in rows:
        x, y = ax.transData.transform((row["claim"], row["mean"]))
        marker = Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
        assert not any(marker.overlaps(b) for b in boxes)


def test_scatter_limits_zoom_to_the_data_and_are_equal_on_both_axes():
    points = _points()
    fig = claims_scatter_figure(points)
    for (dataset, metric), sub in points.groupby(["dataset", "metric"]):
        ax = _panel(fig, dataset, metric)
        assert ax.get_xlim() == pytest.approx(ax.get_ylim())
        low, high = ax.get_xlim()
        values = sub[["claim", "mean", "ci_low", "ci_high"]].to_numpy(dtype=float).ravel()
        values = values[np.isfinite(values)]
        assert low < values.min() and values.max() < high
        assert high - low < 50  # zoomed, not 0-100
        [diagonal] = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert np.allclose(diagonal.get_xdata(), diagonal.get_ydata())


def test_scatter_has_one_figure_legend_with_every_method_and_the_title():
    fig = claims_scatter_figure(_points())
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends) == 1
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"alpha", "gcl-scl (v2)"} <= labels
    title = fig.get_suptitle()
    assert "95% CI" in title and "hollow: n = 1" in title


def test_scatter_rejects_missing_columns():
    with pytest.raises(ValueError, match="ci_low"):
        claims_scatter_figure(_points().drop(columns=["ci_low"]))


# -- CMC -------------------------------------------------------------------------------------------
RANKS = 30
ALPHA = np.vstack([np.linspace(0.50, 0.95, RANKS), np.linspace(0.40, 0.99, RANKS)])
BETA = np.linspace(0.30, 0.80, RANKS)
CLAIMS = {"alpha": {1: 55.0, 5: 70.0, 10: 80.0}}


def _cmc(max_rank: int = 20):
    fig = cmc_figure({"beta": BETA, "alpha": ALPHA}, "CMC", claims=CLAIMS, max_rank=max_rank)
    return fig, fig.axes[0]


def _line(ax, label: str) -> Line2D:
    [line] = [line for line in ax.lines if line.get_label() == label]
    return line


def test_cmc_mean_line_is_the_mean_over_seeds_labelled_with_the_seed_count():
    _, ax = _cmc()
    alpha = _line(ax, "alpha (n=2)")
    assert np.array_equal(alpha.get_xdata(), np.arange(1, 21))
    assert np.allclose(alpha.get_ydata(), 100 * np.mean(ALPHA, axis=0)[:20])
    beta = _line(ax, "beta (n=1)")
    assert np.allclose(beta.get_ydata(), 100 * BETA[:20])


def test_cmc_band_only_for_the_multi_seed_method_spans_seed_min_to_max():
    _, ax = _cmc()
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    [band] = bands
    assert to_rgba(band.get_facecolor()[0])[:3] == to_rgba(_line(ax, "alpha (n=2)").get_color())[:3]
    vertices = band.get_paths()[0].vertices
    for rank in (1, 7, 20):
        ys = vertices[np.isclose(vertices[:, 0], rank), 1]
        assert ys.min() == pytest.approx(100 * ALPHA[:, rank - 1].min())
        assert ys.max() == pytest.approx(100 * ALPHA[:, rank - 1].max())
    assert vertices[:, 0].max() == pytest.approx(20)


def test_cmc_claims_are_markers_at_rank_and_value_in_the_method_colour():
    _, ax = _cmc()
    [stars] = [line for line in ax.lines if line.get_marker() == "*"]
    points = sorted(zip(stars.get_xdata(), stars.get_ydata()))
    assert points == sorted(CLAIMS["alpha"].items())
    assert to_rgba(stars.get_markerfacecolor()) == to_rgba(_line(ax, "alpha (n=2)").get_color())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["alpha (n=2)", "beta (n=1)", "claimed R1/R5/R10"]


def test_cmc_claims_beyond_max_rank_are_not_drawn_and_axes_are_fixed():
    _, ax = _cmc(max_rank=8)
    [stars] = [line for line in ax.lines if line.get_marker() == "*"]
    assert list(stars.get_xdata()) == [1, 5]
    assert len(_line(ax, "beta (n=1)").get_xdata()) == 8
    assert ax.get_xlim() == (1, 8) and ax.get_ylim() == (0, 100)
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 8]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert "claimed R1/R5" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_cmc_without_claims_has_no_claim_entry_and_colours_differ():
    fig = cmc_figure({"alpha": ALPHA, "beta": BETA}, "CMC")
    ax = fig.axes[0]
    assert not [line for line in ax.lines if line.get_marker() == "*"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["alpha (n=2)", "beta (n=1)"]
    assert _line(ax, "alpha (n=2)").get_color() != _line(ax, "beta (n=1)").get_color()


def test_plot_cmc_writes_the_png(tmp_path: Path):
    path = plot_cmc({"alpha": ALPHA}, "CMC", tmp_path / "cmc.png", claims=CLAIMS)
    assert path == tmp_path / "cmc.png"
    height, width = imread(path).shape[:2]
    assert 300 < width < 1200 and height > 200
