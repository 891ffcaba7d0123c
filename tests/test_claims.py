"""The claims file is the yardstick every reproduction is measured against, so it is checked against
the papers themselves (their text and the papers README), and the validator is shown to reject the
mistakes people make when typing tables: wrong metric, percent/fraction mix-ups, duplicates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from benchmark.reporting.claims import CLAIMS_PATH, PAPERS_DIR, ClaimsError, load_claims
from paper_tables import cell_mismatches, label_key, load_table, unclaimed_cells

P0 = "000_c1761dddb921aef4.txt"
P1 = "001_0df80499ac7e015b.txt"
P2 = "002_48d5ad4b7370828a.txt"
P3 = "003_ed6bbd13637c441c.txt"
P4 = "004_41b5014654147628.txt"
PAPER_KEYS = {P0: "ussl", P1: "similarity-guidance", P2: "fgu", P3: "gcl-scl", P4: "intra-camera-refine"}

needs_papers = pytest.mark.skipif(not PAPERS_DIR.is_dir(), reason=f"{PAPERS_DIR} not present")


@pytest.fixture(scope="module")
def claims() -> pd.DataFrame:
    return load_claims()


def headline(claims: pd.DataFrame, paper: str, table: str, dataset: str, metric: str,
             backbone: str | None = None) -> pd.DataFrame:
    """The paper's own main-result rows: fully unsupervised, not an ablation or sweep."""
    rows = claims[(claims.paper == paper) & (claims.table == table) & (claims.dataset == dataset)
                  & (claims.metric == metric) & (claims.origin == "own")
                  & (claims.method == PAPER_KEYS[paper]) & (claims.protocol == "fully unsupervised")
                  & ~claims.qualifier.str.startswith(("ablation:", "sensitivity:"))]
    if backbone is not None:
        rows = rows[rows.backbone == backbone]
    return rows


def only_value(rows: pd.DataFrame) -> float:
    assert len(rows) == 1, rows[["name", "table", "backbone", "setting", "value"]]
    return float(rows.value.iloc[0])


# --- the committed file ---------------------------------------------------------------------------

def test_committed_file_validates_and_covers_every_paper(claims: pd.DataFrame) -> None:
    assert CLAIMS_PATH.is_file()
    assert set(claims.paper) == set(PAPER_KEYS)
    for paper, key in PAPER_KEYS.items():
        own = claims[(claims.paper == paper) & (claims.origin == "own")]
        assert (own.method == key).any(), paper
    assert set(claims.origin) == {"own", "quoted"}
    assert claims.entry.is_unique and claims.entry.min() == 1


def test_own_claims_are_the_papers_method_unless_marked_as_a_reproduction(claims: pd.DataFrame) -> None:
    own = claims[claims.origin == "own"]
    other = own[own.method != own.paper.map(PAPER_KEYS)]
    assert other.qualifier.str.contains("reproduced").all(), other[["paper", "method", "setting"]]


# Spot checks hand-listed from the papers README (with the table each number is printed in), so they
# hold even where the shared papers folder is absent.
SPOT_CHECKS = [
    (P3, "Table 1", "market1501", "mAP", "ResNet-50", 87.5),
    (P4, "Table 1", "market1501", "mAP", "", 83.2),
    (P0, "Table II", "market1501", "R1", "ResNet-50", 88.6),
    (P0, "Table II", "market1501", "R1", "ResNet-50*", 94.1),
    (P1, "Table 5", "mnist", "ACC", "ResNet-50", 95.0),
    (P2, "Table 8", "dukemtmc-reid", "mAP", "ResNet-50", 53.60),
]


@pytest.mark.parametrize(("paper", "table", "dataset", "metric", "backbone", "value"), SPOT_CHECKS)
def test_hand_listed_headline_numbers(claims: pd.DataFrame, paper: str, table: str, dataset: str,
                                      metric: str, backbone: str, value: float) -> None:
    assert only_value(headline(claims, paper, table, dataset, metric, backbone)) == value


