"""Leaderboard tables: reproduced numbers per dataset and profile, beside the papers' claims only where
the two measure the same thing (integrity rule 4 of DESIGN.md).

One table per (dataset, profile): profiles differ in scale (backbone, input size, epochs), so their
numbers never share a table. A row is one *experiment*: the seeds of a method that share config,
initial weights and code (`benchmark.reporting.comparability.pool_key`). A method run two ways gets
two rows, the second and later named "<method> (variant k)" and flagged with what differs from the
first. A cell is the mean ± sample std (ddof = 1) over the row's finished seeds with n and the
t-based 95% confidence interval; n < 3 is marked (†). Failed seeds are left out and flagged.

A claim (the "claim" and "Δ" columns, Δ = reproduced mean − claim in points, also in units of the
seeds' std, and whether the claim lies inside the interval) stands beside a row only when:
- the row is the paper's own run: paper profile, the paper's config for the dataset, the paper's
  initial weights, a clean tree, and no `not_comparable` reason in the adapter
  (`comparability.paper_run_gaps`; any gap is written in the row's flags);
- the row has at least two finished seeds (a single run has no spread to judge a Δ by);
- the dataset is real (synthetic tables never get claim columns at all);
- the claim is the paper's *own* number (`origin = "own"`) for the same method key, dataset and
  metric, under the `fully unsupervised` protocol, not an ablation or sensitivity row;
- its backbone is the run's, or not stated by the paper (then its citation says so); a row "with
  camera labels" is compared only with a method that uses camera ids, "without" only with one that
  does not.
When several claims qualify, the first in claims.toml is shown and the footnote lists the others.

Every table carries its provenance (profile, backbone, init, seeds, commits, hardware), per row the
records and MLflow runs its numbers come from, and flags: the adapter's deviations (listed in a
footnote), camera-id use, audit status, a withdrawn dataset, failed seeds, labels used.

A summary per profile puts methods against datasets (mAP and R1; ACC and NMI for clustering), each
cell the reproduced mean with the claim and Δ where one stands, the best unsupervised value in bold,
and the numbers other papers publish for the method (`origin = "quoted"`) in a reference column.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.metrics import CMC_RANKS, LEADERBOARD_SUMMARY
from benchmark.reporting.claims import cite, load_claims
from benchmark.reporting.comparability import PAPER_PROFILE, pool_differences
from benchmark.reporting.plots import (
    plot_claims_scatter,
    plot_cmc,
    plot_pseudo_label_quality,
)
from benchmark.reporting.results import (
    ROW,
    ResultsError,
    aggregate,
    cells_frame,
    load_records,
    metrics_for_kind,
    metrics_frame,
    pseudo_label_history,
    seed_cmc,
)

FORMATS = ("md", "csv", "tex", "html")
BACKBONE_NAMES = {"resnet50": "ResNet-50"}  # harness backbone key -> as the papers print it
# A variant registered under its own key whose claims the paper files under the method's key with a
# marked backbone: U-SSL's "ResNet-50*" rows (stage features concatenated) are `ussl-star`'s.
CLAIM_VARIANTS = {"ussl-star": ("ussl", "*")}
COMPARED_PROTOCOL = "fully unsupervised"
EXCLUDED_QUALIFIERS = ("ablation:", "sensitivity:")
SUMMARY_METRICS = LEADERBOARD_SUMMARY
SMALL_N = 3  # fewer seeds than this: the interval is wide or undefined, and the cell is marked
SMALL_N_MARK = "†"
# A claim needs a spread to be judged against: with one seed there is no interval and no std, and a
# Δ would read as certain. Such a row keeps its number but gets no claim, and says why.
MIN_SEEDS_FOR_CLAIM = 2
CMC_CLAIM_RANKS = CMC_RANKS
NO_VALUE = "—"
BASENAME = "leaderboard"


@dataclass
class Table:
    """One dataset under one profile, ready to render."""

    dataset: str
    title: str
    profile: str
    kind: str
    synthetic: bool
    withdrawn: bool
    metrics: tuple[str, ...]
    # row, method, metric, mean, std, n, ci_low, ci_high (percent), seeds, claim, diff, diff_sd,
    # claim_in_ci, claim_ref, claim_source
    cells: pd.DataFrame
    # row (table order), method, variant (1 = the method's first row), n, flags, uses_labels,
    # seeds, commit, config_hash, init, records, runs [(run id, url or None)], paper_gaps
    rows: pd.DataFrame
    claims_shown: bool
    note: str  # what the claim columns hold, or why there are none
    provenance: dict[str, str]
    footnotes: list[str] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)
    published: dict[tuple[str, str], str] = field(default_factory=dict)  # (method, metric) -> text

    @property
    def heading(self) -> str:
        tags = [t for t, on in (("synthetic data", self.synthetic),
                                ("withdrawn dataset", self.withdrawn)) if on]
        return f"{self.title} ({self.dataset}), {self.profile} profile" + (
            f" [{', '.join(tags)}]" if tags else "")

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.dataset}_{self.profile}")


# -- claims -----------------------------------------------------------------------------------------
def _claims_for(claims: pd.DataFrame, method: str, dataset: str, backbone: str | None,
                uses_camera_ids: bool, origin: str) -> pd.DataFrame:
    method, marker = CLAIM_VARIANTS.get(method, (method, ""))
    c = claims[(claims["method"] == method) & (claims["dataset"] == dataset)
               & (claims["origin"] == origin) & (claims["protocol"] == COMPARED_PROTOCOL)]
    c = c[~c["qualifier"].str.startswith(EXCLUDED_QUALIFIERS)]
    c = c[c["backbone"].isin([BACKBONE_NAMES.get(backbone or "", "?") + marker]
                             + ([] if marker else [""]))]
    wrong_cameras = "without camera labels" if uses_camera_ids else "with camera labels"
    return c[c["qualifier"] != wrong_cameras].sort_values("entry")


def comparable_claims(
    claims: pd.DataFrame, *, method: str, dataset: str, profile: str, backbone: str | None,
    pretrained: bool | None, uses_camera_ids: bool, synthetic: bool,
) -> pd.DataFrame:
    """The claims that may stand beside a paper's-own run of this method (the claims' side of the
    rules in the module docstring), file order."""
    if synthetic or profile != PAPER_PROFILE or not pretrained or backbone not in BACKBONE_NAMES:
        return claims.iloc[0:0]
    return _claims_for(claims, method, dataset, backbone, uses_camera_ids, "own")


def published_claims(claims: pd.DataFrame, *, method: str, dataset: str, uses_camera_ids: bool) -> pd.DataFrame:
    """What other papers print for the method (quoted, fully unsupervised, ResNet-50 or unstated
    backbone, no ablation row): the reference column of the summary, never a Δ."""
    return _claims_for(claims, method, dataset, "resnet50", uses_camera_ids, "quoted")


def fmt_claim(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def _claim_source(row: Any) -> str:
    where = cite(row)
    if not row.backbone:
        where += " (backbone not stated by the paper)"
    if getattr(row, "notes", ""):
        where += f". Note: {row.notes}"
    return where


# -- building ---------------------------------------------------------------------------------------
def _distinct(values: Any) -> str:
    seen = [str(v) for v in dict.fromkeys(v for v in values if not pd.isna(v))]
    return ", ".join(seen) if seen else "unknown"


def _card_facts(dataset: str) -> tuple[str, str | None, bool, bool]:
    from benchmark.data.cards import all_cards

    card = all_cards().get(dataset)
    if card is None:
        return dataset, None, False, False
    return card.title, card.kind, card.synthetic, card.withdrawn


def _dataset_facts(dataset: str, records: Sequence[Mapping[str, Any]]) -> tuple[str, str, bool, bool]:
    title, kind, synthetic, withdrawn = _card_facts(dataset)
    for r in records:
        facts = r.get("dataset_facts") or {}
        if facts:
            title = facts.get("title") or title
            kind = facts.get("kind") or kind
            synthetic = synthetic or bool(facts.get("synthetic"))
            withdrawn = withdrawn or bool(facts.get("withdrawn"))
    return title, kind or "unknown", synthetic, withdrawn


def _provenance(cells: pd.DataFrame) -> dict[str, str]:
    finished = cells[cells["status"] == "finished"]
    source = finished if not finished.empty else cells
    return {
        "profile": _distinct(source["profile"]),
        "backbone": _distinct(source["backbone"]),
        "init": _distinct(source["init"]),
        "seeds": _distinct(sorted(source["seed"].unique())),
        "commits": _distinct(source["commit"]),
        "hardware": _distinct(source["hardware"]),
        "torch": _distinct(source["torch"]),
        "records": f"{len(finished)} finished, {len(cells) - len(finished)} failed",
    }


def _note(profile: str, synthetic: bool, withdrawn: bool, any_claim: bool,
          provenance: Mapping[str, str]) -> str:
    parts = []
    if synthetic:
        parts.append("Synthetic data: no paper reports on it, so no claim is shown; these numbers "
                     "are never comparable with a paper's.")
    elif profile != PAPER_PROFILE:
        parts.append(
            f"No claims: the {profile} profile trains {provenance['backbone']} (init: "
            f"{provenance['init']}) at reduced input size and epochs, a different protocol "
            "from the papers' (ResNet-50 with ImageNet weights, full schedules), so the papers' "
            "numbers are not shown; run the paper profile to compare.")
    elif any_claim:
        parts.append(
            "Claim: the paper's own number for the method, fully unsupervised protocol, no ablation "
            "or sensitivity row, same backbone, beside a row that is the paper's run (paper config "
            "and init, clean tree); Δ = reproduced mean − claim in points, then in units of the "
            "seeds' std, and whether the claim lies inside the 95% CI.")
    else:
        parts.append("No claim: no row here is both the paper's run and a method with a comparable "
                     "claim on this dataset; each row's flags say what differs.")
    if withdrawn:
        parts.append("This dataset was withdrawn by its creators; results come from a copy the "
                     "user holds.")
    return " ".join(parts)


def _assign_rows(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Copies of the records with their row label (`ROW`), and per row: method, variant number,
    and a reference record of the row and of the method's first row. A method's first row is its
    paper's-own run if it has one, else the experiment with the most finished seeds."""
    cells = cells_frame(records)
    copies = [dict(r) for r in records]
    rows: dict[str, dict[str, Any]] = {}
    for method in sorted(cells["method"].unique()):
        mine = cells[cells["method"] == method]
        pools: dict[tuple[str, ...], list[int]] = {}
        for index, key in zip(mine.index, mine["pool"]):
            pools.setdefault(key, []).append(int(index))

        def order(item: tuple[tuple[str, ...], list[int]]) -> tuple[int, int, str]:
            key, members = item
            done = [i for i in members if cells.at[i, "status"] == "finished"]
            paper_run = bool(done) and not cells.at[done[0], "paper_gaps"]
            return (0 if paper_run else 1, -len(done), "|".join(key))

        first_record: Mapping[str, Any] | None = None
        for variant, (_, members) in enumerate(sorted(pools.items(), key=order), start=1):
            label = method if variant == 1 else f"{method} (variant {variant})"
            done = [i for i in members if cells.at[i, "status"] == "finished"]
            reference = records[(done or members)[0]]
            first_record = reference if variant == 1 else first_record
            for i in members:
                copies[i][ROW] = label
            rows[label] = {"method": method, "variant": variant, "members": members,
                           "record": reference, "first": first_record}
    return copies, rows


