"""Tolerance checks of reproduced numbers against a committed reference: what makes CI fail when a
change moves a result.

The reference is TOML, one `[[cell]]` per number: `method`, `dataset`, `profile`, `metric`, `value`
(a fraction, as records hold it), `tolerance` (absolute, same units) and optionally `seeds`. A cell
passes when the mean of its matching finished records is within `tolerance` of `value`. A cell with
no matching record, with one of its `seeds` missing or failed, or whose records lack the metric is an
error, never a pass: a suite that silently stopped running a method must not look green.

Generating a reference (`write_reference`, `python -m benchmark check --results DIR
--write-reference FILE [--tolerance-default T]`) takes every finished cell of a results folder, its
seeds and the mean of each metric, and refuses a folder with failed records (their cells would
silently drop out of the check).

Tolerances. On one machine CPU runs are bit-identical, so any tolerance passes there; the tolerance
is for other machines, whose CPU kernels (BLAS code paths per instruction set, thread counts) sum in
a different order. Those float differences are tiny, but training turns them into discrete
decisions (a DBSCAN neighbour, a k-means assignment, a ranking tie) that add up over epochs. So the
tolerance scales with how much one discrete flip moves a metric: T = the default (0.02) for the
metrics that average smoothly over many samples (mAP, NMI), and 1.5 T for those that move in steps
of one query or hinge on a few samples or assignments (R1, R5, R10, mINP, ACC, ARI).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.metrics import RULES
from benchmark.reporting.claims import METRICS
from benchmark.reporting.results import FINISHED, aggregate, metrics_frame

DEFAULT_TOLERANCE = 0.02
TOLERANCE_FACTORS = {rule.name: rule.tolerance_factor for rule in RULES}
REQUIRED = ("method", "dataset", "profile", "metric", "value", "tolerance")
OPTIONAL = ("seeds",)
# A claims reference (top-level `kind = "claims"`, benchmark.reporting.claims_reference) cites each
# cell's claim; `check` gives those cells a statistical verdict instead of a tolerance test.
CLAIM_KEYS = ("tolerance_source", "paper", "table", "row", "claim_entry")
CLAIMS_KIND = "claims"
_EPS = 1e-12  # float slack on the tolerance comparison


class ReferenceError(ValueError):
    """A reference file that cannot be used; the message names the file and every bad cell."""


@dataclass(frozen=True)
class ReferenceCell:
    index: int  # 1-based position in the file
    method: str
    dataset: str
    profile: str
    metric: str
    value: float
    tolerance: float
    seeds: tuple[int, ...] | None = None
    kind: str = "tolerance"  # or "claims": a statistical verdict against a paper's number
    extra: Mapping[str, Any] | None = None  # a claim's provenance (paper, table, row, ...)

    @property
    def label(self) -> str:
        seeds = f", seeds {list(self.seeds)}" if self.seeds is not None else ""
        return f"cell #{self.index}: {self.method} on {self.dataset} ({self.profile}{seeds}) {self.metric}"


@dataclass(frozen=True)
class CellResult:
    cell: ReferenceCell
    status: str  # "ok", "outside" or "error"
    found: float | None = None
    seeds: tuple[int, ...] = ()
    message: str = ""

    def describe(self) -> str:
        c = self.cell
        expected = f"expected {c.value:.4f} ± {c.tolerance:.4f}"
        if self.status == "error":
            return f"ERROR {c.label}: {expected}, found nothing: {self.message}"
        assert self.found is not None
        found = f"found {self.found:.4f} (mean of seeds {list(self.seeds)}; off by {self.found - c.value:+.4f})"
        word = "OK" if self.status == "ok" else "OUTSIDE TOLERANCE"
        return f"{word} {c.label}: {expected}, {found}"


def tolerance_for(metric: str, default: float = DEFAULT_TOLERANCE) -> float:
    return round(default * TOLERANCE_FACTORS.get(metric, 1.0), 6)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell_problems(raw: Mapping[str, Any], kind: str = "tolerance") -> list[str]:
    problems = []
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        problems.append(f"missing key(s) {missing}")
    allowed = REQUIRED + OPTIONAL + (CLAIM_KEYS if kind == CLAIMS_KIND else ())
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: {list(allowed)}")
    for key in ("method", "dataset", "profile", "metric"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            problems.append(f"{key} must be a non-empty string, not {raw[key]!r}")
    if isinstance(raw.get("metric"), str) and raw["metric"] not in METRICS:
        problems.append(f"metric {raw['metric']!r} is not one of {list(METRICS)}")
    if "value" in raw and not (_number(raw["value"]) and 0 <= raw["value"] <= 1):
        problems.append(f"value {raw['value']!r} must be a fraction in [0, 1] (as records hold "
                        "metrics; claims are percent, references are not)")
    if "tolerance" in raw and not (_number(raw["tolerance"]) and raw["tolerance"] >= 0):
        problems.append(f"tolerance {raw['tolerance']!r} must be a number >= 0 (absolute, a fraction)")
    seeds = raw.get("seeds")
    if "seeds" in raw and not (isinstance(seeds, list) and seeds and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        problems.append(f"seeds {seeds!r} must be a non-empty list of integers")
    elif isinstance(seeds, list) and len(set(seeds)) != len(seeds):
        problems.append(f"seeds {seeds!r} repeat a seed")
    return problems


def load_reference(path: str | os.PathLike[str]) -> list[ReferenceCell]:
    """Read and validate a reference file; every problem is listed in one ReferenceError."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReferenceError(f"{path}: reference file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReferenceError(f"{path}: not valid TOML: {exc}") from None
    kind = document.get("kind", "tolerance")
    if kind not in ("tolerance", CLAIMS_KIND):
        raise ReferenceError(f"{path}: kind {kind!r} must be 'tolerance' or '{CLAIMS_KIND}'")
    other = sorted(set(document) - {"cell", "kind"} - ({"excluded"} if kind == CLAIMS_KIND else set()))
    if other:
        raise ReferenceError(f"{path}: unexpected top-level key(s) {other}; only [[cell]] tables")
    raw_cells = document.get("cell")
    if not isinstance(raw_cells, list) or not raw_cells:
        raise ReferenceError(f"{path}: no [[cell]] tables")
    problems: list[str] = []
    cells: list[ReferenceCell] = []
    seen: dict[tuple, int] = {}
    for index, raw in enumerate(raw_cells, start=1):
        found = _cell_problems(raw, kind) if isinstance(raw, dict) else ["must be a table"]
        if found:
            problems += [f"cell #{index}: {p}" for p in found]
            continue
        seeds = tuple(raw["seeds"]) if "seeds" in raw else None
        cell = ReferenceCell(index, raw["method"], raw["dataset"], raw["profile"], raw["metric"],
                             float(raw["value"]), float(raw["tolerance"]), seeds, kind,
                             {k: raw[k] for k in CLAIM_KEYS if k in raw} or None)
        key = (cell.method, cell.dataset, cell.profile, cell.metric,
               tuple(sorted(seeds)) if seeds else None)
        if key in seen:
            problems.append(f"cell #{index}: duplicates cell #{seen[key]}")
            continue
        seen[key] = index
        cells.append(cell)
    if problems:
        raise ReferenceError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return cells


