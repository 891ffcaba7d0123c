"""The paper reference is generated from the claims and the verdict decides whether a lab reproduced a
paper, so both are checked against independent computations: the committed file against a fresh
generation and against the claims it cites, the verdicts against hand-computed t intervals on
fabricated paper-profile records, including records that must never count."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.engine.records import cell_dir, record_path, write_record
from benchmark.engine.run_identity import IMAGENET_V1, paper_config_diff
from benchmark.reporting.check import ReferenceCell, load_reference
from benchmark.reporting.claims import load_claims
from benchmark.reporting.claims_reference import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    claim_verdict,
    claims_reference_text,
)
from benchmark.paths import REPO_ROOT

PAPER_TOML = REPO_ROOT / "leaderboards" / "reference" / "paper.toml"
T975 = {2: 4.302652729749464, 3: 3.182446305284263}  # Student t 97.5% quantiles (printed tables)
CONFIG = {"epochs": 50, "eps": 0.6}
SETTINGS = {"name": "paper", "backbone": "resnet50", "pretrained": True}
IMAGENET = {"key": IMAGENET_V1, "sha256": "0676ba61" + "0" * 56, "description": "ImageNet"}


def test_committed_reference_is_what_the_claims_generate() -> None:
    assert PAPER_TOML.read_text(encoding="utf-8") == claims_reference_text()


def test_every_cell_is_a_headline_claim_of_the_methods_own_paper() -> None:
    from benchmark.engine.method_registry import get_method

    claims = load_claims().set_index("entry")
    document = tomllib.loads(PAPER_TOML.read_text(encoding="utf-8"))
    assert document["kind"] == "claims"
    seen = set()
    for cell in document["cell"]:
        claim = claims.loc[cell["claim_entry"]]
        cls = get_method(cell["method"])
        assert claim["paper"] == cls.paper.seed_file
        assert (claim["dataset"], claim["metric"]) == (cell["dataset"], cell["metric"])
        assert math.isclose(cell["value"] * 100, claim["value"], abs_tol=1e-9)
        assert claim["origin"] == "own" and claim["protocol"] == "fully unsupervised"
        assert not claim["qualifier"].startswith(("ablation:", "sensitivity:"))
        assert claim["backbone"] in ("ResNet-50", "ResNet-50*", "")
        assert (claim["backbone"] == "ResNet-50*") == (cell["method"] == "ussl-star")
        assert cell["table"] == claim["table"] and cell["row"] == claim["name"]
        assert "reports no std" in cell["tolerance_source"]
        assert cell["profile"] == "paper"
        seen.add((cell["method"], cell["dataset"], cell["metric"]))
    assert len(seen) == len(document["cell"])
    # the five papers' methods on the datasets they report, ussl's two backbones apart
    assert {m for m, _, _ in seen} == {"fgu", "intra-camera-refine", "similarity-guidance", "ussl",
                                       "ussl-star"}
    assert ("similarity-guidance", "stl10", "ACC") in seen and ("ussl", "msmt17", "R10") in seen
    # gcl-scl is left out, with the reason its adapter gives
    excluded = {(e["method"], e["dataset"]): e for e in document["excluded"]}
    assert set(excluded) == {("gcl-scl", d) for d in ("market1501", "dukemtmc-reid", "msmt17")}
    assert excluded[("gcl-scl", "market1501")]["reason"] == get_method("gcl-scl").not_comparable_reason(
        "market1501")
    assert len(load_reference(PAPER_TOML)) == len(document["cell"])


# -- verdicts on fabricated records -----------------------------------------------------------------
def cell(value: float = 0.35, tolerance: float = 0.02) -> ReferenceCell:
    return ReferenceCell(1, "alpha", "market1501", "paper", "mAP", value, tolerance, kind="claims")


def record(seed: int, mAP: float, *, config: dict | None = None, commit: str = "0123456789abcdef",
           dirty: bool = False, profile: str = "paper", status: str = "finished") -> dict:
    config = dict(CONFIG if config is None else config)
    differs = paper_config_diff(config, CONFIG)
    return {"schema": 2, "method": "alpha", "dataset": "market1501", "seed": seed,
            "profile": profile, "status": status, "metrics": {"mAP": mAP}, "config": config,
            "profile_settings": {**SETTINGS, "name": profile},
            "config_hash": json.dumps(config, sort_keys=True), "init": IMAGENET,
            "paper_run": {"config_equal": not differs, "config_differs": differs,
                          "init": IMAGENET_V1, "not_comparable": None},
            "environment": {"commit": commit, "dirty": dirty}}


def test_reproduced_when_the_claim_lies_in_the_t_interval() -> None:
    values = [0.30, 0.33, 0.37]
    mean, sd = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
    half = T975[2] * sd / math.sqrt(3)
    assert abs(0.35 - mean) > 0.0 and abs(0.35 - mean) <= half  # inside the CI, hand-computed
    v = claim_verdict(cell(tolerance=0.001), [record(s, x) for s, x in enumerate(values)])
    assert v.status == REPRODUCED and v.n == 3 and v.note == "claim inside the 95% CI"
    assert v.ci == pytest.approx((mean - half, mean + half))


def test_reproduced_within_tolerance_even_when_tight_seeds_exclude_the_claim() -> None:
    v = claim_verdict(cell(), [record(s, x) for s, x in enumerate([0.340, 0.341, 0.339])])
    assert v.ci[1] < 0.35 and v.status == REPRODUCED
    assert v.note == "mean within the tolerance of the claim"


def test_not_reproduced_gives_the_difference_and_the_interval() -> None:
    v = claim_verdict(cell(), [record(s, x) for s, x in enumerate([0.28, 0.29, 0.30])])
    assert v.status == NOT_REPRODUCED and v.diff == pytest.approx(-0.06)
    assert v.ci[1] < 0.35 - 0.02


@pytest.mark.parametrize(("values", "status"), [
    ([0.34, 0.36], REPRODUCED),  # every seed within the tolerance
    ([0.34, 0.30], INCONCLUSIVE),  # two seeds, one outside: too few to say "not reproduced"
    ([0.20], INCONCLUSIVE),
], ids=["two-within", "two-one-outside", "one-far"])
def test_fewer_than_three_seeds(values: list[float], status: str) -> None:
    assert claim_verdict(cell(), [record(s, x) for s, x in enumerate(values)]).status == status


def test_unlike_records_never_count() -> None:
    good = [record(s, x) for s, x in enumerate([0.34, 0.35, 0.36])]
    unlike = [record(3, 0.05, config={"epochs": 1, "eps": 0.6}),  # an override
              record(4, 0.05, dirty=True),  # uncommitted changes
              record(5, 0.05, profile="quick")]  # not even the paper profile (another cell)
    v = claim_verdict(cell(), good + unlike)
    assert v.status == REPRODUCED and v.seeds == (0, 1, 2) and v.mean == pytest.approx(0.35)
    assert any("epochs 1 (paper 50)" in x for x in v.left_out)
    assert any("uncommitted changes" in x for x in v.left_out)
    alone = claim_verdict(cell(), unlike[:2])
    assert alone.status == INCONCLUSIVE and alone.note == "no record is the paper's run"
    # two clean experiments of different commits do not pool: the larger one counts
    other = [record(s, 0.10, commit="fedcba9876543210") for s in (6, 7)]
    v = claim_verdict(cell(), good + other)
    assert v.seeds == (0, 1, 2) and sum("another experiment" in x for x in v.left_out) == 2
    assert claim_verdict(cell(), []).status == NOT_RUN


def write(results: Path, records: list[dict]) -> Path:
    for r in records:
        write_record(record_path(cell_dir(results, r["dataset"], r["method"], r["profile"],
                                          r["seed"])), r)
    return results


def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref.toml"
    path.write_text('kind = "claims"\n\n'
                    '[[cell]]\nmethod = "alpha"\ndataset = "market1501"\nprofile = "paper"\n'
                    'metric = "mAP"\nvalue = 0.35\ntolerance = 0.02\npaper = "A paper"\n'
                    'table = "Table 1"\nrow = "Ours"\nclaim_entry = 1\n\n'
                    '[[cell]]\nmethod = "beta"\ndataset = "market1501"\nprofile = "paper"\n'
                    'metric = "mAP"\nvalue = 0.5\ntolerance = 0.02\n')
    return path


def run_check(*args: str) -> int:
    return main(["check", *args])


def test_cli_exit_status_follows_the_verdicts(tmp_path: Path, capsys) -> None:
    ref = reference(tmp_path)
    good = write(tmp_path / "good", [record(s, x) for s, x in enumerate([0.34, 0.35, 0.36])])
    assert run_check("--results", str(good), "--reference", str(ref)) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED" in out and "1 reproduced, 1 not run" in out and "beta" not in out.split("check:")[0]
    assert run_check("--results", str(good), "--reference", str(ref), "--require-all") == 1
    capsys.readouterr()

    two = write(tmp_path / "two", [record(s, x) for s, x in enumerate([0.34, 0.30])])
    assert run_check("--results", str(two), "--reference", str(ref)) == 1
    assert run_check("--results", str(two), "--reference", str(ref), "--allow-inconclusive") == 0
    assert "inconclusive" in capsys.readouterr().err

    far = write(tmp_path / "far", [record(s, x) for s, x in enumerate([0.28, 0.29, 0.30])])
    assert run_check("--results", str(far), "--reference", str(ref), "--allow-inconclusive") == 1
    capsys.readouterr()
    assert run_check("--results", str(far), "--reference", str(ref), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    [alpha] = report["cells"]
    assert alpha["verdict"] == NOT_REPRODUCED and alpha["n"] == 3 and alpha["paper"] == "A paper"
    assert alpha["diff"] == pytest.approx(-0.06) and report["passed"] is False

    (tmp_path / "none").mkdir()
    assert run_check("--results", str(tmp_path / "none"), "--reference", str(ref)) == 1
    assert "nothing was checked" in capsys.readouterr().err


def test_write_claims_reference_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "paper.toml"
    assert run_check("--write-claims-reference", str(out)) == 0
    assert out.read_text(encoding="utf-8") == PAPER_TOML.read_text(encoding="utf-8")
    assert f"to {out}" in capsys.readouterr().out


def test_gpu_job_refuses_to_run_without_a_gpu_weights_or_data(tmp_path: Path) -> None:
    """Here (no GPU, or no weights and data) the job says what is missing and exits 2: never a pass."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCHMARK_", "GPU_"))}
    done = subprocess.run([str(REPO_ROOT / ".ci" / "gpu")], capture_output=True, text=True,
                          env={**env, "PYTHON": sys.executable, "GPU_OUT": str(tmp_path / "out")},
                          timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(".ci/gpu: ") and ("no CUDA GPU" in done.stderr
                                                     or "BENCHMARK_WEIGHTS" in done.stderr)
    assert not (tmp_path / "out").exists()