def test_intra_camera_baseline_row(claims: pd.DataFrame) -> None:
    rows = claims[(claims.paper == P4) & (claims.table == "Table 2") & (claims.name == "Baseline")]
    got = {(d, m): v for d, m, v in zip(rows.dataset, rows.metric, rows.value)}
    assert got == {("market1501", "mAP"): 81.8, ("market1501", "R1"): 92.9,
                   ("msmt17", "mAP"): 33.0, ("msmt17", "R1"): 61.4}
    assert rows.qualifier.str.startswith("ablation:").all()


def test_similarity_guidance_cifar100_is_filed_under_both_protocols(claims: pd.DataFrame) -> None:
    fine = only_value(headline(claims, P1, "Table 5", "cifar100", "ACC"))
    coarse = only_value(headline(claims, P1, "Table 5", "cifar100-coarse", "ACC"))
    assert fine == coarse == 39.2
    notes = claims[(claims.paper == P1) & (claims.dataset.isin(["cifar100", "cifar100-coarse"]))
                   & (claims.origin == "own")].notes
    assert notes.str.contains("does not say").all()


def test_uda_and_supervised_rows_are_never_marked_fully_unsupervised(claims: pd.DataFrame) -> None:
    uda = claims[(claims.paper == P0) & (claims.table == "Table VIII")]
    assert len(uda) > 0 and uda.protocol.str.startswith("UDA (source: ").all()
    supervised = claims[(claims.paper == P3) & claims.method.isin(["pcb", "abd-net", "flipreid", "aaformer"])]
    assert len(supervised) > 0 and (supervised.protocol == "supervised").all()
    transfer = claims[(claims.paper == P1) & (claims.table == "Table 6") & claims.method.isin(["spgan", "pul"])]
    assert len(transfer) > 0 and (transfer.protocol == "UDA (source not stated)").all()


def test_full_model_rows_of_ablations_equal_the_main_table(claims: pd.DataFrame) -> None:
    """Each paper's full-model ablation row repeats its main result (002 prints one decimal fewer in
    its ablations, sometimes truncated: 73.46 -> 73.4); a column read in the wrong order would break
    this."""
    def row(paper: str, table: str, name: str, setting_part: str = "") -> dict[tuple[str, str], float]:
        rows = claims[(claims.paper == paper) & (claims.table == table) & (claims.name == name)
                      & claims.setting.str.contains(setting_part, regex=False)]
        assert len(rows) > 0, (paper, table, name)
        return {(d, m): v for d, m, v in zip(rows.dataset, rows.metric, rows.value)}

    def main(paper: str, table: str, keys) -> dict[tuple[str, str], float]:
        return {(d, m): only_value(headline(claims, paper, table, d, m)) for d, m in keys}

    full = row(P3, "Table 2", "Model 6")
    assert full == main(P3, "Table 1", full)
    full = row(P4, "Table 2", "Ours", "cosine")
    assert full == main(P4, "Table 1", full)
    full = row(P1, "Table 4", "d_1 + d_2 + d_3")
    assert full == main(P1, "Table 6", full) == row(P1, "Table 3", "+distance(ours)")
    reference = main(P2, "Table 8", row(P2, "Table 2", "attracted loss"))
    for table, name in (("Table 2", "attracted loss"), ("Table 3", "Minimum"), ("Table 4", "FEDAL loss"),
                        ("Table 6", "beta = 0.5"), ("Table 7", "lambda = 0.8")):
        got = row(P2, table, name)
        assert got.keys() == reference.keys(), table
        assert all(abs(got[k] - reference[k]) < 0.1 for k in got), (table, got, reference)


# --- every claim against its cell -----------------------------------------------------------------
# The tables are parsed in tests/paper_tables.py (one parser per layout the five extractions use).

# Claims that cannot be located at cell level: entry -> reason. Keep it empty where possible: a lost
# cell whose value the paper states elsewhere is restored in paper_tables.SPECS instead (003 Table 1,
# the paper's own Market-1501 R1, from its text).
NOT_AT_CELL_LEVEL: dict[int, str] = {}

# Printed numbers of referenced tables that the claims deliberately leave out (claims.toml header).
LEFT_OUT = {
    (P0, "Table VII", "cuhk03-np"),  # 0.0 (0.0) in both rows; labeled or detected not said
}


