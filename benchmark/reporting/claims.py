"""The papers' claimed numbers, read from `leaderboards/claims.toml` and checked before any table uses them.

Why a validator: the claims file is typed by people from PDF tables, hundreds of entries long, and the
leaderboard puts every reproduced number beside one of them. A metric misspelt, a fraction where a
percent belongs, a dataset key that names no protocol card, a UDA row filed as fully unsupervised or
the same number entered twice would each silently put a wrong claim in a table; here they stop the
load with an error naming the file and the entry.

Conventions of an entry (one `[[claim]]` table per number):

- `value` is the number as printed, in percent, in [0, 100].
- `origin`: `own` = measured by the paper's authors (this includes their reproductions of other
  methods, e.g. "BUC*" in paper 001); `quoted` = copied from another paper.
- `setting` is `"<protocol>"` or `"<protocol>; <qualifier>"`. The protocol says what the number
  may be compared with and is one of `fully unsupervised`, `UDA (source: <dataset key>)`,
  `UDA (source not stated)`, `one-example`, `supervised`, `not stated`. Only `fully unsupervised`
  claims describe the protocol the harness runs. The qualifier describes the row: ablation and
  parameter-sweep rows start it with `ablation:` / `sensitivity:`.
- Within one table row, CMC ranks must not decrease (R1 <= R5 <= R10): a row that breaks this was
  mis-transcribed or its columns were misread.

Each paper file is described once by a `[[paper]]` table (`file`, `title`, `authors`, `venue`), so
that tables cite a claim by the paper's title, venue and table rather than by a hashed file name; a
claim whose file has no `[[paper]]` table is cited by the file name.

The loaded frame has the entry fields plus `entry` (1-based position in the file), `protocol` and
`qualifier` (the two parts of `setting`), and `paper_title`, `paper_authors`, `paper_venue` (empty
where the file has no `[[paper]]` table).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import metrics as metric_names
from benchmark.data.cards import ProtocolCard, all_cards
from benchmark.paths import REPO_ROOT

CLAIMS_PATH = REPO_ROOT / "leaderboards" / "claims.toml"
PAPERS_DIR = REPO_ROOT.parent / "shared" / "papers"

REID_METRICS = metric_names.BY_TASK["reid"]
CLUSTERING_METRICS = metric_names.BY_TASK["clustering"]
METRICS = metric_names.ALL
ORIGINS = ("own", "quoted")
FIXED_PROTOCOLS = ("fully unsupervised", "one-example", "supervised", "not stated")
_UDA = re.compile(r"UDA \((?:source: (?P<source>[a-z0-9]+(?:-[a-z0-9]+)*)|source not stated)\)")
_KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

REQUIRED = ("method", "name", "dataset", "metric", "value", "paper", "table", "origin", "backbone",
            "setting")
OPTIONAL = ("notes",)
IDENTITY = ("method", "name", "dataset", "metric", "paper", "table", "backbone", "setting")
PAPER_KEYS = ("file", "title", "authors", "venue")
COLUMNS = ("entry",) + REQUIRED + OPTIONAL + ("protocol", "qualifier", "paper_title",
                                              "paper_authors", "paper_venue")
CMC_ORDER = tuple(metric_names.CMC_RANKS)


class ClaimsError(ValueError):
    """The claims file is unreadable or some entries are invalid; `problems` lists each one."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        shown = "\n  ".join(problems)
        super().__init__(f"{self.path}: {len(problems)} problem(s) in the claims file:\n  {shown}")


def split_setting(setting: str) -> tuple[str, str]:
    """`"fully unsupervised; ablation: X"` -> `("fully unsupervised", "ablation: X")`."""
    protocol, _, qualifier = setting.partition(";")
    return protocol.strip(), qualifier.strip()


def _label(index: int, raw: Mapping[str, Any]) -> str:
    context = ", ".join(f"{k}={raw[k]!r}" for k in ("method", "dataset", "metric") if k in raw)
    return f"claim #{index}" + (f" ({context})" if context else "")


