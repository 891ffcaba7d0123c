"""Protocol cards parse, agree with the registry, and bad cards are reported by file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark.data.cards import all_cards, parse_card
from benchmark.data.errors import DatasetFileError
from benchmark.data.registry import dataset_names, entry
from benchmark.paths import CARDS_DIR, data_root

EXPECTED = {
    "market1501", "dukemtmc-reid", "cuhk03-np-labeled", "cuhk03-np-detected", "msmt17",
    "mnist", "cifar10", "cifar100", "cifar100-coarse", "stl10", "digits", "synthetic-reid",
}


def test_every_benchmark_dataset_has_a_card_and_a_loader():
    assert set(dataset_names()) == EXPECTED
    for name in EXPECTED:
        assert entry(name).name == name


def test_card_contents_are_consistent():
    for card in all_cards().values():
        assert card.source is not None and card.source.stem == card.name
        if card.kind == "reid":
            assert set(card.splits) == {"train", "query", "gallery"}, card.name
            for split, counts in card.splits.items():
                assert counts.identities and counts.cameras, (card.name, split)
            assert card.folders or card.embedded, card.name
        else:
            assert card.num_classes, card.name
            for split, counts in card.splits.items():
                assert counts.classes and counts.classes <= card.num_classes, (card.name, split)
    assert all_cards()["dukemtmc-reid"].withdrawn
    assert all_cards()["synthetic-reid"].synthetic and all_cards()["synthetic-reid"].embedded


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name = 'x'\nkind = 'reid'\n", "lacks required key"),
        ("name = 'x'\ntitle = 'x'\nkind = 'video'\n[splits.train]\nimages = 1\n", "kind must be"),
        ("name = 'x'\ntitle = 'x'\nkind = 'reid'\n[splits.train]\nimage = 1\n", "[splits.train]"),
        ("name = 'x\n", "not valid TOML"),
    ],
)
def test_malformed_card_names_the_file(tmp_path, text, fragment):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(DatasetFileError) as err:
        parse_card(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCHMARK_DATA_ROOT", raising=False)
    assert str(data_root()) == "data"
    monkeypatch.setenv("BENCHMARK_DATA_ROOT", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"


def test_datasets_list_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "datasets", "list", "--json", "--root", str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=CARDS_DIR.parent,
    )
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == EXPECTED
    for row in rows.values():
        assert set(row) == {"name", "kind", "embedded", "present"}
        assert row["present"] == row["embedded"]  # an empty root holds only the embedded sets
    assert rows["digits"]["kind"] == "clustering" and rows["market1501"]["kind"] == "reid"


def test_verify_unknown_dataset_fails_clearly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "datasets", "verify", "nope", "--json"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert not report["ok"] and "unknown dataset" in report["problems"][0]["message"]


def test_verify_missing_dataset_names_where_it_looked(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "datasets", "verify", "market1501", "--root",
         str(tmp_path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert "Market-1501-v15.09.15" in out.stderr and "FAILED" in out.stdout
