"""The leaderboard is what people read and cite, so its numbers are checked against numpy on the
test's own values, and integrity rule 4 is checked cell by cell: a claim stands beside a run only when
it is the paper's own fully unsupervised number with the run's backbone under the paper profile;
synthetic data and the small profiles never get a claim column."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.engine.records import cell_dir, record_path, write_record
from benchmark.engine.run_identity import IMAGENET_V1, config_hash, describe_init, paper_config_diff
from benchmark.reporting.claims import load_claims
from benchmark.reporting.leaderboard import (
    build_tables,
    comparable_claims,
    display_frame,
    write_leaderboard,
)
from benchmark.reporting.results import ResultsError, load_records

PAPER = "paper_a.txt"
REID = ("mAP", "R1", "R5", "R10", "mINP")
PROFILE_SETTINGS = {
    "paper": {"name": "paper", "backbone": "resnet50", "pretrained": True},
    "quick": {"name": "quick", "backbone": "resnet-tiny", "pretrained": False},
}
T975 = {1: 12.706204736174698, 2: 4.302652729749464}  # Student t quantiles, from printed tables
FACTS = {
    "market1501": {"name": "market1501", "title": "Market-1501", "kind": "reid",
                   "synthetic": False, "withdrawn": False},
    "dukemtmc-reid": {"name": "dukemtmc-reid", "title": "DukeMTMC-reID", "kind": "reid",
                      "synthetic": False, "withdrawn": True},
    "synthetic-reid": {"name": "synthetic-reid", "title": "Synthetic re-ID", "kind": "reid",
                       "synthetic": True, "withdrawn": False},
}

# The test's numbers (fractions), per (dataset, method): one tuple of metric values per seed 0, 1.
VALUES = {
    ("market1501", "alpha"): {"mAP": (0.301, 0.327), "R1": (0.612, 0.640), "R5": (0.75, 0.77),
                              "R10": (0.80, 0.83), "mINP": (0.05, 0.07)},
    ("market1501", "beta"): {"mAP": (0.210, 0.190), "R1": (0.50, 0.47), "R5": (0.66, 0.61),
                             "R10": (0.72, 0.70), "mINP": (0.03, 0.02)},
    ("synthetic-reid", "alpha"): {"mAP": (0.91, 0.93), "R1": (0.95, 0.96), "R5": (0.98, 0.99),
                                  "R10": (0.99, 1.0), "mINP": (0.7, 0.8)},
    ("synthetic-reid", "beta"): {"mAP": (0.4, 0.5), "R1": (0.6, 0.7), "R5": (0.8, 0.85),
                                 "R10": (0.9, 0.9), "mINP": (0.1, 0.2)},
}


def claim(method: str, metric: str, value: float, *, origin: str = "own", backbone: str = "ResNet-50",
          setting: str = "fully unsupervised", table: str = "Table 1", name: str = "Ours",
          dataset: str = "market1501") -> str:
    return (f'[[claim]]\nmethod = "{method}"\nname = "{name}"\ndataset = "{dataset}"\n'
            f'metric = "{metric}"\nvalue = {value}\npaper = "{PAPER}"\ntable = "{table}"\n'
            f'origin = "{origin}"\nbackbone = "{backbone}"\nsetting = "{setting}"\n')


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """alpha: comparable own ResNet-50 claims for mAP and R1 (plus distractors that must not win);
    beta: only claims that must never be shown (quoted, ablation, other backbone, UDA, camera)."""
    folder = tmp_path_factory.mktemp("claims")
    (folder / PAPER).write_text("a paper\n")
    entries = [
        claim("alpha", "mAP", 35.0), claim("alpha", "R1", 63.8),
        claim("alpha", "mAP", 20.0, setting="fully unsupervised; ablation: no loss", name="base"),
        claim("alpha", "mAP", 40.0, backbone="GoogLeNet", name="Ours (GoogLeNet)"),
        claim("alpha", "mAP", 50.0, setting="UDA (source: dukemtmc-reid)", name="Ours (UDA)"),
        claim("alpha", "mAP", 45.0, origin="quoted", table="Table 9"),
        claim("alpha", "mAP", 36.0, dataset="dukemtmc-reid"),  # the withdrawn dataset
        claim("beta", "mAP", 30.0, origin="quoted"),
        claim("beta", "R1", 60.0, setting="fully unsupervised; sensitivity: eps=0.1"),
        claim("beta", "R5", 70.0, backbone="GoogLeNet"),
        claim("beta", "R10", 80.0, setting="fully unsupervised; with camera labels"),
        claim("beta", "mINP", 5.0, backbone="", table="Table 2"),  # backbone not stated: comparable
    ]
    path = folder / "claims.toml"
    path.write_text("\n".join(entries))
    return load_claims(path, papers_dir=folder)


PAPER_CONFIG = {"epochs": 60, "lr": 0.00035}
IMAGENET = {"key": IMAGENET_V1, "file": "/weights/resnet50-0676ba61.pth",
            "sha256": "0676ba61" + "0" * 56, "description": describe_init(IMAGENET_V1)}


def make_record(dataset: str, method: str, profile: str, seed: int, metrics: dict | None, *,
                status: str = "finished", uses_camera_ids: bool = False,
                deviations: tuple[str, ...] = (), history: list | None = None,
                config: dict | None = None, init: dict | None = None,
                commit: str = "0123456789abcdef", dirty: bool = False,
                paper_init: str = IMAGENET_V1, not_comparable: str | None = None,
                tracking: dict | None = None, schema: int = 2) -> dict:
    """A record as the runner writes it; by default a paper-profile run is the paper's own run
    (the paper's config, ImageNet V1 weights, a clean tree)."""
    config = dict(PAPER_CONFIG if config is None else config)
    settings = PROFILE_SETTINGS[profile]
    if init is None:
        init = IMAGENET if settings["pretrained"] else {"key": "random", "description": "random"}
    record = {
        "schema": schema, "method": method, "dataset": dataset, "seed": seed, "profile": profile,
        "status": status, "uses_camera_ids": uses_camera_ids, "deviations": list(deviations),
        "profile_settings": settings, "dataset_facts": FACTS[dataset], "config": config,
        "environment": {"commit": commit, "dirty": dirty, "device": "cpu",
                        "cpu": "Test CPU", "packages": {"torch": "2.x"},
                        **({"diff_sha256": "d1ff" * 16} if dirty else {})},
        "history": history or [],
    }
    if schema >= 2:
        differs = paper_config_diff(config, PAPER_CONFIG)
        record.update({
            "config_hash": config_hash(config, settings), "init": init,
            "paper_run": {"config_equal": not differs, "config_differs": differs,
                          "init": paper_init, "not_comparable": not_comparable},
        })
    if tracking is not None:
        record["tracking"] = tracking
    if status == "finished":
        record["metrics"] = metrics
    else:
        record["error"] = {"type": "RuntimeError", "message": "boom"}
    return record


def write(results: Path, record: dict) -> None:
    cell = cell_dir(results, record["dataset"], record["method"], record["profile"], record["seed"])
    write_record(record_path(cell), record)


def quality(epoch: int, precision: float) -> dict:
    return {"epoch": epoch, "pseudo_labels": {"precision": precision, "recall": 0.5,
                                              "fscore": 0.6, "num_clusters": 10 + epoch}}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for (dataset, method), values in VALUES.items():
        for seed in (0, 1):
            metrics = {m: v[seed] for m, v in values.items()}
            metrics["cmc"] = list(np.linspace(metrics["R1"], 1.0, 20))
            write(root, make_record(
                dataset, method, "paper", seed, metrics,
                deviations=("uses Adam, the paper SGD", "fewer epochs") if method == "beta" else (),
                history=[quality(0, 0.4 + seed / 10), quality(1, 0.6)]))
    # beta's third seed failed: flagged, never averaged
    write(root, make_record("market1501", "beta", "paper", 2, None, status="failed"))
    # quick-profile runs on the same real dataset: a different protocol, no claims
    for seed in (0, 1):
        metrics = {m: v[seed] / 2 for m, v in VALUES[("market1501", "alpha")].items()}
        write(root, make_record("market1501", "alpha", "quick", seed, metrics))
    # a withdrawn dataset, and a method that uses camera ids
    for seed, (mAP, R1) in enumerate([(0.3, 0.5), (0.32, 0.54)]):
        write(root, make_record("dukemtmc-reid", "alpha", "paper", seed, {"mAP": mAP, "R1": R1},
                                uses_camera_ids=True))
    # MLflow keeps artifact copies of records under the results folder: they must not be read
    artifact = root / "mlartifacts" / "1" / "abc" / "artifacts" / "record.json"
    artifact.parent.mkdir(parents=True)
    artifact.write_text(json.dumps(make_record("market1501", "alpha", "paper", 0, {"mAP": 0.99})))
    return root


@pytest.fixture(scope="module")
def written(results: Path, claims: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("leaderboard")
    paths = write_leaderboard(results, out, claims=claims)
    return out, paths, pd.read_csv(out / "leaderboard.csv")


def cells(frame: pd.DataFrame, dataset: str, method: str, profile: str = "paper") -> pd.DataFrame:
    sub = frame[(frame.dataset == dataset) & (frame.method == method) & (frame.profile == profile)]
    return sub.set_index("metric")


def test_mean_std_and_n_match_numpy_on_the_test_values(written) -> None:
    _, _, frame = written
    for (dataset, method), values in VALUES.items():
        got = cells(frame, dataset, method)
        assert set(got.index) == set(REID)
        for metric, seed_values in values.items():
            v = 100 * np.asarray(seed_values)
            sd = np.std(v, ddof=1)
            # the CSV rounds to 0.01 points: within half of that of numpy's numbers
            assert got.loc[metric, "mean_pct"] == pytest.approx(np.mean(v), abs=0.005)
            assert got.loc[metric, "std_pct"] == pytest.approx(sd, abs=0.005)
            half = T975[1] * sd / np.sqrt(2)  # clipped to the range a percentage can take
            low, high = max(np.mean(v) - half, 0.0), min(np.mean(v) + half, 100.0)
            assert got.loc[metric, "ci95_low_pct"] == pytest.approx(low, abs=0.005)
            assert got.loc[metric, "ci95_high_pct"] == pytest.approx(high, abs=0.005)
            assert got.loc[metric, "n"] == 2  # beta's failed seed 2 is not counted
            assert got.loc[metric, "seeds"] == "0 1"
    quick = cells(frame, "market1501", "alpha", "quick")
    assert quick.loc["mAP", "mean_pct"] == pytest.approx(100 * np.mean([0.301 / 2, 0.327 / 2]),
                                                         abs=0.005)


def test_claims_and_differences_only_for_comparable_cells(written) -> None:
    _, _, frame = written
    alpha = cells(frame, "market1501", "alpha")
    assert alpha.loc["mAP", "claim_pct"] == 35.0  # the own ResNet-50 claim, not 20/40/45/50
    assert alpha.loc["R1", "claim_pct"] == 63.8
    assert alpha.loc["mAP", "diff_pct"] == pytest.approx(100 * np.mean([0.301, 0.327]) - 35.0,
                                                         abs=0.005)
    assert alpha.loc["R1", "diff_pct"] == pytest.approx(100 * np.mean([0.612, 0.640]) - 63.8,
                                                        abs=0.005)
    # Δ in std units, and whether the claim lies in the t interval (hand-computed)
    sd = np.std([30.1, 32.7], ddof=1)
    assert alpha.loc["mAP", "diff_sd"] == pytest.approx((31.4 - 35.0) / sd, abs=0.005)
    inside = bool(abs(35.0 - 31.4) <= T975[1] * sd / np.sqrt(2))
    assert bool(alpha.loc["mAP", "claim_in_ci"]) is inside
    assert alpha.loc[["R5", "R10", "mINP"], "claim_pct"].isna().all()  # no claim for those

    beta = cells(frame, "market1501", "beta")
    # quoted, sensitivity, other backbone and "with camera labels" claims are never shown ...
    assert beta.loc[["mAP", "R1", "R5", "R10"], "claim_pct"].isna().all()
    assert beta.loc[["mAP", "R1", "R5", "R10"], "diff_pct"].isna().all()
    # ... a claim whose paper does not state the backbone is, with the fact in its source
    assert beta.loc["mINP", "claim_pct"] == 5.0
    assert "backbone not stated" in beta.loc["mINP", "claim_source"]

    # the small profile's runs on the same dataset: never beside a claim
    assert cells(frame, "market1501", "alpha", "quick")["claim_pct"].isna().all()
    # the withdrawn dataset's run uses camera ids; alpha's claim there is comparable
    duke = cells(frame, "dukemtmc-reid", "alpha")
    assert duke.loc["mAP", "claim_pct"] == 36.0
    assert "camera ids" in duke.loc["mAP", "flags"] and "withdrawn dataset" in duke.loc["mAP", "flags"]


def test_synthetic_tables_have_no_claim_column(results: Path, claims: pd.DataFrame, written) -> None:
    _, _, frame = written
    synthetic = frame[frame.dataset == "synthetic-reid"]
    assert synthetic["synthetic"].all() and synthetic["claim_pct"].isna().all()
    # even if a claims file named the synthetic dataset, the rule refuses it
    assert comparable_claims(claims, method="alpha", dataset="market1501", profile="paper",
                             backbone="resnet50", pretrained=True, uses_camera_ids=False,
                             synthetic=True).empty

    tables = {(t.dataset, t.profile): t for t in build_tables(load_records(results), claims)}
    assert set(tables) == {("market1501", "paper"), ("market1501", "quick"),
                           ("synthetic-reid", "paper"), ("dukemtmc-reid", "paper")}
    for key in [("synthetic-reid", "paper"), ("market1501", "quick")]:
        shown = display_frame(tables[key])
        assert not [c for c in shown.columns if "claim" in c or "Δ" in c], key
    assert "Synthetic data" in tables[("synthetic-reid", "paper")].note
    assert "quick profile" in tables[("market1501", "quick")].note
    shown = display_frame(tables[("market1501", "paper")])
    assert {"mAP claim", "mAP Δ", "R1 claim", "R1 Δ", "mINP claim"} <= set(shown.columns)
    assert "R5 claim" not in shown.columns
    # best first; the failed seed and the deviations are flagged per row with a footnote
    assert list(shown["method"]) == ["alpha", "beta"]
    beta_flags = shown.set_index("method").loc["beta", "flags"]
    assert "2 deviations [D1]" in beta_flags and "failed seed 2" in beta_flags
    notes = "\n".join(tables[("market1501", "paper")].footnotes)
    assert "[D1] beta: (1) uses Adam, the paper SGD (2) fewer epochs" in notes
    assert "RuntimeError: boom" in notes


def test_every_format_and_plot_is_written(written) -> None:
    out, paths, _ = written
    for fmt in ("md", "csv", "tex", "html"):
        assert (out / f"leaderboard.{fmt}") in paths and (out / f"leaderboard.{fmt}").stat().st_size > 0
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"cmc_market1501_paper.png", "cmc_synthetic-reid_paper.png",
            "pseudo_labels_market1501_paper.png", "claims_vs_reproduced.png"} <= plots
    for name in plots:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = (out / "leaderboard.md").read_text()
    synthetic_section = md.split("## Synthetic re-ID")[1].split("\n## ")[0]
    assert "| method" in synthetic_section and "claim" not in synthetic_section.split("| method")[1]
    # alpha's mAP: mean 31.4, sample std 1.84, t interval 31.4 ± 12.706 * 1.84 / sqrt(2)
    assert "| 31.4 ± 1.8 [14.9, 47.9] |" in md
    assert "commits: 0123456789ab" in md and "hardware: cpu (Test CPU)" in md
    # synthetic data never shares a summary with real datasets
    assert {"## Summary, paper profile", "## Summary, paper profile, synthetic data",
            "## Summary, quick profile"} <= set(md.splitlines())
    real_summary = md.split("## Summary, paper profile\n")[1].split("\n## ")[0]
    assert "Synthetic" not in real_summary and "Market-1501 mAP" in real_summary

    tex = (out / "leaderboard.tex").read_text()
    assert tex.count("\\begin{table}") == 4 + 3 and "$\\pm$" in tex and "±" not in tex

    page = (out / "leaderboard.html").read_text()
    # per dataset a table and its provenance table, plus three summaries
    assert page.count("<table") == 2 * 4 + 3 and page.count('src="data:image/png;base64,') >= 4
    assert 'src="http' not in page and "<link" not in page  # self-contained


def test_profile_filter_and_bad_input(results: Path, claims: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_leaderboard(results, tmp_path / "q", ["csv"], profile="quick", claims=claims,
                              plots=False)
    frame = pd.read_csv(paths[0])
    assert set(frame.profile) == {"quick"} and set(frame.dataset) == {"market1501"}
    with pytest.raises(ResultsError, match="no result record of profile 'ci'"):
        write_leaderboard(results, tmp_path / "c", profile="ci", claims=claims)
    with pytest.raises(ResultsError, match="does not exist"):
        write_leaderboard(tmp_path / "missing", tmp_path / "m", claims=claims)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="empty: no result records"):
        write_leaderboard(tmp_path / "empty", tmp_path / "e", claims=claims)

    moved = tmp_path / "moved"
    shutil.copytree(results / "market1501" / "alpha", moved / "market1501" / "beta")
    with pytest.raises(ResultsError, match=r"record.json: record does not belong to its folder: "
                                           r"method 'alpha' \(folder says 'beta'\)"):
        load_records(moved)
    broken = moved / "market1501" / "beta" / "paper" / "seed0" / "record.json"
    broken.write_text("{not json")
    with pytest.raises(ResultsError, match=f"{broken}: not valid JSON"):
        load_records(moved)


def test_cli_writes_the_requested_formats(results: Path, tmp_path: Path, capsys) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmark", "leaderboard", "--results", str(results),
         "--out", str(tmp_path), "--format", "md,html", "--no-plots"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.html", "leaderboard.md"]
    # bad input: exit 2 and a message saying what is wrong (in-process: no second interpreter)
    assert main(["leaderboard", "--results", str(results), "--out", str(tmp_path),
                 "--format", "pdf"]) == 2
    assert "choose from md, csv, tex, html" in capsys.readouterr().err
    assert main(["leaderboard", "--results", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: results folder does not exist" in capsys.readouterr().err


def test_ussl_star_rows_get_the_papers_starred_claims_and_ussl_the_plain_ones() -> None:
    from benchmark.reporting.claims import load_claims
    from benchmark.reporting.leaderboard import comparable_claims

    claims = load_claims()
    common = dict(dataset="market1501", profile="paper", backbone="resnet50", pretrained=True,
                  uses_camera_ids=True, synthetic=False)
    star = comparable_claims(claims, method="ussl-star", **common)
    plain = comparable_claims(claims, method="ussl", **common)
    assert not star.empty and set(star["backbone"]) == {"ResNet-50*"}
    assert not plain.empty and set(plain["backbone"]) == {"ResNet-50"}
    mAP = lambda frame: frame[frame["metric"] == "mAP"]["value"].iloc[0]  # noqa: E731
    assert (mAP(plain), mAP(star)) == (68.7, 82.3)  # Table II as printed