def _mlflow_link(uri: Any, experiment: Any, run_id: Any) -> str | None:
    if not run_id or not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        return None
    if experiment is None or pd.isna(experiment):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def _row_facts(label: str, info: Mapping[str, Any], cells: pd.DataFrame, table_is_paper: bool,
               withdrawn: bool, deviation_tags: dict[str, str], deviation_notes: list[str],
               notes: list[str]) -> dict[str, Any]:
    group = cells.loc[info["members"]]
    finished = group[group["status"] == "finished"]
    source = finished if not finished.empty else group
    method = info["method"]
    flags = []
    if info["variant"] > 1:
        flags.append(f"differs from {method}: "
                     + "; ".join(pool_differences(info["record"], info["first"])))
    gaps = tuple(source["paper_gaps"].iloc[0])
    if table_is_paper and gaps:
        flags.append("no claim: " + "; ".join(gaps))
    elif table_is_paper and len(finished) < MIN_SEEDS_FOR_CLAIM:
        flags.append(f"no claim: {len(finished)} seed(s); a claim needs the spread of at least "
                     f"{MIN_SEEDS_FOR_CLAIM} (run 3 or more)")
    deviations = list(dict.fromkeys(d for devs in group["deviations"] for d in devs))
    if deviations:
        if method not in deviation_tags:
            deviation_tags[method] = f"D{len(deviation_tags) + 1}"
            deviation_notes.append(f"[{deviation_tags[method]}] {method}: " + " ".join(
                f"({i}) {d}" for i, d in enumerate(deviations, start=1)))
        flags.append(f"{len(deviations)} deviation{'s' if len(deviations) > 1 else ''} "
                     f"[{deviation_tags[method]}]")
    uses_labels = bool(info["record"].get("uses_labels", False))
    if uses_labels:
        flags.append("uses labels (supervised: not ranked among unsupervised methods)")
    if group["uses_camera_ids"].any():
        flags.append("camera ids")
    if not finished.empty:  # integrity rule 1: whether `benchmark audit` showed it isolated
        flags.append("isolation: " + ", ".join(dict.fromkeys(finished["isolation"])))
    if withdrawn:
        flags.append("withdrawn dataset")
    failed = group[group["status"] != "finished"]
    if not failed.empty:
        seeds = ", ".join(str(s) for s in sorted(failed["seed"]))
        flags.append(f"failed seed{'s' if len(failed) > 1 else ''} {seeds}")
        reasons = "; ".join(dict.fromkeys(e for e in failed["error"] if e))
        notes.append(f"{label}: seed(s) {seeds} failed ({reasons or 'no error recorded'}); "
                     "left out of the means.")
    ordered = source.sort_values("seed")
    return {
        "row": label, "method": method, "variant": info["variant"], "n": len(finished),
        "flags": "; ".join(flags), "uses_labels": uses_labels,
        "seeds": " ".join(str(s) for s in sorted(finished["seed"])),
        "commit": source["commit"].iloc[0], "config_hash": str(source["config_hash"].iloc[0]),
        "init": source["init"].iloc[0], "paper_gaps": gaps,
        "records": [(int(s), p) for s, p in zip(ordered["seed"], ordered["path"])],
        "runs": [(int(s), rid, _mlflow_link(uri, exp, rid)) for s, rid, uri, exp in
                 zip(ordered["seed"], ordered["run_id"], ordered["tracking_uri"],
                     ordered["experiment_id"]) if isinstance(rid, str) and rid],
    }