def check_cell(cell: ReferenceCell, records: Sequence[Mapping[str, Any]]) -> CellResult:
    """Compare one reference cell with the mean of its matching finished records."""
    mine = [r for r in records if (r["method"], r["dataset"], r["profile"])
            == (cell.method, cell.dataset, cell.profile)]
    if cell.seeds is not None:
        mine = [r for r in mine if int(r["seed"]) in cell.seeds]
    failed = sorted(int(r["seed"]) for r in mine if r.get("status") != FINISHED)
    finished = [r for r in mine if r.get("status") == FINISHED]
    problems = []
    if failed:
        problems.append(f"seed(s) {failed} failed")
    if cell.seeds is not None:
        absent = sorted(set(cell.seeds) - {int(r["seed"]) for r in mine})
        if absent:
            problems.append(f"no record for seed(s) {absent}")
    if not mine:
        return CellResult(cell, "error", message="no matching record")
    values = metrics_frame(finished, [cell.metric])
    lacking = sorted({int(r["seed"]) for r in finished} - set(values["seed"]))
    if lacking:
        problems.append(f"record(s) of seed(s) {lacking} hold no {cell.metric}")
    if problems:
        return CellResult(cell, "error", message="; ".join(problems))
    row = aggregate(values).iloc[0]
    found = float(row["mean"])
    ok = abs(found - cell.value) <= cell.tolerance + _EPS
    return CellResult(cell, "ok" if ok else "outside", found=found, seeds=tuple(row["seeds"]))


