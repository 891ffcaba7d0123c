"""`check` is what turns CI red when a change moves a reproduced number, so it is shown to pass on a
matching reference, to fail naming the cell when one value leaves its tolerance, and to treat a cell
with nothing to compare (no record, a missing or failed seed, a missing metric) as a failure too.
Expected means are computed with numpy from the test's own numbers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.engine import records as engine_records
from benchmark.reporting import results as reporting_results
from benchmark.reporting.check import (
    ReferenceCell,
    ReferenceError,
    check_records,
    load_reference,
    tolerance_for,
)
from benchmark.reporting.results import find_record_files, load_records

REFERENCE_CI = Path(__file__).resolve().parent.parent / "leaderboards" / "reference" / "ci.toml"

# (dataset, method, profile) -> seed -> metrics (fractions)
VALUES = {
    ("digits", "alpha", "ci"): {0: {"ACC": 0.40, "NMI": 0.30, "ARI": 0.20},
                                1: {"ACC": 0.44, "NMI": 0.36, "ARI": 0.26}},
    ("synthetic-reid", "alpha", "ci"): {0: {"mAP": 0.25, "R1": 0.50, "R5": 0.7, "R10": 0.8,
                                            "mINP": 0.05},
                                        1: {"mAP": 0.29, "R1": 0.56, "R5": 0.7, "R10": 0.9,
                                            "mINP": 0.07}},
    ("synthetic-reid", "beta", "ci"): {0: {"mAP": 0.11, "R1": 0.20, "R5": 0.3, "R10": 0.4,
                                           "mINP": 0.01}},
}


def mean(dataset: str, method: str, metric: str) -> float:
    return float(np.mean([m[metric] for m in VALUES[(dataset, method, "ci")].values()]))


def write(root: Path, dataset: str, method: str, profile: str, seed: int, metrics: dict | None,
          status: str = "finished") -> None:
    record = {"method": method, "dataset": dataset, "profile": profile, "seed": seed,
              "status": status}
    if metrics is not None:
        record["metrics"] = {**metrics, "cmc": [0.1, 0.2]}
    if status != "finished":
        record["error"] = {"type": "RuntimeError", "message": "boom"}
    folder = engine_records.cell_dir(root, dataset, method, profile, seed)
    engine_records.write_record(engine_records.record_path(folder), record)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for (dataset, method, profile), seeds in VALUES.items():
        for seed, metrics in seeds.items():
            write(root, dataset, method, profile, seed, metrics)
    return root


def cell(method: str, dataset: str, metric: str, value: float, tolerance: float,
         seeds: list[int] | None = None, profile: str = "ci") -> str:
    text = (f'[[cell]]\nmethod = "{method}"\ndataset = "{dataset}"\nprofile = "{profile}"\n'
            f'metric = "{metric}"\nvalue = {value!r}\ntolerance = {tolerance!r}\n')
    return text + (f"seeds = {seeds}\n" if seeds is not None else "")


def matching_reference() -> list[str]:
    """Every cell of the test's results, at the numpy mean, tolerance 0.01."""
    cells = []
    for (dataset, method, _), seeds in VALUES.items():
        for metric in seeds[0]:
            cells.append(cell(method, dataset, metric, mean(dataset, method, metric), 0.01,
                              sorted(seeds)))
    return cells


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", "check", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_reader_follows_the_engine_layout(tmp_path: Path) -> None:
    assert reporting_results.RECORD_NAME == engine_records.RECORD_NAME
    assert reporting_results.FINISHED == engine_records.FINISHED
    write(tmp_path, "digits", "some-method", "quick", 7, {"ACC": 0.5})
    [found] = find_record_files(tmp_path)
    assert found == engine_records.record_path(
        engine_records.cell_dir(tmp_path, "digits", "some-method", "quick", 7))