def _entry_problems(raw: Mapping[str, Any], cards: Mapping[str, ProtocolCard],
                    papers_dir: Path | None) -> list[str]:
    problems = []
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        problems.append(f"missing required key(s) {missing}")
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: {list(REQUIRED + OPTIONAL)}")
    for key in REQUIRED + OPTIONAL:
        if key != "value" and key in raw and not isinstance(raw[key], str):
            problems.append(f"{key} must be a string, not {type(raw[key]).__name__}")
    if problems:
        return problems

    for key in ("method", "name", "dataset", "metric", "paper", "table", "origin"):
        if not raw[key].strip():
            problems.append(f"{key} is empty")
    if raw["method"] and not _KEBAB.fullmatch(raw["method"]):
        problems.append(f"method {raw['method']!r} is not a kebab-case key")

    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"value must be a number (percent as printed), not {value!r}")
    elif not (math.isfinite(value) and 0 <= value <= 100):
        problems.append(f"value {value!r} is outside [0, 100] (claims are percentages as printed)")

    metric = raw["metric"]
    if metric not in METRICS:
        problems.append(f"metric {metric!r} is not one of {list(METRICS)}")
    card = cards.get(raw["dataset"])
    if card is None:
        problems.append(f"dataset {raw['dataset']!r} is not a protocol card; known: {sorted(cards)}")
    elif card.synthetic:
        problems.append(f"dataset {raw['dataset']!r} is synthetic: no paper reports on it")
    elif metric in METRICS:
        allowed = REID_METRICS if card.kind == "reid" else CLUSTERING_METRICS
        if metric not in allowed:
            problems.append(f"metric {metric!r} does not apply to {card.kind} dataset {card.name!r}")

    if raw["origin"] not in ORIGINS:
        problems.append(f"origin {raw['origin']!r} is not one of {list(ORIGINS)}")

    protocol, _ = split_setting(raw["setting"])
    uda = _UDA.fullmatch(protocol)
    if uda is None and protocol not in FIXED_PROTOCOLS:
        problems.append(
            f"setting {raw['setting']!r} must start with a protocol: one of {list(FIXED_PROTOCOLS)}, "
            "'UDA (source: <dataset key>)' or 'UDA (source not stated)'"
        )
    elif uda is not None and uda.group("source") is not None:
        source = uda.group("source")
        if source not in cards or cards[source].kind != "reid":
            problems.append(f"UDA source {source!r} is not a re-ID protocol card")
        elif source == raw["dataset"]:
            problems.append(f"UDA source {source!r} is the target dataset itself")

    if raw["paper"].strip():
        if Path(raw["paper"]).name != raw["paper"]:
            problems.append(f"paper {raw['paper']!r} must be a file name in the papers folder")
        elif papers_dir is not None and not (papers_dir / raw["paper"]).is_file():
            problems.append(f"paper file {raw['paper']!r} does not exist in {papers_dir}")
    return problems


def _duplicate_problems(entries: list[tuple[int, Mapping[str, Any]]]) -> list[str]:
    first: dict[tuple[str, ...], int] = {}
    problems = []
    for index, raw in entries:
        key = tuple(str(raw[k]) for k in IDENTITY)
        if key in first:
            problems.append(
                f"{_label(index, raw)}: duplicates claim #{first[key]} "
                f"(same {', '.join(IDENTITY)})"
            )
        else:
            first[key] = index
    return problems


def _cmc_problems(entries: list[tuple[int, Mapping[str, Any]]]) -> list[str]:
    rows: dict[tuple[str, ...], dict[str, tuple[int, float]]] = {}
    for index, raw in entries:
        if raw["metric"] in CMC_ORDER:
            key = tuple(str(raw[k]) for k in IDENTITY if k != "metric")
            rows.setdefault(key, {})[raw["metric"]] = (index, raw["value"])
    problems = []
    for ranks in rows.values():
        present = [m for m in CMC_ORDER if m in ranks]
        for lower, higher in zip(present, present[1:]):
            (i, lo), (j, hi) = ranks[lower], ranks[higher]
            if hi < lo:
                problems.append(
                    f"claims #{i} and #{j}: {higher} {hi} is below {lower} {lo} in the same row "
                    "(CMC cannot decrease with rank; check the columns)"
                )
    return problems


