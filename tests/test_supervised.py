"""The `supervised` ceiling: it learns from the labels it alone is given, and every output marks it
as using labels and never ranks it among the unsupervised methods."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from benchmark.data.unlabeled import UnlabeledView, with_labels
from benchmark.engine.profiles import get_profile
from benchmark.engine.runner import HistorySink, fit_cell, make_context, run_cell, summary_table
from benchmark.engine.seeding import seed_everything
from benchmark.reporting.leaderboard import write_leaderboard
from methods.supervised import Supervised
from test_adapter_conformance import tiny_reid


def _fit(view, hidden, tmp_path, **params):
    adapter = Supervised(**params)
    config = adapter.resolve_config("market1501", "ci")
    seed_everything(0)
    ctx = make_context(device=torch.device("cpu"), seed=0, profile=get_profile("ci"),
                       dataset="market1501", task="reid", checkpoint_dir=tmp_path,
                       sink=HistorySink(log=None))
    return fit_cell(adapter, view, hidden, config, ctx)


def test_it_fits_the_training_identities(tmp_path):
    """On six identities, the classifier's training accuracy climbs well above chance (1/6)."""
    view, hidden = tiny_reid()
    trained = _fit(with_labels(view, hidden.labels), hidden, tmp_path, epochs=12, batch_size=24,
                   milestones=[10])
    accuracy = [row["train_accuracy"] for row in trained.history]
    assert accuracy[-1] >= 0.8 > 1 / 6 + 0.2 > accuracy[0] - 0.2
    assert len(trained.history) == 12


def test_without_labels_it_refuses(tmp_path):
    view, hidden = tiny_reid()
    with pytest.raises(TypeError, match="no LabeledView"):
        _fit(view, hidden, tmp_path)
    assert isinstance(view, UnlabeledView)


def test_marked_in_records_summary_and_leaderboard_and_never_ranked(tmp_path,
                                                                   synthetic_reid_generated):
    out = tmp_path / "results"
    records = [run_cell(m, "synthetic-reid", 0, "ci", out, "cpu", tracking=False, log=None)
               for m in ("supervised", "direct-transfer")]
    sup, dt = records
    assert sup["status"] == dt["status"] == "finished"
    assert sup["uses_labels"] is True and dt["uses_labels"] is False
    assert sup["init"]["key"] == dt["init"]["key"] == "standin:ci"
    table = summary_table(records).set_index("method")
    assert "uses labels" in table.loc["supervised", "note"]
    assert "uses labels" not in table.loc["direct-transfer", "note"]

    # make supervised the best number, then check it is still not the one in bold
    lb = tmp_path / "lb"
    write_leaderboard(out, lb, ["md"])
    text = (lb / "leaderboard.md").read_text()
    assert "supervised (uses labels)" in text
    assert "never ranked" in text
    summary = text[text.index("Summary"):]
    bold = re.findall(r"\*\*([\d.]+)†?\*\*", summary)
    sup_map = round(100 * sup["metrics"]["mAP"], 1)
    dt_map = round(100 * dt["metrics"]["mAP"], 1)
    assert f"{dt_map:.1f}" in bold  # the only unsupervised method is the best one
    if sup_map != dt_map:
        assert f"{sup_map:.1f}" not in bold
    assert np.isfinite(sup_map)