def test_cli_passes_on_a_matching_reference_and_fails_naming_the_moved_cell(
        results: Path, tmp_path: Path) -> None:
    cells = matching_reference()
    reference = tmp_path / "reference.toml"
    reference.write_text("\n".join(cells))
    done = run_cli("--results", str(results), "--reference", str(reference))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(cells)} within tolerance, 0 outside, 0 errors" in done.stdout

    # move alpha's digits ACC (mean 0.42) just outside its tolerance of 0.01
    moved = cell("alpha", "digits", "ACC", 0.4301, 0.01, [0, 1])
    assert cells[0] == cell("alpha", "digits", "ACC", mean("digits", "alpha", "ACC"), 0.01, [0, 1])
    reference.write_text("\n".join([moved, *cells[1:]]))
    done = run_cli("--results", str(results), "--reference", str(reference))
    assert done.returncode == 1
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("OUTSIDE")]
    assert lines == [("OUTSIDE TOLERANCE cell #1: alpha on digits (ci, seeds [0, 1]) ACC: expected "
                      "0.4301 ± 0.0100, found 0.4200 (mean of seeds [0, 1]; off by -0.0101)")]
    assert f"{len(cells) - 1} within tolerance, 1 outside, 0 errors" in done.stdout


def test_the_tolerance_is_inclusive_and_means_use_the_named_seeds(results: Path, tmp_path: Path) -> None:
    path = tmp_path / "ref.toml"
    # each value sits exactly one tolerance from the mean in decimal, a hair beyond it in floats
    path.write_text(cell("alpha", "digits", "ACC", 0.39, 0.03)
                    + cell("alpha", "digits", "NMI", 0.37, 0.01, seeds=[1])
                    + cell("alpha", "digits", "NMI", 0.31, 0.01, seeds=[0]))
    outcome = check_records(load_reference(path), load_records(results))
    assert [r.status for r in outcome] == ["ok", "ok", "ok"]
    assert [abs(r.found - r.cell.value) > r.cell.tolerance for r in outcome] == [True] * 3
    assert outcome[0].found == pytest.approx(0.42) and outcome[0].seeds == (0, 1)
    assert outcome[1].found == 0.36 and outcome[2].found == 0.30