def check_records(cells: Iterable[ReferenceCell],
                  records: Sequence[Mapping[str, Any]]) -> list[CellResult]:
    return [check_cell(cell, records) for cell in cells]


def uncovered_cells(cells: Iterable[ReferenceCell],
                    records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Finished (method, dataset, profile) cells of the results that no reference cell names: not
    an error (nothing to compare them with), but worth a note, e.g. a method added to the suite
    after the reference was written."""
    named = {(c.method, c.dataset, c.profile) for c in cells}
    found = sorted({(r["method"], r["dataset"], r["profile"]) for r in records
                    if r.get("status") == FINISHED} - named)
    return [f"{m} on {d} ({p})" for m, d, p in found]


# -- writing a reference ----------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def reference_cells(records: Sequence[Mapping[str, Any]],
                    tolerance_default: float = DEFAULT_TOLERANCE) -> list[dict[str, Any]]:
    """One reference cell per (method, dataset, profile, metric) of the finished records."""
    failed = [f"{r['method']} on {r['dataset']} ({r['profile']}, seed {r['seed']})"
              for r in records if r.get("status") != FINISHED]
    if failed:
        raise ReferenceError("cannot write a reference from a folder with failed records (their "
                             "cells would silently leave the check): " + "; ".join(failed))
    agg = aggregate(metrics_frame(records))
    agg = agg.sort_values(["profile", "dataset", "method", "metric"],
                          key=lambda s: s.map(METRICS.index) if s.name == "metric" else s)
    return [
        {"method": row.method, "dataset": row.dataset, "profile": row.profile,
         "metric": row.metric, "value": round(float(row.mean), 6),
         "tolerance": tolerance_for(row.metric, tolerance_default), "seeds": list(row.seeds)}
        for row in agg.itertuples()
    ]


def write_reference(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                    tolerance_default: float = DEFAULT_TOLERANCE, source: str = "") -> int:
    """Write the reference TOML of `records` to `path`; return the number of cells."""
    if not (_number(tolerance_default) and tolerance_default >= 0):
        raise ReferenceError(f"--tolerance-default {tolerance_default!r} must be a number >= 0")
    cells = reference_cells(records, tolerance_default)
    if not cells:
        raise ReferenceError(f"no finished record with metrics{f' under {source}' if source else ''}: "
                             "nothing to write")
    profiles = ",".join(sorted({c["profile"] for c in cells}))
    seeds = ",".join(str(s) for s in sorted({s for c in cells for s in c["seeds"]}))
    header = [
        "# Tolerance reference for `python -m benchmark check` (see benchmark/reporting/check.py).",
        f"# Regenerate: python -m benchmark run --all --profile {profiles} --seeds {seeds} --out DIR",
        (f"#   && python -m benchmark check --results DIR --write-reference FILE "
         f"--tolerance-default {tolerance_default}"),
        ("# Values are means over the listed seeds (fractions); tolerance (absolute) = "
         f"{tolerance_default} for mAP and NMI, 1.5 x that for R1, R5, R10, mINP, ACC, ARI."),
        "",
    ]
    body = []
    for cell in cells:
        body += ["[[cell]]", *(f"{k} = {_toml_value(v)}" for k, v in cell.items()), ""]
    text = "\n".join(header + body)
    if tomllib.loads(text)["cell"] != cells:  # what check will read is exactly what was meant
        raise AssertionError("reference TOML did not read back identically")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(cells)