def validate_claims(raw_entries: list[Any], path: str | os.PathLike[str] = CLAIMS_PATH,
                    papers_dir: Path | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Check parsed `[[claim]]` tables; raise ClaimsError listing every problem, else return them
    numbered from 1. `papers_dir=None` skips the paper-file check."""
    cards = all_cards()
    problems: list[str] = []
    valid: list[tuple[int, dict[str, Any]]] = []
    for index, raw in enumerate(raw_entries, start=1):
        if not isinstance(raw, dict):
            problems.append(f"claim #{index}: must be a table, not {type(raw).__name__}")
            continue
        entry_problems = _entry_problems(raw, cards, papers_dir)
        problems += [f"{_label(index, raw)}: {p}" for p in entry_problems]
        if not entry_problems:
            valid.append((index, raw))
    problems += _duplicate_problems(valid)
    problems += _cmc_problems(valid)
    if problems:
        raise ClaimsError(path, problems)
    return valid


def validate_papers(raw: Any, path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """The `[[paper]]` tables by file name; a ClaimsError listing every malformed or repeated one."""
    if not isinstance(raw, list):
        raise ClaimsError(path, ["paper must be an array of [[paper]] tables"])
    problems, papers = [], {}
    for index, entry in enumerate(raw, start=1):
        if not isinstance(entry, dict):
            problems.append(f"paper #{index}: must be a table")
            continue
        missing = [k for k in PAPER_KEYS if not isinstance(entry.get(k), str) or not entry[k].strip()]
        unknown = sorted(set(entry) - set(PAPER_KEYS))
        if missing:
            problems.append(f"paper #{index}: needs non-empty string(s) {missing}")
        if unknown:
            problems.append(f"paper #{index}: unknown key(s) {unknown}; allowed: {list(PAPER_KEYS)}")
        if not missing and entry["file"] in papers:
            problems.append(f"paper #{index}: {entry['file']!r} is described twice")
        if not missing and not unknown:
            papers[entry["file"]] = {k: entry[k] for k in PAPER_KEYS}
    if problems:
        raise ClaimsError(path, problems)
    return papers


def cite(claim: Any) -> str:
    """Where a claim is printed, as a reader finds it: authors, title, venue, table and row."""
    if getattr(claim, "paper_title", ""):
        first = str(claim.paper_authors).split(",")[0].strip()
        authors = first if "," not in str(claim.paper_authors) else f"{first} et al."
        where = f'{authors}, "{claim.paper_title}", {claim.paper_venue}'
    else:
        where = str(claim.paper)
    return f'{where}, {claim.table}, row "{claim.name}"'


def load_claims(path: str | os.PathLike[str] | None = None,
                papers_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read and validate the claims file (default `leaderboards/claims.toml`) into a DataFrame.

    The paper files are checked in `papers_dir`, by default `<repo>/../shared/papers` when that
    folder exists (it is skipped otherwise).
    """
    path = Path(path) if path is not None else CLAIMS_PATH
    if papers_dir is not None:
        papers: Path | None = Path(papers_dir)
        if not papers.is_dir():
            raise ClaimsError(path, [f"papers folder {papers} does not exist"])
    else:
        papers = PAPERS_DIR if PAPERS_DIR.is_dir() else None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClaimsError(path, ["file not found"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClaimsError(path, [f"not valid TOML: {exc}"]) from None
    other = sorted(set(document) - {"claim", "paper"})
    if other:
        raise ClaimsError(path, [f"unexpected top-level key(s) {other}; only [[claim]] and "
                                 "[[paper]] tables belong here"])
    raw_entries = document.get("claim", [])
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ClaimsError(path, ["no [[claim]] tables"])
    described = validate_papers(document.get("paper", []), path)

    valid = validate_claims(raw_entries, path, papers)
    records = []
    for index, raw in valid:
        protocol, qualifier = split_setting(raw["setting"])
        about = described.get(raw["paper"], {})
        records.append({"entry": index, **{k: raw[k] for k in REQUIRED},
                        "notes": raw.get("notes", ""), "protocol": protocol, "qualifier": qualifier,
                        **{f"paper_{k}": about.get(k, "") for k in PAPER_KEYS[1:]}})
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    frame["value"] = frame["value"].astype(float)
    return frame
