"""`python -m benchmark datasets verify|list` on a Market-1501 copy with the real file counts.

The copy has all 36,036 files of Market-1501 (every one the same tiny JPEG, hard-linked), so the
canonical counts on the card are checked end to end through the command line, as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from miniature_reid import Built, write_market1501_full_size

from benchmark.data.cards import get_card

CANONICAL = {  # Market-1501 as published (Zheng et al., ICCV 2015), junk removed
    "train": {"images": 12936, "identities": 751, "cameras": 6},
    "query": {"images": 3368, "identities": 750, "cameras": 6},
    "gallery": {"images": 15913, "identities": 751, "cameras": 6},
}


def cli(*args: str, tmp: Path) -> tuple[int, object]:
    env = {k: v for k, v in os.environ.items() if k != "BENCHMARK_DATA_ROOT"}
    env["BENCHMARK_CACHE_DIR"] = str(tmp / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"not JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return write_market1501_full_size(tmp_path_factory.mktemp("root"))


def test_the_copy_has_the_published_file_counts(market: Built) -> None:
    files = {
        d: len(os.listdir(market.location / d))
        for d in ("bounding_box_train", "query", "bounding_box_test")
    }
    assert files == {"bounding_box_train": 12936, "query": 3368, "bounding_box_test": 19732}
    assert market.junk == 3819 and market.counts() == CANONICAL
    card = get_card("market1501")
    assert {s: c.as_dict() for s, c in card.splits.items()} == CANONICAL


def test_verify_accepts_a_full_size_copy(market: Built, tmp_path: Path) -> None:
    rc, report = cli(
        "datasets",
        "verify",
        "market1501",
        "--root",
        str(market.location.parent),
        "--json",
        tmp=tmp_path,
    )
    assert rc == 0, report
    assert report["ok"] is True and report["problems"] == []
    assert report["splits"] == CANONICAL
    assert Path(report["location"]) == market.location


def test_verify_names_the_split_that_lost_an_image(market: Built, tmp_path: Path) -> None:
    victim = market.location / "query" / sorted(os.listdir(market.location / "query"))[100]
    aside = tmp_path / victim.name
    victim.rename(aside)
    try:
        rc, report = cli(
            "datasets",
            "verify",
            "market1501",
            "--root",
            str(market.location.parent),
            "--json",
            tmp=tmp_path,
        )
    finally:
        aside.rename(victim)
    assert rc != 0
    assert report["ok"] is False
    assert report["splits"]["query"]["images"] == 3367
    assert [(p["split"], p["field"]) for p in report["problems"]] == [("query", "images")]
    assert "'query'" in report["problems"][0]["message"]


def test_list_reports_which_datasets_are_present(market: Built, tmp_path: Path) -> None:
    rc, rows = cli(
        "datasets", "list", "--root", str(market.location.parent), "--json", tmp=tmp_path
    )
    assert rc == 0
    present = {r["name"]: r["present"] for r in rows}
    assert present["market1501"] is True
    for other in ("dukemtmc-reid", "cuhk03-np-labeled", "cuhk03-np-detected", "msmt17"):
        assert present[other] is False, other

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, rows = cli("datasets", "list", "--root", str(empty), "--json", tmp=tmp_path)
    assert rc == 0
    assert {r["name"]: r["present"] for r in rows}["market1501"] is False


def _corrupt(path: Path, tmp: Path) -> Path:
    """Replace `path` (a hard link to the shared JPEG) by a truncated copy; returns the original
    moved aside, for restoring."""
    aside = tmp / f"aside-{path.parent.name}-{path.name}"
    data = path.read_bytes()
    path.rename(aside)
    path.write_bytes(data[: len(data) // 2])
    return aside


def test_deep_verify_names_every_unreadable_image(market: Built, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  fault_table: list) -> None:
    train = market.location / "bounding_box_train" / sorted(
        os.listdir(market.location / "bounding_box_train"))[7]
    gallery = market.location / "bounding_box_test" / sorted(
        os.listdir(market.location / "bounding_box_test"))[4000]
    moved = [(train, _corrupt(train, tmp_path)), (gallery, _corrupt(gallery, tmp_path))]
    try:
        rc, plain = cli("datasets", "verify", "market1501", "--root",
                        str(market.location.parent), "--json", tmp=tmp_path)
        rc_deep, deep = cli("datasets", "verify", "market1501", "--root",
                            str(market.location.parent), "--deep", "--json", tmp=tmp_path)
        from benchmark.engine.runner import run_cell

        monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path / "cache"))
        record = run_cell("engine_probes:LabelSnoop", "market1501", 0, "ci", tmp_path / "out",
                          "cpu", tracking=False, log=None, root=market.location.parent)
    finally:
        for path, aside in moved:
            path.unlink()
            aside.rename(path)
    assert rc == 0 and plain["ok"]  # the counts alone cannot see it
    assert rc_deep == 1 and not deep["ok"]
    assert sorted(p["path"] for p in deep["problems"]) == sorted([str(train), str(gallery)])
    assert any("32217 images decoded, 2 unreadable" in n for n in deep["notes"])
    # run refuses before training, naming the files (never a BytesIO)
    assert record["status"] == "failed" and not record.get("history")
    message = record["error"]["message"]
    assert str(train) in message and str(gallery) in message and "BytesIO" not in message
    assert "2 unreadable image(s)" in message
    fault_table.append({"fault": "corrupt file: undecodable images", "trials": 2, "survived": 2,
                        "lost": 0})