@needs_papers
def test_every_value_is_its_cells_value(claims: pd.DataFrame) -> None:
    """A number that is in its table but in another row or column (a swapped cell, a misread header)
    is still wrong; each claim is checked against the one cell its name, setting, dataset and metric
    designate."""
    assert set(NOT_AT_CELL_LEVEL) <= set(claims.entry)
    mismatches = cell_mismatches(claims, PAPERS_DIR, skip=NOT_AT_CELL_LEVEL)
    assert not mismatches, "\n".join(f"#{m.entry}: {m.problem}" for m in mismatches)


@needs_papers
def test_every_printed_cell_is_claimed(claims: pd.DataFrame) -> None:
    """The claims are meant to hold every number of the tables they cite; a dropped entry would
    otherwise go unnoticed."""
    left = [cell for cell in unclaimed_cells(claims, PAPERS_DIR)
            if (cell[0], cell[1], cell[3][0]) not in LEFT_OUT]  # paper, table, dataset
    assert not left


def _reported_after_swap(claims: pd.DataFrame, first: pd.Series,
                         second: pd.Series) -> tuple[list[int], list[int]]:
    """The entries the cell check reports once the values of two single entries are exchanged (in a
    copy of the frame), and those two entries. Both swaps below keep every number inside its table,
    so only a cell-level check sees them."""
    assert first.sum() == 1 and second.sum() == 1
    mutated = claims.copy()
    a, b = mutated.index[first][0], mutated.index[second][0]
    assert mutated.at[a, "value"] != mutated.at[b, "value"], "swapping equal values proves nothing"
    mutated.loc[[a, b], "value"] = mutated.loc[[b, a], "value"].to_numpy()
    reported = sorted(m.entry for m in cell_mismatches(mutated, PAPERS_DIR, skip=NOT_AT_CELL_LEVEL))
    return reported, sorted(int(mutated.at[i, "entry"]) for i in (a, b))


@needs_papers
def test_swapped_metrics_within_a_row_are_reported(claims: pd.DataFrame) -> None:
    row = (claims.paper == P4) & (claims.table == "Table 1") & (claims.name == "CAP") \
        & (claims.dataset == "market1501")
    reported, swapped = _reported_after_swap(claims, row & (claims.metric == "mAP"),
                                             row & (claims.metric == "R1"))
    assert reported == swapped


@needs_papers
def test_swapped_datasets_within_a_transposed_sweep_are_reported(claims: pd.DataFrame) -> None:
    row = (claims.paper == P2) & claims.qualifier.str.contains("beta = 0.2", regex=False) \
        & (claims.metric == "R1")
    reported, swapped = _reported_after_swap(claims, row & (claims.dataset == "market1501"),
                                             row & (claims.dataset == "dukemtmc-reid"))
    assert reported == swapped


@needs_papers
def test_fgu_table_3_is_read_in_table_2s_layout() -> None:
    """paper_tables reads 002 Table 3 against its printed header (see SPECS); that reading holds only
    while its full-model row is Table 2's full-model row cell for cell."""
    table_2 = load_table(PAPERS_DIR, P2, "Table 2")
    table_3 = load_table(PAPERS_DIR, P2, "Table 3")
    full = [row.cells for row in table_2.rows if row.label == label_key("attracted loss")]
    minimum = [row.cells for row in table_3.rows if row.label == label_key("Minimum")]
    assert len(full) == len(minimum) == 1 and full[0] == minimum[0]


README = PAPERS_DIR / "README.md"
_SEGMENT = re.compile(r"(Market|DukeMTMC-reID|MSMT17|CUHK03-NP labeled|detected)"
                      r"((?:\s+(?:mAP|R1|R5|R10)\s+\d+\.\d+)+)")
_PAIR = re.compile(r"(mAP|R1|R5|R10)\s+(\d+\.\d+)")
_README_DATASETS = {"Market": "market1501", "DukeMTMC-reID": "dukemtmc-reid", "MSMT17": "msmt17",
                    "CUHK03-NP labeled": "cuhk03-np-labeled", "labeled": "cuhk03-np-labeled",
                    "detected": "cuhk03-np-detected"}


def _readme_line(prefix: str) -> str:
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, prefix
    return lines[0]


def _segments(text: str) -> list[tuple[str, str, float]]:
    return [(_README_DATASETS[m.group(1)], metric, float(value))
            for m in _SEGMENT.finditer(text) for metric, value in _PAIR.findall(m.group(2))]