def _scored_notes(cells: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """Which images each method's numbers were computed on (integrity rule 1: a clustering cell
    whose model was selected or tuned on a hold-out does not score it)."""
    finished = cells[cells["status"] == "finished"]
    per_method = {m: "; ".join(dict.fromkeys(finished.loc[finished["method"] == m, "scored"]
                                             .dropna())) for m in methods}
    per_method = {m: text for m, text in per_method.items() if text}
    if len(set(per_method.values())) == 1:
        return [f"Scored images: {next(iter(per_method.values()))}."]
    return [f"Scored images, {m}: {text}." for m, text in per_method.items()]


def _build_table(dataset: str, profile: str, records: Sequence[Mapping[str, Any]],
                 claims: pd.DataFrame) -> Table:
    labelled, row_info = _assign_rows(records)
    cells = cells_frame(labelled)
    title, kind, synthetic, withdrawn = _dataset_facts(dataset, records)
    metric_names = metrics_for_kind(kind)
    agg = aggregate(metrics_frame(labelled, metric_names)).rename(columns={"method": "row"})
    agg = agg.sort_values(["row", "metric"], key=lambda col: col.map(metric_names.index)
                          if col.name == "metric" else col).reset_index(drop=True)
    for column in ("mean", "std", "ci_low", "ci_high"):
        agg[column] = agg[column].astype(float) * 100
    # a percentage cannot leave [0, 100]; the t interval of a few seeds can
    agg["ci_low"] = agg["ci_low"].clip(lower=0.0)
    agg["ci_high"] = agg["ci_high"].clip(upper=100.0)
    agg.insert(1, "method", [row_info[r]["method"] for r in agg["row"]])
    provenance = _provenance(cells)
    table_is_paper = profile == PAPER_PROFILE and not synthetic

    claim_notes: list[str] = []
    claim_refs: dict[tuple[str, str, str], str] = {}
    found_claims = []
    for row in agg.itertuples():
        info = row_info[row.row]
        record = info["record"]
        found = claims.iloc[0:0]
        if table_is_paper and not cells.loc[info["members"][0], "paper_gaps"] \
                and int(row.n) >= MIN_SEEDS_FOR_CLAIM:
            settings = record.get("profile_settings") or {}
            found = comparable_claims(
                claims[claims["metric"] == row.metric], method=row.method, dataset=dataset,
                profile=profile, backbone=settings.get("backbone"),
                pretrained=bool(settings.get("pretrained")),
                uses_camera_ids=bool(record.get("uses_camera_ids")), synthetic=synthetic)
        if found.empty:
            found_claims.append(None)
            continue
        first = next(found.itertuples())
        key = (first.paper, first.table, first.name)
        if key not in claim_refs:
            claim_refs[key] = f"C{len(claim_refs) + 1}"
            claim_notes.append(f"[{claim_refs[key]}] {row.method}: {_claim_source(first)}")
        others = list(found.itertuples())[1:]
        if others:
            claim_notes.append(f"[{claim_refs[key]}] {row.metric}: other qualifying claims: "
                               + "; ".join(f"{fmt_claim(o.value)} ({_claim_source(o)})"
                                           for o in others))
        found_claims.append((float(first.value), claim_refs[key], _claim_source(first)))
    agg["claim"] = pd.Series([c[0] if c else math.nan for c in found_claims], index=agg.index,
                             dtype=float)
    agg["diff"] = agg["mean"] - agg["claim"]
    agg["diff_sd"] = [d / s if s and not math.isnan(s) else math.nan
                      for d, s in zip(agg["diff"], agg["std"])]
    agg["claim_in_ci"] = [None if math.isnan(c) or math.isnan(lo) else bool(lo <= c <= hi)
                          for c, lo, hi in zip(agg["claim"], agg["ci_low"], agg["ci_high"])]
    agg["claim_ref"] = [c[1] if c else None for c in found_claims]
    agg["claim_source"] = [c[2] if c else None for c in found_claims]

    # row order: best first by the first metric present, supervised rows after the unsupervised
    # ones, rows without a finished seed last
    lead = next((m for m in metric_names if m in set(agg["metric"])), None)
    score = agg[agg["metric"] == lead].set_index("row")["mean"] if lead else pd.Series(dtype=float)
    labels = sorted(row_info, key=lambda r: (
        bool(row_info[r]["record"].get("uses_labels")), -score.get(r, -math.inf), r))

    deviation_tags: dict[str, str] = {}
    deviation_notes: list[str] = []
    failure_notes: list[str] = []
    facts = [_row_facts(r, row_info[r], cells, table_is_paper, withdrawn, deviation_tags,
                        deviation_notes, failure_notes) for r in labels]
    present = tuple(m for m in metric_names if m in set(agg["metric"]))
    any_claim = bool(agg["claim"].notna().any()) if not agg.empty else False
    small = [f["row"] for f in facts if 0 < f["n"] < SMALL_N]
    small_notes = [f"{SMALL_N_MARK} n < {SMALL_N} seeds: the 95% CI is wide, or undefined for "
                   "n = 1; such a row shows the spread of few runs, not a settled number."] if small else []
    scored_notes = _scored_notes(cells, [f["method"] for f in facts]) if kind == "clustering" else []
    table = Table(
        dataset=dataset, title=title, profile=profile, kind=kind, synthetic=synthetic,
        withdrawn=withdrawn, metrics=present or metric_names, cells=agg,
        rows=pd.DataFrame(facts), claims_shown=any_claim,
        note=_note(profile, synthetic, withdrawn, any_claim, provenance), provenance=provenance,
        footnotes=deviation_notes + claim_notes + failure_notes + small_notes + scored_notes,
    )
    if table_is_paper:
        table.published = _published(table, claims, row_info)
    return table


def _published(table: Table, claims: pd.DataFrame, row_info: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """(method, metric) -> the first number another paper publishes for it, with a short citation."""
    out = {}
    for method in dict.fromkeys(table.rows["method"]):
        record = next(i["record"] for i in row_info.values() if i["method"] == method)
        found = published_claims(claims, method=method, dataset=table.dataset,
                                 uses_camera_ids=bool(record.get("uses_camera_ids")))
        for metric in SUMMARY_METRICS.get(table.kind, ()):
            hits = found[found["metric"] == metric]
            if not hits.empty:
                first = next(hits.itertuples())
                more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
                out[(method, metric)] = f"{fmt_claim(first.value)}{more} [{cite(first)}]"
    return out


def build_tables(records: Sequence[Mapping[str, Any]], claims: pd.DataFrame,
                 profile: str | None = None) -> list[Table]:
    """One table per (dataset, profile) of the records, optionally of one profile only."""
    chosen = [r for r in records if profile is None or r["profile"] == profile]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in chosen:
        groups.setdefault((r["dataset"], r["profile"]), []).append(r)
    return [_build_table(d, p, group, claims) for (d, p), group in sorted(groups.items())]


# -- the summary ------------------------------------------------------------------------------------
@dataclass
class SummaryCell:
    mean: float
    n: int
    claim: float | None = None
    diff: float | None = None
    best: bool = False

    def text(self, bold: tuple[str, str] = ("", "")) -> str:
        """The reproduced mean (in `bold` markers when it is the column's best), then (claim, Δ)."""
        out = f"{self.mean:.1f}" + (SMALL_N_MARK if self.n < SMALL_N else "")
        if self.best:
            out = f"{bold[0]}{out}{bold[1]}"
        if self.claim is not None and self.diff is not None:
            out += f" ({fmt_claim(self.claim)}, {fmt_diff(self.diff)})"
        return out


@dataclass
class Summary:
    """Methods against datasets for one profile: each method's first row (its paper's run where it
    has one), the summary metrics of each dataset, and the published reference column."""

    profile: str
    synthetic: bool  # synthetic datasets get a summary of their own, never beside real ones
    columns: list[tuple[Table, str]]  # (table, metric) in column order
    methods: list[str]
    cells: dict[tuple[str, str, str], SummaryCell]  # (method, dataset, metric)
    published: dict[tuple[str, str], str]  # (method, dataset) -> "mAP / R1" text with citations
    uses_labels: set[str]

    @property
    def title(self) -> str:
        return f"Summary, {self.profile} profile" + (", synthetic data" if self.synthetic else "")

    @property
    def slug(self) -> str:
        return f"summary-{self.profile}" + ("-synthetic" if self.synthetic else "")

    def column_name(self, table: Table) -> str:
        """The dataset's title without its parenthesis (CUHK03-NP's two protocols: their keys)."""
        short = {t.dataset: t.title.split(" (")[0] for t, _ in self.columns}
        name = short[table.dataset]
        return name if list(short.values()).count(name) == 1 else table.dataset

    def frame(self, bold: tuple[str, str] = ("**", "**")) -> pd.DataFrame:
        rows = []
        for method in self.methods:
            row = {"method": method + (" (uses labels)" if method in self.uses_labels else "")}
            for table, metric in self.columns:
                cell = self.cells.get((method, table.dataset, metric))
                name = self.column_name(table)
                row[f"{name} {metric}"] = NO_VALUE if cell is None else cell.text(bold)
                if metric == SUMMARY_METRICS[table.kind][-1] and self._has_published(table):
                    row[f"{name} published"] = self.published.get(
                        (method, table.dataset), NO_VALUE)
            rows.append(row)
        return pd.DataFrame(rows)

    def _has_published(self, table: Table) -> bool:
        return any(d == table.dataset for _, d in self.published)


def build_summaries(tables: Sequence[Table]) -> list[Summary]:
    """One summary per profile and kind of data (real, synthetic), over those tables (re-ID
    datasets first)."""
    out = []
    for profile, synthetic in dict.fromkeys((t.profile, t.synthetic) for t in tables):
        mine = sorted((t for t in tables if t.profile == profile and t.synthetic == synthetic),
                      key=lambda t: (t.kind != "reid", t.title.lower()))
        columns = [(t, m) for t in mine for m in SUMMARY_METRICS.get(t.kind, ())
                   if m in t.metrics]
        cells: dict[tuple[str, str, str], SummaryCell] = {}
        published: dict[tuple[str, str], str] = {}
        uses_labels: set[str] = set()
        methods: list[str] = []
        for t in mine:
            firsts = t.rows[t.rows["variant"] == 1]
            uses_labels |= set(firsts.loc[firsts["uses_labels"], "method"])
            methods += [m for m in firsts["method"] if m not in methods]
            by_row = t.cells.set_index(["row", "metric"])
            for method in firsts["method"]:
                for metric in SUMMARY_METRICS.get(t.kind, ()):
                    if (method, metric) not in by_row.index:
                        continue
                    c = by_row.loc[(method, metric)]
                    has = not math.isnan(c["claim"])
                    cells[(method, t.dataset, metric)] = SummaryCell(
                        float(c["mean"]), int(c["n"]), float(c["claim"]) if has else None,
                        float(c["diff"]) if has else None)
                texts = [t.published.get((method, m), "") for m in SUMMARY_METRICS.get(t.kind, ())]
                if any(texts):
                    values = [x.split(" [")[0] if x else NO_VALUE for x in texts]
                    sources = list(dict.fromkeys(x.split(" [", 1)[1].rstrip("]")
                                                 for x in texts if x))
                    published[(method, t.dataset)] = " / ".join(values) + "".join(
                        f" [{s}]" for s in sources)
        for t, metric in columns:
            ranked = [(cells[(m, t.dataset, metric)].mean, m) for m in methods
                      if (m, t.dataset, metric) in cells and m not in uses_labels]
            if ranked:
                best = max(ranked)[0]
                for value, m in ranked:
                    cells[(m, t.dataset, metric)].best = value == best
        out.append(Summary(profile, synthetic, columns, methods, cells, published, uses_labels))
    return out


# -- formatting shared by the renderers --------------------------------------------------------------
def fmt_diff(diff: float) -> str:
    return f"{diff:+.1f}".replace("-", "−")


def fmt_cell(mean: float, std: float, n: int, ci_low: float = math.nan,
             ci_high: float = math.nan) -> str:
    text = f"{mean:.1f}"
    if n > 1 and not math.isnan(std):
        text += f" ± {std:.1f}"
    if not math.isnan(ci_low):
        text += f" [{ci_low:.1f}, {ci_high:.1f}]"
    return text


def fmt_delta(cell: Any) -> str:
    """Δ in points, in std units where the seeds have a spread, and whether the claim lies in the CI."""
    parts = [fmt_diff(cell.diff)]
    if not pd.isna(cell.diff_sd):
        parts.append(f"{fmt_diff(cell.diff_sd)} sd")
    if cell.claim_in_ci is None or pd.isna(cell.claim_in_ci):
        parts.append("no CI")
    else:
        parts.append("claim in CI" if cell.claim_in_ci else "claim outside CI")
    return f"{parts[0]} ({', '.join(parts[1:])})"


def display_frame(table: Table) -> pd.DataFrame:
    """The table as strings: row, n, then per metric the reproduced cell (mean ± std [95% CI]) and,
    where claims are shown, `<metric> claim` and `<metric> Δ`; then the flags."""
    claim_metrics = set(table.cells.loc[table.cells["claim"].notna(), "metric"]) \
        if table.claims_shown else set()
    by_key = {(r.row, r.metric): r for r in table.cells.itertuples()}
    rows = []
    for facts in table.rows.itertuples():
        row = {"method": facts.row,
               "n": f"{facts.n}{SMALL_N_MARK if 0 < facts.n < SMALL_N else ''}"}
        for metric in table.metrics:
            cell = by_key.get((facts.row, metric))
            row[metric] = (fmt_cell(cell.mean, cell.std, cell.n, cell.ci_low, cell.ci_high)
                           if cell is not None else NO_VALUE)
            if metric in claim_metrics:
                has = cell is not None and not pd.isna(cell.claim)
                row[f"{metric} claim"] = f"{fmt_claim(cell.claim)} [{cell.claim_ref}]" if has else NO_VALUE
                row[f"{metric} Δ"] = fmt_delta(cell) if has else NO_VALUE
        row["flags"] = facts.flags or ""
        rows.append(row)
    return pd.DataFrame(rows)


def relative(path: str | os.PathLike[str], start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return str(path)


# -- plots and the whole command --------------------------------------------------------------------
def _draw_plots(tables: Sequence[Table], records: Sequence[Mapping[str, Any]], folder: Path) -> Path | None:
    history_by_table = {}
    curves_by_table = {}
    for t in tables:
        mine = [r for r in records if r["dataset"] == t.dataset and r["profile"] == t.profile]
        labelled, _ = _assign_rows(mine)
        curves_by_table[t.slug] = {row: c for (_, _, row), c in seed_cmc(labelled).items()}
        history_by_table[t.slug] = pseudo_label_history(labelled)
    for t in tables:
        supervised = set(t.rows.loc[t.rows["uses_labels"], "row"]) if not t.rows.empty else set()
        curves = {f"{row} (uses labels)" if row in supervised else row: c
                  for row, c in curves_by_table[t.slug].items()}
        if curves:
            claimed = {}
            for c in t.cells.itertuples():
                if c.metric in CMC_CLAIM_RANKS and not pd.isna(c.claim):
                    claimed.setdefault(c.row, {})[CMC_CLAIM_RANKS[c.metric]] = float(c.claim)
            title = f"CMC, {t.heading} (mean over seeds; band: seeds' range)"
            t.plots["CMC"] = plot_cmc(curves, title, folder / f"cmc_{t.slug}.png",
                                      claims=claimed or None)
        sub = history_by_table[t.slug]
        if not sub.empty:
            title = f"Pseudo-label quality per epoch, {t.heading}"
            t.plots["pseudo-label quality"] = plot_pseudo_label_quality(
                sub, title, folder / f"pseudo_labels_{t.slug}.png")
    points = [
        {"dataset": t.title, "metric": c.metric, "method": c.row, "claim": c.claim,
         "mean": c.mean, "ci_low": c.ci_low, "ci_high": c.ci_high, "n": int(c.n)}
        for t in tables if t.claims_shown for c in t.cells.itertuples() if not pd.isna(c.claim)
    ]
    if not points:
        return None
    return plot_claims_scatter(pd.DataFrame(points), folder / "claims_vs_reproduced.png")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [f.strip() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ValueError(f"--format {text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def write_leaderboard(
    results: str | os.PathLike[str], out: str | os.PathLike[str],
    formats: Sequence[str] = FORMATS, profile: str | None = None,
    claims: pd.DataFrame | None = None, plots: bool = True,
) -> list[Path]:
    """Read the records under `results`, write `leaderboard.<fmt>` (and plots/) into `out`; return
    the paths written. No records (of `profile`, when given) is an error naming the folder."""
    from benchmark.reporting.render import RENDERERS

    results, out = Path(results), Path(out)
    records = load_records(results)
    if profile is not None and not any(r["profile"] == profile for r in records):
        found = sorted({r["profile"] for r in records})
        raise ResultsError(f"{results}: no result record of profile {profile!r} "
                           f"(profiles found: {', '.join(found) or 'none'})")
    if not records:
        raise ResultsError(f"{results}: no result records (expected "
                           "<dataset>/<method>/<profile>/seed<N>/record.json)")
    claims = load_claims() if claims is None else claims
    tables = build_tables(records, claims, profile)
    summaries = build_summaries(tables)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    scatter = None
    if plots:
        chosen = [r for r in records if profile is None or r["profile"] == profile]
        scatter = _draw_plots(tables, chosen, out / "plots")
        written += [p for t in tables for p in t.plots.values()] + ([scatter] if scatter else [])
    for fmt in formats:
        path = out / f"{BASENAME}.{fmt}"
        text = RENDERERS[fmt](tables=tables, summaries=summaries, results=results, out=out,
                              scatter=scatter)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a reader never sees half a table
        written.append(path)
    return written