def test_cells_the_reference_does_not_name_are_noted_not_failed(results: Path, tmp_path: Path,
                                                               capsys) -> None:
    path = tmp_path / "ref.toml"
    path.write_text(cell("alpha", "digits", "ACC", 0.42, 0.01))
    assert main(["check", "--results", str(results), "--reference", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("note: 2 finished cell(s) not in the reference, not checked: alpha on synthetic-reid "
            "(ci); beta on synthetic-reid (ci)") in out


@pytest.mark.parametrize(("entry", "message"), [
    (cell("gamma", "digits", "ACC", 0.4, 0.1), "no matching record"),
    (cell("alpha", "digits", "ACC", 0.4, 0.1, profile="quick"), "no matching record"),
    (cell("alpha", "digits", "ACC", 0.42, 0.1, seeds=[0, 1, 2]), "no record for seed(s) [2]"),
    (cell("beta", "synthetic-reid", "mAP", 0.11, 0.1), "seed(s) [1] failed"),
    (cell("alpha", "digits", "mAP", 0.4, 0.1), "record(s) of seed(s) [0, 1] hold no mAP"),
])
def test_a_cell_with_nothing_to_compare_fails(results: Path, tmp_path: Path, capsys,
                                              entry: str, message: str) -> None:
    write(results, "synthetic-reid", "beta", "ci", 1, None, status="failed")
    path = tmp_path / "ref.toml"
    path.write_text(cell("alpha", "digits", "NMI", mean("digits", "alpha", "NMI"), 0.01) + entry)
    assert main(["check", "--results", str(results), "--reference", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("ERROR") == 1 and "ERROR cell #2" in err and message in err


def test_write_reference_round_trip(results: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "written.toml"
    assert main(["check", "--results", str(results), "--write-reference", str(path)]) == 0
    cells = tomllib.loads(path.read_text())["cell"]
    assert len(cells) == sum(len(seeds[0]) for seeds in VALUES.values())
    for c in cells:
        seeds = VALUES[(c["dataset"], c["method"], c["profile"])]
        assert c["seeds"] == sorted(seeds)
        assert c["value"] == pytest.approx(mean(c["dataset"], c["method"], c["metric"]), abs=1e-6)
        assert c["tolerance"] == (0.02 if c["metric"] in ("mAP", "NMI") else 0.03)
    assert main(["check", "--results", str(results), "--reference", str(path)]) == 0

    assert main(["check", "--results", str(results), "--write-reference", str(path),
                 "--tolerance-default", "0.01"]) == 0
    tolerances = {c["metric"]: c["tolerance"] for c in tomllib.loads(path.read_text())["cell"]}
    assert tolerances == {"ACC": 0.015, "NMI": 0.01, "ARI": 0.015, "mAP": 0.01, "R1": 0.015,
                          "R5": 0.015, "R10": 0.015, "mINP": 0.015}
    assert tolerance_for("R1", 0.02) == 0.03

    write(results, "digits", "alpha", "ci", 2, None, status="failed")
    capsys.readouterr()
    assert main(["check", "--results", str(results), "--write-reference", str(path)]) == 2
    err = capsys.readouterr().err
    assert "failed records" in err and "alpha on digits (ci, seed 2)" in err


def test_bad_reference_files_are_named_with_every_problem(results: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(cell("alpha", "digits", "ACC", 42.0, 0.01)  # percent, not a fraction
                    + cell("alpha", "digits", "cmc", 0.4, 0.01)
                    + '[[cell]]\nmethod = "alpha"\ndataset = "digits"\nprofile = "ci"\n'
                      'metric = "NMI"\nvalue = 0.3\nseeds = [0, 0]\ncolour = "red"\n'
                    + cell("alpha", "digits", "ARI", 0.2, 0.01) * 2)
    with pytest.raises(ReferenceError) as info:
        load_reference(path)
    text = str(info.value)
    assert text.startswith(f"{path}: 6 problem(s)")
    for part in ["cell #1: value 42.0 must be a fraction in [0, 1]",
                 "cell #2: metric 'cmc' is not one of", "cell #3: missing key(s) ['tolerance']",
                 "cell #3: unknown key(s) ['colour']", "cell #3: seeds [0, 0] repeat a seed",
                 "cell #5: duplicates cell #4"]:
        assert part in text
    assert main(["check", "--results", str(results), "--reference", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    assert main(["check", "--results", str(results), "--reference", str(tmp_path / "none.toml")]) == 2
    assert "reference file not found" in capsys.readouterr().err


@pytest.mark.skipif(not REFERENCE_CI.is_file(), reason="leaderboards/reference/ci.toml not generated")
def test_committed_ci_reference_is_valid() -> None:
    cells = load_reference(REFERENCE_CI)
    assert {c.profile for c in cells} == {"ci"}
    assert all(c.seeds for c in cells)  # pinned seeds: a dropped seed is an error, not a pass
    for c in cells:
        assert c.tolerance == tolerance_for(c.metric)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_CI.is_file(), reason="leaderboards/reference/ci.toml not generated")
def test_committed_ci_reference_passes_on_a_real_run_and_fails_when_moved(tmp_path: Path,
                                                                          capsys) -> None:
    """The cheapest cell of the ci suite, run for real, against the committed reference."""
    from benchmark.engine.runner import run_cell

    committed = [c for c in load_reference(REFERENCE_CI)
                 if (c.method, c.dataset) == ("raw-pixels", "digits")]
    assert {c.metric for c in committed} == {"ACC", "NMI", "ARI"}
    results = tmp_path / "results"
    for seed in sorted({s for c in committed for s in c.seeds}):
        record = run_cell("raw-pixels", "digits", seed, "ci", results, tracking=False, log=None)
        assert record["status"] == "finished", record.get("error")

    def reference(cells: list) -> Path:
        path = tmp_path / "ci-subset.toml"
        path.write_text("\n".join(cell(c.method, c.dataset, c.metric, c.value, c.tolerance,
                                       list(c.seeds), c.profile) for c in cells))
        return path

    assert main(["check", "--results", str(results), "--reference", str(reference(committed))]) == 0
    first = committed[0]
    shift = first.tolerance + 0.005
    moved = first.value + shift if first.value + shift <= 1 else first.value - shift
    changed = [ReferenceCell(**{**vars(first), "value": moved}), *committed[1:]]
    capsys.readouterr()
    assert main(["check", "--results", str(results), "--reference", str(reference(changed))]) == 1
    err = capsys.readouterr().err
    assert f"OUTSIDE TOLERANCE cell #1: raw-pixels on digits (ci, seeds [0]) {first.metric}: " \
           f"expected {moved:.4f}" in err
    assert err.count("OUTSIDE") == 1