@needs_papers
def test_readme_summary_numbers(claims: pd.DataFrame) -> None:
    """The papers README summarises each paper's headline numbers; each must be in the claims."""
    expected: list[tuple[str, str, str | None, str, str, float]] = []  # paper, table, backbone, ...

    line = _readme_line("**000 U-SSL**")
    resnet, _, star = line.partition('"ResNet-50*"')
    table_000 = {"market1501": "Table II", "msmt17": "Table IV",
                 "cuhk03-np-labeled": "Table III", "cuhk03-np-detected": "Table III"}
    found = _segments(resnet)
    assert len(found) == 12
    expected += [(P0, table_000[d], "ResNet-50", d, m, v) for d, m, v in found]
    found = [(_README_DATASETS[d], m, float(v))
             for d, *vals in re.findall(r"(Market|MSMT17) (\d+\.\d+)/(\d+\.\d+)/(\d+\.\d+)/(\d+\.\d+)", star)
             for m, v in zip(("R1", "R5", "R10", "mAP"), vals)]
    found += [(_README_DATASETS[d], m, float(v))
              for d, *vals in re.findall(r"(labeled|detected) (\d+\.\d+)/(\d+\.\d+)", star)
              for m, v in zip(("R1", "mAP"), vals)]
    assert len(found) == 12
    expected += [(P0, table_000[d], "ResNet-50*", d, m, v) for d, m, v in found]

    line = _readme_line("**001 Similarity guidance**")
    found = _segments(line)
    assert len(found) == 8
    expected += [(P1, "Table 6", None, d, m, v) for d, m, v in found]
    acc = re.findall(r"(MNIST|STL10|CIFAR100|CIFAR10) (\d+\.\d+)", line)
    assert len(acc) == 4
    names = {"MNIST": ["mnist"], "STL10": ["stl10"], "CIFAR10": ["cifar10"],
             "CIFAR100": ["cifar100", "cifar100-coarse"]}
    expected += [(P1, "Table 5", None, d, "ACC", float(v)) for n, v in acc for d in names[n]]

    for prefix, paper, table, count in (("**002 FGU**", P2, "Table 8", 8),
                                        ("**003 GCL + SCL**", P3, "Table 1", 9)):
        found = _segments(_readme_line(prefix))
        assert len(found) == count
        expected += [(paper, table, None, d, m, v) for d, m, v in found]

    main, _, baseline = _readme_line("**004 Intra-camera refinement**").partition("Baseline row")
    found = _segments(main)
    assert len(found) == 4
    expected += [(P4, "Table 1", None, d, m, v) for d, m, v in found]
    base = [(_README_DATASETS[d], m, float(v))
            for d, *vals in re.findall(r"(Market|MSMT17) (\d+\.\d+)/(\d+\.\d+)", baseline)
            for m, v in zip(("mAP", "R1"), vals)]
    assert len(base) == 4
    rows = claims[(claims.paper == P4) & (claims.table == "Table 2") & (claims.name == "Baseline")]
    for d, m, v in base:
        assert only_value(rows[(rows.dataset == d) & (rows.metric == m)]) == v, (d, m)

    for paper, table, backbone, dataset, metric, value in expected:
        got = only_value(headline(claims, paper, table, dataset, metric, backbone))
        assert got == value, (paper, table, backbone, dataset, metric)


# --- the validator ---------------------------------------------------------------------------------

VALID = {"method": "gcl-scl", "name": "Ours", "dataset": "market1501", "metric": "mAP", "value": 87.5,
         "paper": P3, "table": "Table 1", "origin": "own", "backbone": "ResNet-50",
         "setting": "fully unsupervised"}


