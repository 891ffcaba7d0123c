"""Turns the result tables of the five papers' text extractions into grids, so that every claim in
leaderboards/claims.toml can be checked against the one cell its row label and column say it comes
from, rather than against "somewhere in the table" (which lets swapped cells through).

Every referenced table in the five extractions is a block of tab-separated lines right after its
caption. Within that, the papers use these shapes, each handled below:

- one header line of metrics, the dataset named by the caption (000 Tables II and IV, 001 Tables 2-4);
- two header lines, datasets spanning groups of metric columns (most comparison and ablation tables);
  a dataset name may be split over two cells (003 Table 2: "DukeM", "TMC-reID");
- dataset columns holding one metric, or two as "R1 (mAP)" (001 Table 5, 000 Table VII);
- section lines inside the table ("Unsupervised methods with camera labels", 003/004 Table 1) and
  group columns printed once per group (002 Table 8 "models", 000 Table VIII "Source"/"Target");
  they become the row's context, and the "Target" column gives the row's dataset;
- extra descriptive columns (Venue, Year, Label, Decay, SCL/CR/NS): row context too;
- parameter sweeps printed transposed, one column per parameter value and one line per
  (dataset, metric) (002 Tables 5-7): each value becomes a row named "<parameter> = <value>".

Where the extraction lost or garbled a header cell, or the paper prints a wrong header, `SPECS`
patches that one table, with the reason; values always come from the paper text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

P0 = "000_c1761dddb921aef4.txt"
P1 = "001_0df80499ac7e015b.txt"
P2 = "002_48d5ad4b7370828a.txt"
P3 = "003_ed6bbd13637c441c.txt"
P4 = "004_41b5014654147628.txt"

Key = tuple[str, str]  # (dataset key, metric)
# A column as read from the header: dataset (None: the row's "Target" cell says) and metric, or the
# metric pair of "R1 (mAP)" cells.
Column = tuple[str | None, str | tuple[str, str]]

METRIC_NAMES = {"rank-1": "R1", "r1": "R1", "rank-5": "R5", "r5": "R5", "rank-10": "R10",
                "r10": "R10", "map": "mAP", "minp": "mINP", "acc": "ACC", "nmi": "NMI", "ari": "ARI"}
DATASET_NAMES = {"market-1501": "market1501", "market1501": "market1501", "market 1501": "market1501",
                 "market": "market1501", "dukemtmc-reid": "dukemtmc-reid", "duke": "dukemtmc-reid",
                 "msmt17": "msmt17", "labeled": "cuhk03-np-labeled", "detected": "cuhk03-np-detected",
                 # 000 Table VII: CUHK03-NP without saying labeled or detected; no claim uses it
                 "cuhk03-np": "cuhk03-np", "mnist": "mnist", "stl10": "stl10", "cifar10": "cifar10",
                 "cifar100": "cifar100"}
MISSING = {"", "-", "_", "–", "—"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PAIR = re.compile(rf"({_NUMBER.pattern})\s*\(({_NUMBER.pattern})\)")


@dataclass(frozen=True)
class Spec:
    """What the text of one table cannot say by itself. `dataset`: the table's only dataset where no
    header names it; `metric`: the metric(s) of dataset-only columns, two for "R1 (mAP)" cells;
    `header`: replacement header cells {(header line, column): text}; `columns`: column keys that
    override the header entirely; `aliases`: claim dataset -> column dataset; `prose`: cells restored
    from a sentence of the paper, {(row label, key): (regex whose group 1 is the value,
    key of a printed cell of that row that the regex's group 2 must equal)}."""

    dataset: str | None = None
    metric: str | tuple[str, str] | None = None
    header: Mapping[tuple[int, int], str] = field(default_factory=dict)
    columns: Mapping[int, Key] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    prose: Mapping[tuple[str, Key], tuple[str, Key]] = field(default_factory=dict)


SPECS: dict[tuple[str, str], Spec] = {
    # The caption says "Rank-1 value (mAP)" for every cell.
    (P0, "Table VII"): Spec(metric=("R1", "mAP")),
    # Neither caption names the dataset. Table 2: Sec. 4.4 reads it "in the Market dataset" (and its
    # default rows equal Table 6's Market row); Table 4: its full-model row is Table 3's last row,
    # whose caption says Market.
    (P1, "Table 2"): Spec(dataset="market1501"),
    (P1, "Table 4"): Spec(dataset="market1501"),
    # Clustering accuracy (Sec. 4.2.1); the paper does not say whether its CIFAR100 column is the
    # 100 fine or the 20 coarse classes, so claims filed under either read that column.
    (P1, "Table 5"): Spec(metric="ACC", aliases={"cifar100-coarse": "cifar100"}),
    # The printed header (Rank-1, Rank-5, Rank-10, mAP on Market-1501) cannot be right: "Rank-5" is
    # below "Rank-1" in every row. The "Minimum" row is Table 2's and Table 4's full model, printed in
    # their layout (Market R1, mAP, Duke R1, mAP); test_claims checks that this still holds.
    (P2, "Table 3"): Spec(columns={1: ("market1501", "R1"), 2: ("market1501", "mAP"),
                                   3: ("dukemtmc-reid", "R1"), 4: ("dukemtmc-reid", "mAP")}),
    # The DukeMTMC-reID "Rank-1" header is garbled to "q"; the other three match Market-1501's order.
    (P2, "Table 8"): Spec(header={(1, 6): "Rank-1"}),
    # The Market1501 "R1" header cell is lost (the other two datasets print R1 R5 mAP; BUC and PCB
    # keep a value in that column). The other rows lost that cell; the paper's own value is stated in
    # its text, in the same sentence as its mAP, which must equal the table's.
    (P3, "Table 1"): Spec(
        header={(1, 1): "R1"},
        prose={("Ours", ("market1501", "R1")): (
            r"on Market1501, we obtain the best performance[^.]*? with (\d+\.\d)% in R1 and "
            r"(\d+\.\d)% in mAP", ("market1501", "mAP"))}),
}


@dataclass(frozen=True)
class Row:
    """One printed row: its label, what else tells it apart from rows with the same label, and its
    cells as printed."""

    label: str
    context: tuple[str, ...]
    cells: Mapping[Key, str]


@dataclass(frozen=True)
class Table:
    paper: str
    table: str
    rows: tuple[Row, ...]
    unaligned: tuple[str, ...]  # lines whose cells cannot be put under their headers


@dataclass(frozen=True)
class Mismatch:
    entry: int
    problem: str


# --- text -> cells --------------------------------------------------------------------------------

def _caption(text: str, table: str) -> re.Match[str]:
    word, ident = table.split()
    found = re.search(rf"^(?:\*\*)?{word}\s+{re.escape(ident)}[.:](?:\*\*)?[^\n]*", text,
                      re.IGNORECASE | re.MULTILINE)
    if found is None:
        raise LookupError(f"no caption for {table}")
    return found


def table_lines(text: str, table: str) -> tuple[str, list[list[str]]]:
    """The caption and the tab-separated block that follows it (blank lines before it skipped)."""
    caption = _caption(text, table)
    lines = text[caption.end():].split("\n")[1:]
    while lines and not lines[0].strip():
        lines.pop(0)
    block = []
    for line in lines:
        if "\t" not in line:
            break
        block.append([_clean(cell) for cell in line.split("\t")])
    if not block:
        raise LookupError(f"{table}: no tab-separated lines after the caption")
    return caption.group(0), block


def _clean(cell: str) -> str:
    return re.sub(r"</?b>", "", cell).strip()


def label_key(label: str) -> str:
    """Row labels as comparable text: the claims store them without citation markers and with LaTeX
    transliterated (`$(\\lambda_1 = 0)$` -> `(lambda1 = 0)`, `\\mathcal{L}_{GS}` -> `L_GS`), spacing and
    underscores varying; those differences are dropped, case is kept."""
    text = re.sub(r"\s*\[\d+(?:\s*[,–-]\s*\d+)*\]", "", label)
    text = re.sub(r"\s*\([^()]*\b(?:19|20)\d\d[a-z]?\)", "", text)
    text = re.sub(r"\\(?:rightarrow|to)\b", "->", text)
    text = re.sub(r"\\(?:mathcal|mathbb|mathbf|mathrm|text)\b", "", text)
    text = re.sub(r"[\\${}_\s]", "", text)
    return text


def _metric(cell: str) -> str | None:
    return METRIC_NAMES.get(cell.strip().lower())


def _dataset(cell: str) -> str | None:
    return DATASET_NAMES.get(cell.strip().lower())


def _is_value(cell: str) -> bool:
    return bool(_NUMBER.fullmatch(cell) or _PAIR.fullmatch(cell))


def _caption_dataset(caption: str) -> str | None:
    found = {DATASET_NAMES[m.lower()] for m in re.findall(
        r"Market-1501|Market1501|Market 1501|Market|DukeMTMC-reID|MSMT17|CUHK03-NP", caption)}
    return found.pop() if len(found) == 1 else None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


# --- cells -> grid ---------------------------------------------------------------------------------

def parse_table(text: str, paper: str, table: str) -> Table:
    caption, lines = table_lines(text, table)
    spec = SPECS.get((paper, table), Spec())
    filled = [c for c in lines[0] if c]
    swept = len(filled) - next(i for i, c in enumerate(reversed(filled)) if not _NUMBER.fullmatch(c))
    if len(filled) - swept >= 3:  # the header ends in parameter values: a transposed sweep
        return _parse_sweep(paper, table, lines)
    return _parse_grid(paper, table, caption, lines, spec)


def _parse_sweep(paper: str, table: str, lines: list[list[str]]) -> Table:
    """A transposed sweep: the first line is [metric?, parameter, value, value, ...], the others
    [dataset?, metric?, cell, cell, ...] with the dataset printed once per group."""
    head = lines[0]
    at = max(i for i, c in enumerate(head) if c and not _NUMBER.fullmatch(c))
    parameter = head[at]
    values = [c for c in head[at + 1:] if c]
    if head[at + 1:at + 1 + len(values)] != values:
        raise ValueError(f"{table}: parameter values not contiguous")
    default_metric = next((_metric(c) for c in head[:at] if _metric(c)), None)
    cells: dict[str, dict[Key, str]] = {v: {} for v in values}
    unaligned = []
    dataset = None
    for line in lines[1:]:
        described = line[:at + 1]
        found = [d for d in map(_dataset, described) if d]
        dataset = found[0] if found else dataset
        metric = next((_metric(c) for c in described if _metric(c)), default_metric)
        printed = (line[at + 1:] + [""] * len(values))[:len(values)]
        if (dataset is None or metric is None or any(c == "" for c in printed)
                or any(c for c in line[at + 1 + len(values):])):
            unaligned.append("\t".join(line))
            continue
        for value, cell in zip(values, printed):
            cells[value][(dataset, metric)] = cell
    rows = tuple(Row(label_key(f"{parameter} = {v}"), (), cells[v]) for v in values)
    return Table(paper, table, rows, tuple(unaligned))


def _header_rows(lines: list[list[str]], label_col: int) -> int:
    count = 0
    for line in lines:
        filled = [c for c in line if c]
        if any(_is_value(c) for i, c in enumerate(line) if i != label_col) or len(filled) < 2:
            break
        count += 1
    return count


def _column_keys(header: list[list[str]], spec: Spec, caption: str) -> tuple[dict[int, Column], int | None]:
    """What each value column holds, and which column (if any) names each row's target dataset."""
    if spec.columns:
        return dict(spec.columns), None
    metrics = {i: m for line in header for i, c in enumerate(line) if (m := _metric(c))}
    target = next((i for line in header for i, c in enumerate(line) if c.lower() == "target"), None)
    keys: dict[int, Column] = {}
    if not metrics:  # dataset columns, the metric given by the caption or the spec
        if spec.metric is None:
            raise ValueError("no metric header and no metric in the spec")
        for line in header:
            for i, c in enumerate(line):
                if (d := _dataset(c)) is not None:
                    keys[i] = (d, spec.metric)
        return keys, target
    # group metric columns: a group ends where a metric repeats or a non-metric column intervenes
    groups: list[list[int]] = []
    for i in sorted(metrics):
        if groups and i == groups[-1][-1] + 1 and metrics[i] not in {metrics[j] for j in groups[-1]}:
            groups[-1].append(i)
        else:
            groups.append([i])
    metric_lines = {n for n, line in enumerate(header) if any(_metric(c) for c in line)}
    fallback = spec.dataset or _caption_dataset(caption)
    for group in groups:
        named = ["".join(line[i] for i in group if i < len(line)) for n, line in enumerate(header)
                 if n not in metric_lines]
        datasets = [d for d in map(_dataset, named) if d]
        if len(datasets) > 1:
            raise ValueError(f"columns {group} fall under several datasets {datasets}")
        if datasets:
            dataset: str | None = datasets[0]
        elif target is not None:
            dataset = None
        elif fallback is not None:
            dataset = fallback
        else:
            raise ValueError(f"columns {group}: no dataset in the header, caption or spec")
        for i in group:
            keys[i] = (dataset, metrics[i])
    return keys, target


def _label_column(header: list[list[str]]) -> int:
    for line in header:
        for i, c in enumerate(line):
            if re.fullmatch(r"methods?", c, re.IGNORECASE):
                return i
    return 0


def _parse_grid(paper: str, table: str, caption: str, lines: list[list[str]], spec: Spec) -> Table:
    width = max(len(line) for line in lines)
    lines = [line + [""] * (width - len(line)) for line in lines]
    label_col = _label_column(lines[:2])
    n_header = _header_rows(lines, label_col)
    header = [list(line) for line in lines[:n_header]]
    for (n, i), replacement in spec.header.items():
        header[n][i] = replacement
    keys, target = _column_keys(header, spec, caption)
    label_name = next((line[label_col] for line in header if line[label_col]), "")
    context_cols = [i for i in range(width) if i not in keys and i != label_col]
    rows: list[Row] = []
    unaligned: list[str] = []
    section = ""
    carried: dict[int, str] = {}
    for line in lines[n_header:]:
        filled = [c for c in line if c]
        if len(filled) == 1 and not _is_value(filled[0]):  # a section line
            section = filled[0]
            continue
        for i in context_cols:
            carried[i] = line[i] or carried.get(i, "")
        label = line[label_col]
        if re.fullmatch(r"\d+", label):  # 003 Table 2 numbers its rows under "Model"
            label = f"{label_name} {label}"
        cells: dict[Key, str] = {}
        aligned = True
        for i, (dataset, metric) in keys.items():
            if dataset is None:  # the row's own "Target" cell names it
                dataset = _dataset(carried.get(target, "")) if target is not None else None
            cell = line[i]
            pair = _PAIR.fullmatch(cell)
            if dataset is None:
                aligned = False
            elif isinstance(metric, tuple) and pair is not None:
                cells[(dataset, metric[0])], cells[(dataset, metric[1])] = pair.groups()
            elif isinstance(metric, str) and (cell in MISSING or _NUMBER.fullmatch(cell)):
                cells[(dataset, metric)] = cell
            else:
                aligned = False
        if not aligned:
            unaligned.append("\t".join(line))
            continue
        context = tuple(c for c in [section] + [carried[i] for i in context_cols if i != target] if c)
        rows.append(Row(label_key(label), context, cells))
    return Table(paper, table, tuple(rows), tuple(unaligned))


def _restore_from_prose(table: Table, text: str, spec: Spec) -> Table:
    if not spec.prose:
        return table
    rows = list(table.rows)
    for (label, key), (pattern, check) in spec.prose.items():
        found = re.search(pattern, text)
        if found is None:
            raise LookupError(f"{table.table}: sentence for {label} {key} not found")
        index = [n for n, row in enumerate(rows) if row.label == label_key(label)]
        if len(index) != 1 or rows[index[0]].cells.get(key) not in MISSING:
            raise ValueError(f"{table.table}: {label} {key} is not a single lost cell")
        row = rows[index[0]]
        if not _same_number(row.cells.get(check, ""), found.group(2)):
            raise ValueError(f"{table.table}: the sentence is not about row {label}")
        rows[index[0]] = Row(row.label, row.context, {**row.cells, key: found.group(1)})
    return Table(table.paper, table.table, tuple(rows), table.unaligned)


@cache
def load_table(papers_dir: Path, paper: str, table: str) -> Table:
    text = (papers_dir / paper).read_text(encoding="utf-8")
    parsed = parse_table(text, paper, table)
    return _restore_from_prose(parsed, text, SPECS.get((paper, table), Spec()))


# --- claims against cells -------------------------------------------------------------------------

def _same_number(printed: str, value: float | str) -> bool:
    """Equal as decimals: "43.20" equals 43.2, "43.2" does not equal 43.21."""
    try:
        return Decimal(printed) == Decimal(str(value))
    except InvalidOperation:
        return False


def locate(table: Table, name: str, key: Key, setting: str, backbone: str) -> Row | str:
    """The row a claim names, or why there is none. Rows sharing the label are told apart by the
    claim's key (000 Table VIII: the same method under two targets) and then by the words only some
    of them carry in their context (section, Decay, ...): those must all be in the claim's setting,
    and of the rows left the one with the most such words wins (004 Table 2: "Ours" with decay
    "Cosine" against "Ours" with "-", the no-decay row)."""
    rows = [row for row in table.rows if row.label == label_key(name)]
    if not rows:
        return f"no row labelled {name!r}"
    rows = [row for row in rows if key in row.cells]
    if not rows:
        return f"row {name!r} has no column {key}"
    if len(rows) == 1:
        return rows[0]
    shared = set.intersection(*(_words(" ".join(row.context)) for row in rows))
    claim_words = _words(f"{setting} {backbone}")
    own = [(_words(" ".join(row.context)) - shared, row) for row in rows]
    fitting = [(len(words), row) for words, row in own if words <= claim_words]
    best = max((n for n, _ in fitting), default=None)
    chosen = [row for n, row in fitting if n == best]
    if len(chosen) != 1:
        return f"{len(chosen)} rows labelled {name!r} fit setting {setting!r}"
    return chosen[0]


def resolve(claim: Any, papers_dir: Path) -> tuple[Row, Key] | str:
    """The row and column a claim (a row of the claims frame) designates, or why there is none."""
    try:
        table = load_table(papers_dir, claim.paper, claim.table)
    except (LookupError, ValueError, OSError) as error:
        return f"{claim.paper} {claim.table}: {error}"
    spec = SPECS.get((claim.paper, claim.table), Spec())
    key = (spec.aliases.get(claim.dataset, claim.dataset), claim.metric)
    row = locate(table, claim.name, key, claim.setting, claim.backbone)
    return row if isinstance(row, str) else (row, key)


def cell_mismatches(claims: pd.DataFrame, papers_dir: Path,
                    skip: Iterable[int] = ()) -> list[Mismatch]:
    """Every claim whose value is not the printed value of the cell its row (name, backbone,
    setting) and column (dataset, metric) designate, with the reason; empty when all agree."""
    skipped = set(skip)
    found: list[Mismatch] = []
    for claim in claims.itertuples(index=False):
        if claim.entry in skipped:
            continue
        where = resolve(claim, papers_dir)
        if isinstance(where, str):
            found.append(Mismatch(claim.entry, f"{claim.table}: {where}"))
            continue
        row, key = where
        printed = row.cells[key]
        if not _same_number(printed, claim.value):
            found.append(Mismatch(claim.entry, f"{claim.paper} {claim.table} {claim.name!r} {key}: "
                                               f"claim {claim.value}, paper prints {printed or 'nothing'!r}"))
    return found


def unclaimed_cells(claims: pd.DataFrame, papers_dir: Path) -> list[tuple[str, str, str, Key, str]]:
    """Printed numbers of the referenced tables that no claim takes: (paper, table, row, key, cell)."""
    taken = set()
    for claim in claims.itertuples(index=False):
        where = resolve(claim, papers_dir)
        if not isinstance(where, str):
            taken.add((claim.paper, claim.table, id(where[0]), where[1]))
    left = []
    for paper, table in sorted(set(zip(claims.paper, claims.table))):
        for row in load_table(papers_dir, paper, table).rows:
            for key, cell in row.cells.items():
                if cell not in MISSING and (paper, table, id(row), key) not in taken:
                    left.append((paper, table, row.label, key, cell))
    return left
