"""Reproduction checks against the papers: a reference generated from the claims, and a verdict that
accounts for seed variance.

`leaderboards/reference/ci.toml` is a regression test of this code (our own numbers, our own
tolerances). The question a lab brings is different: does method X, run here under the paper's
protocol, reproduce its paper's number? `leaderboards/reference/paper.toml` answers it. It is
generated from `leaderboards/claims.toml` (`python -m benchmark check --write-claims-reference FILE`),
never written by hand: one cell per headline claim, i.e. the paper's own number for its own method
(the adapter's `paper.seed_file`), fully unsupervised, from a main table rather than an ablation or
sensitivity row, with the backbone the paper states and the camera-label setting the method uses
(the claims side of the leaderboard's rule, `leaderboard.comparable_claims`). Cells the harness
cannot run under the paper's protocol (an adapter's `not_comparable` reason) are listed as excluded
with that reason.

Tolerance. None of the five papers reports a seed-to-seed spread, so every cell carries the default
of its metric (in points), a stated policy rather than a measurement: 2.0 for mAP, mINP, R1 and NMI
(the 95% half-width of 3 seeds with a 0.8-point std); 1.5 for R5 and R10, which saturate near the
top of the CMC and move less; 3.0 for ACC and ARI, where one cluster matched to another class on a
10-class set moves the metric by several points. The README ("Reproduction CI") gives the reasons.
A claim with a reported std would use it; the file says which source each tolerance has.

Verdict (MLPerf-style: a set of seeds against a reference, not one run against a number). Only
records that are the paper's run count (`comparability.paper_run_gaps`: paper profile, the paper's
config and initial weights, a clean tree; the leaderboard's rule), and only seeds of one experiment
(`comparability.pool_key`; the largest such group when there are several). With n seeds:
- n >= 3: *reproduced* when the claim lies inside the t-based 95% confidence interval of their mean,
  or within the tolerance of the mean; otherwise *not reproduced* (with Δ and the interval);
- n < 3: *reproduced* only when every seed lies within the tolerance of the claim; otherwise
  *inconclusive* (too few seeds to tell);
- records of the cell exist but none is the paper's run: *inconclusive*, naming what differs;
- no record of the cell at all: *not run* (a GPU job checks a subset; `--require-all` makes these
  failures).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.metrics import RULES
from benchmark.reporting.claims import METRICS, cite, load_claims
from benchmark.reporting.comparability import PAPER_PROFILE, paper_run_gaps, pool_key
from benchmark.reporting.results import FINISHED, t_interval

TOLERANCE_DEFAULTS_PCT = {rule.name: rule.claim_tolerance_pct for rule in RULES}
MIN_SEEDS = 3
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = (
    "reproduced", "not reproduced", "inconclusive", "not run")
KIND = "claims"
_EPS = 1e-12


@dataclass(frozen=True)
class ClaimCell:
    """One headline claim as a reference cell (value and tolerance as fractions, as records hold)."""

    method: str
    dataset: str
    metric: str
    value: float
    tolerance: float
    tolerance_source: str
    paper: str
    table: str
    row: str
    claim_entry: int
    profile: str = PAPER_PROFILE

    @property
    def label(self) -> str:
        return f"{self.method} on {self.dataset} {self.metric}"


# -- generating paper.toml --------------------------------------------------------------------------
def headline_cells(claims: pd.DataFrame | None = None) -> tuple[list[ClaimCell], list[dict[str, Any]]]:
    """The headline claim of each (seed method, dataset, metric), and the cells left out with why."""
    from benchmark.engine.method_registry import get_method, method_names
    from benchmark.reporting.leaderboard import comparable_claims

    claims = load_claims() if claims is None else claims
    cells: list[ClaimCell] = []
    excluded: list[dict[str, Any]] = []
    for key in method_names():
        cls = get_method(key)
        seed_file = cls.paper.seed_file if cls.paper else None
        if not seed_file:
            continue  # a baseline: its own paper is not among the claims' sources
        for dataset in sorted(set(claims.loc[claims["paper"] == seed_file, "dataset"])):
            found = comparable_claims(
                claims, method=key, dataset=dataset, profile=PAPER_PROFILE, backbone="resnet50",
                pretrained=True, uses_camera_ids=cls.uses_camera_ids, synthetic=False)
            found = found[found["paper"] == seed_file]
            if found.empty:
                continue
            reason = cls.not_comparable_reason(dataset)
            if reason:
                excluded.append({"method": key, "dataset": dataset,
                                 "metrics": sorted(set(found["metric"])), "reason": reason})
                continue
            for metric in sorted(set(found["metric"]), key=METRICS.index):
                rows = found[found["metric"] == metric]
                claim = next(rows.itertuples())  # one per metric here; the first in file order
                tolerance = TOLERANCE_DEFAULTS_PCT[metric]
                cells.append(ClaimCell(
                    method=key, dataset=dataset, metric=str(metric),
                    value=round(float(claim.value) / 100, 6), tolerance=round(tolerance / 100, 6),
                    tolerance_source=f"default for {metric} ({tolerance:g} points; the paper "
                                     "reports no std; README, Reproduction CI)",
                    paper=cite(claim).rsplit(f", {claim.table},", 1)[0], table=str(claim.table),
                    row=str(claim.name), claim_entry=int(claim.entry)))
    return cells, excluded


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def claims_reference_text(claims: pd.DataFrame | None = None) -> str:
    cells, excluded = headline_cells(claims)
    lines = [
        "# Reference of the papers' headline claims for `python -m benchmark check` (a statistical",
        "# verdict per cell; benchmark/reporting/claims_reference.py). GENERATED from",
        "# leaderboards/claims.toml; do not edit. Regenerate:",
        "#   python -m benchmark check --write-claims-reference leaderboards/reference/paper.toml",
        "# value and tolerance are fractions, as records hold metrics; the claim as printed is value x 100.",
        "",
        f'kind = "{KIND}"',
        "",
    ]
    for cell in cells:
        lines.append("[[cell]]")
        lines += [f"{name} = {_toml(getattr(cell, name))}" for name in (
            "method", "dataset", "profile", "metric", "value", "tolerance", "tolerance_source",
            "paper", "table", "row", "claim_entry")]
        lines.append("")
    for item in excluded:
        lines.append("[[excluded]]")
        lines += [f"{k} = {_toml(v)}" for k, v in item.items()]
        lines.append("")
    return "\n".join(lines)


def write_claims_reference(path: str | os.PathLike[str], claims: pd.DataFrame | None = None) -> int:
    """Write the claims reference to `path` (atomically); return the number of cells."""
    text = claims_reference_text(claims)
    document = tomllib.loads(text)  # what check will read is what was meant
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return len(document.get("cell", []))


# -- the verdict ------------------------------------------------------------------------------------
@dataclass
class Verdict:
    cell: Any  # a benchmark.reporting.check.ReferenceCell of a claims reference
    status: str
    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    mean: float | None = None
    ci: tuple[float, float] | None = None
    note: str = ""
    left_out: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def diff(self) -> float | None:
        return None if self.mean is None else self.mean - self.cell.value

    def as_dict(self) -> dict[str, Any]:
        c = self.cell
        return {"verdict": self.status, "method": c.method, "dataset": c.dataset,
                "profile": c.profile, "metric": c.metric, "claim": c.value,
                "tolerance": c.tolerance, "n": self.n, "seeds": list(self.seeds),
                "values": list(self.values), "mean": self.mean, "diff": self.diff,
                "ci95": list(self.ci) if self.ci else None, "note": self.note,
                "left_out": self.left_out, **{k: v for k, v in (c.extra or {}).items()}}


def _value(record: Mapping[str, Any], metric: str) -> float | None:
    value = (record.get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def claim_verdict(cell: Any, records: Sequence[Mapping[str, Any]]) -> Verdict:
    """The verdict of one claims-reference cell over the records (rules in the module docstring)."""
    mine = [r for r in records if (r["method"], r["dataset"], r["profile"])
            == (cell.method, cell.dataset, cell.profile)]
    if not mine:
        return Verdict(cell, NOT_RUN, note="no record of this cell")
    finished = [r for r in mine if r.get("status") == FINISHED and _value(r, cell.metric) is not None]
    left_out = [f"seed {r['seed']}: {'; '.join(paper_run_gaps(r))}" for r in finished
                if paper_run_gaps(r)]
    left_out += [f"seed {r['seed']}: {r.get('status')}" for r in mine if r.get("status") != FINISHED]
    runs = [r for r in finished if not paper_run_gaps(r)]
    if not runs:
        return Verdict(cell, INCONCLUSIVE, note="no record is the paper's run", left_out=left_out)
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault(pool_key(r), []).append(r)
    chosen = max(groups.values(), key=lambda g: (len(g), max(str(r.get("finished_at", "")) for r in g)))
    left_out += [f"seed {r['seed']}: another experiment (config, weights or commit) than the "
                 f"{len(chosen)} seed(s) counted" for g in groups.values() if g is not chosen for r in g]
    chosen = sorted(chosen, key=lambda r: int(r["seed"]))
    values = tuple(_value(r, cell.metric) for r in chosen)  # type: ignore[misc]
    seeds = tuple(int(r["seed"]) for r in chosen)
    mean = statistics.fmean(values)
    within = [abs(v - cell.value) <= cell.tolerance + _EPS for v in values]
    if len(values) < MIN_SEEDS:
        status = REPRODUCED if all(within) else INCONCLUSIVE
        note = (f"every seed within ±{cell.tolerance:.4f} of the claim" if all(within) else
                f"{len(values)} seed(s) < {MIN_SEEDS} and not every seed within the tolerance")
        ci = t_interval(mean, statistics.stdev(values), len(values)) if len(values) > 1 else None
        return Verdict(cell, status, seeds, values, mean, ci, note, left_out)
    low, high = t_interval(mean, statistics.stdev(values), len(values))
    in_ci = low - _EPS <= cell.value <= high + _EPS
    near = abs(mean - cell.value) <= cell.tolerance + _EPS
    if in_ci or near:
        note = "claim inside the 95% CI" if in_ci else "mean within the tolerance of the claim"
        return Verdict(cell, REPRODUCED, seeds, values, mean, (low, high), note, left_out)
    return Verdict(cell, NOT_REPRODUCED, seeds, values, mean, (low, high),
                   "claim outside the 95% CI and the mean outside the tolerance", left_out)


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """The verdicts as a fixed-width table, in percent."""
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f}"

    rows = [("verdict", "method", "dataset", "metric", "claim", "mean", "n", "95% CI", "Δ", "tol")]
    for v in verdicts:
        c = v.cell
        ci = "—" if not v.ci else f"[{100 * v.ci[0]:.1f}, {100 * v.ci[1]:.1f}]"
        diff = "—" if v.diff is None else f"{100 * v.diff:+.1f}"
        rows.append((v.status.upper(), c.method, c.dataset, c.metric, pct(c.value), pct(v.mean),
                     str(v.n), ci, diff, f"±{100 * c.tolerance:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows)