def write_claims(path: Path, entries: list[dict]) -> Path:
    blocks = []
    for entry in entries:
        lines = ["[[claim]]"] + [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def test_minimal_file_loads_with_protocol_and_qualifier(tmp_path: Path) -> None:
    second = {**VALID, "metric": "R1", "value": 94, "setting": "fully unsupervised; ablation: Model 6",
              "notes": "x"}
    frame = load_claims(write_claims(tmp_path / "c.toml", [VALID, second]))
    assert list(frame.entry) == [1, 2]
    assert list(frame.protocol) == ["fully unsupervised", "fully unsupervised"]
    assert list(frame.qualifier) == ["", "ablation: Model 6"]
    assert list(frame.notes) == ["", "x"]
    assert frame.value.dtype == float and list(frame.value) == [87.5, 94.0]


BAD_ENTRIES = [
    ({"metric": "Rank-1"}, "metric 'Rank-1' is not one of"),
    ({"value": 150}, "outside [0, 100]"),
    ({"value": -0.5}, "outside [0, 100]"),
    ({"value": "87.5"}, "must be a number"),
    ({"value": True}, "must be a number"),
    ({"dataset": "market"}, "'market' is not a protocol card"),
    ({"metric": "ACC"}, "does not apply to reid dataset 'market1501'"),
    ({"origin": "theirs"}, "origin 'theirs' is not one of"),
    ({"method": "GCL+SCL"}, "not a kebab-case key"),
    ({"name": ""}, "name is empty"),
    ({"metrc": "mAP"}, "unknown key(s) ['metrc']"),
    ({"table": 1}, "table must be a string"),
    ({"setting": "USL"}, "must start with a protocol"),
    ({"setting": "UDA (source: market1501)"}, "is the target dataset itself"),
    ({"setting": "UDA (source: viper)"}, "'viper' is not a re-ID protocol card"),
    ({"setting": "UDA (source: mnist)"}, "'mnist' is not a re-ID protocol card"),
    ({"paper": "../secret.txt"}, "must be a file name"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ENTRIES)
def test_invalid_entry_is_named(tmp_path: Path, change: dict, message: str) -> None:
    first = {**VALID, "metric": "R5", "value": 98.2}
    path = write_claims(tmp_path / "claims.toml", [first, {**VALID, **change}])
    with pytest.raises(ClaimsError) as info:
        load_claims(path)
    text = str(info.value)
    assert str(path) in text
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("claim #2")
    assert message in info.value.problems[0]


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    entry = {k: v for k, v in VALID.items() if k != "table"}
    with pytest.raises(ClaimsError, match=r"claim #1 .*missing required key\(s\) \['table'\]"):
        load_claims(write_claims(tmp_path / "c.toml", [entry]))


def test_duplicate_names_both_entries(tmp_path: Path) -> None:
    other = {**VALID, "metric": "R5", "value": 98.2}
    path = write_claims(tmp_path / "c.toml", [VALID, other, {**VALID, "value": 80.0, "notes": "again"}])
    with pytest.raises(ClaimsError) as info:
        load_claims(path)
    assert len(info.value.problems) == 1
    assert re.match(r"claim #3 .*duplicates claim #1", info.value.problems[0])


def test_same_number_in_another_setting_is_not_a_duplicate(tmp_path: Path) -> None:
    ablation = {**VALID, "setting": "fully unsupervised; ablation: full model"}
    assert len(load_claims(write_claims(tmp_path / "c.toml", [VALID, ablation]))) == 2


def test_cmc_decreasing_within_a_row_is_rejected(tmp_path: Path) -> None:
    r1 = {**VALID, "metric": "R1", "value": 80.0}
    r5 = {**VALID, "metric": "R5", "value": 70.0}
    r10 = {**VALID, "metric": "R10", "value": 90.0}
    with pytest.raises(ClaimsError, match=r"claims #1 and #2: R5 70.0 is below R1 80.0"):
        load_claims(write_claims(tmp_path / "c.toml", [r1, r5, r10]))
    other_row = {**r5, "name": "Other"}
    assert len(load_claims(write_claims(tmp_path / "d.toml", [r1, other_row, r10]))) == 3


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    entries = [{**VALID, "metric": "rank1"}, {**VALID, "metric": "R1", "value": 94.8},
               {**VALID, "metric": "R5", "value": 150}]
    with pytest.raises(ClaimsError) as info:
        load_claims(write_claims(tmp_path / "c.toml", entries))
    assert [p.split(" ")[1] for p in info.value.problems] == ["#1", "#3"]


def test_missing_paper_file_is_named(tmp_path: Path) -> None:
    papers = tmp_path / "papers"
    papers.mkdir()
    path = write_claims(tmp_path / "c.toml", [VALID])
    with pytest.raises(ClaimsError, match=rf"claim #1 .*paper file '{P3}' does not exist"):
        load_claims(path, papers_dir=papers)
    (papers / P3).write_text("")
    assert len(load_claims(path, papers_dir=papers)) == 1


@pytest.mark.parametrize(("text", "message"), [
    ("[[claim]]\nmethod = 'x\n", "not valid TOML"),
    ("", "no [[claim]] tables"),
    ("[claims]\nmethod = 'x'\n", "unexpected top-level key(s) ['claims']"),
])
def test_unreadable_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ClaimsError) as info:
        load_claims(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_absent_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClaimsError, match=r"(?s)nothing.toml: .*file not found"):
        load_claims(tmp_path / "nothing.toml")


# --- the papers' descriptions ----------------------------------------------------------------------

def test_every_paper_is_described_as_its_adapter_names_it(claims: pd.DataFrame) -> None:
    """Tables cite claims by title and venue: each paper file has one [[paper]] table, and its title
    is the one the method's adapter gives (the record carries the adapter's)."""
    from benchmark.engine.method_registry import get_method

    assert (claims.paper_title != "").all() and (claims.paper_venue != "").all()
    for paper, key in PAPER_KEYS.items():
        titles = set(claims.loc[claims.paper == paper, "paper_title"])
        assert titles == {get_method(key).paper.title}, paper


@pytest.mark.parametrize(("block", "message"), [
    ('[[paper]]\nfile = "x.txt"\ntitle = "T"\nauthors = "A"\n', "needs non-empty string(s) ['venue']"),
    ('[[paper]]\nfile = "x.txt"\ntitle = "T"\nauthors = "A"\nvenue = "V"\nyear = 1\n',
     "unknown key(s) ['year']"),
    ('[[paper]]\nfile = "x.txt"\ntitle = "T"\nauthors = "A"\nvenue = "V"\n' * 2,
     "'x.txt' is described twice"),
])
def test_malformed_paper_tables_are_named(tmp_path: Path, block: str, message: str) -> None:
    path = write_claims(tmp_path / "c.toml", [VALID])
    path.write_text(block + "\n" + path.read_text(), encoding="utf-8")
    with pytest.raises(ClaimsError) as info:
        load_claims(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_described_paper_is_cited_by_title(tmp_path: Path) -> None:
    from benchmark.reporting.claims import cite

    path = write_claims(tmp_path / "c.toml", [VALID])
    path.write_text(f'[[paper]]\nfile = "{P3}"\ntitle = "Neighbours"\nauthors = "Lianjie Jia, B"\n'
                    'venue = "AAAI 2022"\n\n' + path.read_text(), encoding="utf-8")
    row = next(load_claims(path).itertuples())
    assert cite(row) == 'Lianjie Jia et al., "Neighbours", AAAI 2022, Table 1, row "Ours"'


@needs_papers
def test_swapped_cells_in_a_mutated_copy_of_the_file_are_reported(claims: pd.DataFrame,
                                                                  tmp_path: Path) -> None:
    """The same check on a file, as a typist would produce it: the `value` lines of 004's CAP
    Market-1501 mAP and R1 exchanged in a copy of claims.toml."""
    row = (claims.paper == P4) & (claims.table == "Table 1") & (claims.name == "CAP") \
        & (claims.dataset == "market1501")
    entries = [int(claims.loc[row & (claims.metric == m), "entry"].iloc[0]) for m in ("mAP", "R1")]
    blocks = re.split(r"(?m)^(?=\[\[claim\]\])", CLAIMS_PATH.read_text(encoding="utf-8"))
    head, claim_blocks = blocks[0], blocks[1:]
    first, second = (claim_blocks[e - 1] for e in entries)
    value = re.compile(r"(?m)^value = .*$")
    a, b = value.search(first).group(0), value.search(second).group(0)
    assert a != b
    claim_blocks[entries[0] - 1] = value.sub(b, first)
    claim_blocks[entries[1] - 1] = value.sub(a, second)
    mutated = tmp_path / "claims.toml"
    mutated.write_text(head + "".join(claim_blocks), encoding="utf-8")
    reported = cell_mismatches(load_claims(mutated, papers_dir=PAPERS_DIR), PAPERS_DIR,
                               skip=NOT_AT_CELL_LEVEL)
    assert sorted(m.entry for m in reported) == sorted(entries)
