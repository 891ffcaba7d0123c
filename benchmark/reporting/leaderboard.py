"""Leaderboard tables: reproduced numbers per dataset and profile, beside the papers' claims only where
the two measure the same thing (integrity rule 4 of DESIGN.md).

One table per (dataset, profile): profiles differ in scale (backbone, input size, epochs), so their
numbers never share a table. Rows are methods, columns metrics (percent); a cell is the mean ± sample
std (ddof = 1) over the finished seeds, with n. Failed seeds are left out of the mean and flagged.

When a claim stands beside a run (the "claim" and "Δ" columns, Δ = reproduced mean − claim in
points), all of these hold:
- the dataset is real (synthetic tables never get claim columns at all);
- the run is a paper-profile run with an ImageNet-pretrained backbone the papers name
  (`resnet50` = "ResNet-50"). quick and ci train a small randomly initialised backbone at reduced
  scale: a different protocol, so their tables show no claims and their caption says why;
- the claim is the paper's *own* number (`origin = "own"`) for the same method key, dataset and
  metric, under the `fully unsupervised` protocol, not an ablation or sensitivity row;
- its backbone is the run's, or not stated by the paper (then the claim's footnote says so); a row
  "with camera labels" is compared only with a method that uses camera ids, "without" only with one
  that does not.
When several claims qualify, the first in claims.toml is shown and the footnote lists the others.

Every table carries its provenance (profile, backbone, pretrained, seeds, commits, hardware) and per
row flags: the adapter's deviations (count, listed in a footnote), camera-id use, a withdrawn
dataset, failed seeds.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.reporting.claims import load_claims
from benchmark.reporting.plots import (
    plot_claims_scatter,
    plot_cmc,
    plot_pseudo_label_quality,
)
from benchmark.reporting.results import (
    ResultsError,
    aggregate,
    cells_frame,
    load_records,
    mean_cmc,
    metrics_for_kind,
    metrics_frame,
    pseudo_label_history,
)

FORMATS = ("md", "csv", "tex", "html")
PAPER_PROFILE = "paper"
BACKBONE_NAMES = {"resnet50": "ResNet-50"}  # harness backbone key -> as the papers print it
# A variant registered under its own key whose claims the paper files under the method's key with a
# marked backbone: U-SSL's "ResNet-50*" rows (stage features concatenated) are `ussl-star`'s.
CLAIM_VARIANTS = {"ussl-star": ("ussl", "*")}
COMPARED_PROTOCOL = "fully unsupervised"
EXCLUDED_QUALIFIERS = ("ablation:", "sensitivity:")
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
    cells: pd.DataFrame  # method, metric, mean, std (percent), n, seeds, claim, diff, claim_ref
    rows: pd.DataFrame  # method (table order), flags
    claims_shown: bool
    note: str  # what the claim columns hold, or why there are none
    provenance: dict[str, str]
    footnotes: list[str] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)

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
def comparable_claims(
    claims: pd.DataFrame, *, method: str, dataset: str, profile: str, backbone: str | None,
    pretrained: bool | None, uses_camera_ids: bool, synthetic: bool,
) -> pd.DataFrame:
    """The claims that may stand beside this run (the rules in the module docstring), file order."""
    none = claims.iloc[0:0]
    if synthetic or profile != PAPER_PROFILE or not pretrained or backbone not in BACKBONE_NAMES:
        return none
    method, marker = CLAIM_VARIANTS.get(method, (method, ""))
    c = claims[(claims["method"] == method) & (claims["dataset"] == dataset)
               & (claims["origin"] == "own") & (claims["protocol"] == COMPARED_PROTOCOL)]
    c = c[~c["qualifier"].str.startswith(EXCLUDED_QUALIFIERS)]
    c = c[c["backbone"].isin([BACKBONE_NAMES[backbone] + marker] + ([] if marker else [""]))]
    wrong_cameras = "without camera labels" if uses_camera_ids else "with camera labels"
    c = c[c["qualifier"] != wrong_cameras]
    return c.sort_values("entry")


def _fmt_claim(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def _claim_source(row: Any) -> str:
    where = f"{row.paper}, {row.table}, row \"{row.name}\""
    if not row.backbone:
        where += " (backbone not stated by the paper)"
    return where


# -- building ---------------------------------------------------------------------------------------
def _distinct(values: Iterable[Any]) -> str:
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
    pretrained = {True: "yes (ImageNet weights)", False: "no (random init)"}
    return {
        "profile": _distinct(source["profile"]),
        "backbone": _distinct(source["backbone"]),
        "pretrained": _distinct(pretrained.get(p, p) for p in source["pretrained"]),
        "seeds": _distinct(sorted(source["seed"].unique())),
        "commits": _distinct(source["commit"]),
        "hardware": _distinct(source["hardware"]),
        "torch": _distinct(source["torch"]),
        "records": f"{len(finished)} finished, {len(cells) - len(finished)} failed",
    }


def _note(profile: str, synthetic: bool, withdrawn: bool, any_claim: bool, provenance: Mapping[str, str]) -> str:
    parts = []
    if synthetic:
        parts.append("Synthetic data: no paper reports on it, so no claim is shown; these numbers "
                     "are never comparable with a paper's.")
    elif profile != PAPER_PROFILE:
        parts.append(
            f"No claims: the {profile} profile trains {provenance['backbone']} (pretrained: "
            f"{provenance['pretrained']}) at reduced input size and epochs, a different protocol "
            "from the papers' (ResNet-50 with ImageNet weights, full schedules), so the papers' "
            "numbers are not shown; run the paper profile to compare.")
    elif any_claim:
        parts.append(
            "Claim: the paper's own number for the method, fully unsupervised protocol, no ablation "
            "or sensitivity row, same backbone as the run; Δ = reproduced mean − claim, in points.")
    else:
        parts.append("No claim: none of these methods has a comparable claim on this dataset "
                     "(the paper's own, fully unsupervised, same backbone, not an ablation row).")
    if withdrawn:
        parts.append("This dataset was withdrawn by its creators; results come from a copy the "
                     "user holds.")
    return " ".join(parts)


def _row_flags(method: str, group: pd.DataFrame, withdrawn: bool,
               deviation_notes: list[str], notes: list[str]) -> str:
    flags = []
    deviations = list(dict.fromkeys(d for devs in group["deviations"] for d in devs))
    if deviations:
        tag = f"D{len(deviation_notes) + 1}"
        deviation_notes.append(f"[{tag}] {method}: " + " ".join(
            f"({i}) {d}" for i, d in enumerate(deviations, start=1)))
        flags.append(f"{len(deviations)} deviation{'s' if len(deviations) > 1 else ''} [{tag}]")
    if group["uses_camera_ids"].any():
        flags.append("camera ids")
    finished = group[group["status"] == "finished"]
    if not finished.empty:  # integrity rule 1: whether `benchmark audit` showed it isolated
        flags.append("isolation: " + ", ".join(dict.fromkeys(finished["isolation"])))
    if withdrawn:
        flags.append("withdrawn dataset")
    failed = group[group["status"] != "finished"]
    if not failed.empty:
        seeds = ", ".join(str(s) for s in sorted(failed["seed"]))
        flags.append(f"failed seed{'s' if len(failed) > 1 else ''} {seeds}")
        reasons = "; ".join(dict.fromkeys(e for e in failed["error"] if e))
        notes.append(f"{method}: seed(s) {seeds} failed ({reasons or 'no error recorded'}); "
                     "left out of the means.")
    return "; ".join(flags)


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
    cells = cells_frame(records)
    title, kind, synthetic, withdrawn = _dataset_facts(dataset, records)
    metric_names = metrics_for_kind(kind)
    agg = aggregate(metrics_frame(records, metric_names))
    agg = agg.sort_values(["method", "metric"], key=lambda col: col.map(metric_names.index)
                          if col.name == "metric" else col).reset_index(drop=True)
    agg = agg.assign(mean=agg["mean"].astype(float) * 100, std=agg["std"].astype(float) * 100)
    provenance = _provenance(cells)

    claim_notes: list[str] = []
    claim_refs: dict[tuple[str, str, str], str] = {}
    claim_cols = {"claim": [], "diff": [], "claim_ref": [], "claim_source": []}
    for row in agg.itertuples():
        group = cells[(cells["method"] == row.method) & (cells["status"] == "finished")]
        found = pd.DataFrame()
        if len(group["backbone"].unique()) == 1 and len(group["pretrained"].unique()) == 1:
            found = comparable_claims(
                claims[claims["metric"] == row.metric], method=row.method, dataset=dataset,
                profile=profile, backbone=group["backbone"].iloc[0],
                pretrained=bool(group["pretrained"].iloc[0]),
                uses_camera_ids=bool(group["uses_camera_ids"].any()), synthetic=synthetic)
        if found.empty:
            for values in claim_cols.values():
                values.append(None)
            continue
        first = next(found.itertuples())
        key = (first.paper, first.table, first.name)
        if key not in claim_refs:
            claim_refs[key] = f"C{len(claim_refs) + 1}"
            claim_notes.append(f"[{claim_refs[key]}] {row.method}: {_claim_source(first)}")
        ref = claim_refs[key]
        others = list(found.itertuples())[1:]
        if others:
            claim_notes.append(f"[{ref}] {row.metric}: other qualifying claims: " + "; ".join(
                f"{_fmt_claim(o.value)} ({_claim_source(o)})" for o in others))
        claim_cols["claim"].append(float(first.value))
        claim_cols["diff"].append(float(row.mean) - float(first.value))
        claim_cols["claim_ref"].append(ref)
        claim_cols["claim_source"].append(_claim_source(first))
    for name, values in claim_cols.items():
        agg[name] = pd.Series(values, index=agg.index, dtype=float if name in ("claim", "diff") else object)

    # row order: best first by the first metric present, methods without a finished seed last
    lead = next((m for m in metric_names if m in set(agg["metric"])), None)
    score = agg[agg["metric"] == lead].set_index("method")["mean"] if lead else pd.Series(dtype=float)
    methods = sorted(cells["method"].unique(), key=lambda m: (-score.get(m, -math.inf), m))

    deviation_notes: list[str] = []
    failure_notes: list[str] = []
    flags = [_row_flags(m, cells[cells["method"] == m], withdrawn, deviation_notes, failure_notes)
             for m in methods]
    present = tuple(m for m in metric_names if m in set(agg["metric"]))
    any_claim = bool(agg["claim"].notna().any()) if not agg.empty else False
    scored_notes = _scored_notes(cells, methods) if kind == "clustering" else []
    return Table(
        dataset=dataset, title=title, profile=profile, kind=kind, synthetic=synthetic,
        withdrawn=withdrawn, metrics=present or metric_names, cells=agg,
        rows=pd.DataFrame({"method": methods, "flags": flags}), claims_shown=any_claim,
        note=_note(profile, synthetic, withdrawn, any_claim, provenance), provenance=provenance,
        footnotes=deviation_notes + claim_notes + failure_notes + scored_notes,
    )


def build_tables(records: Sequence[Mapping[str, Any]], claims: pd.DataFrame,
                 profile: str | None = None) -> list[Table]:
    """One table per (dataset, profile) of the records, optionally of one profile only."""
    chosen = [r for r in records if profile is None or r["profile"] == profile]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in chosen:
        groups.setdefault((r["dataset"], r["profile"]), []).append(r)
    return [_build_table(d, p, group, claims) for (d, p), group in sorted(groups.items())]


# -- rendering --------------------------------------------------------------------------------------
def _fmt_cell(mean: float, std: float, n: int) -> str:
    if n > 1 and not math.isnan(std):
        return f"{mean:.1f} ± {std:.1f} (n={n})"
    return f"{mean:.1f} (n={n})"


def _fmt_diff(diff: float) -> str:
    return f"{diff:+.1f}".replace("-", "−")


def display_frame(table: Table) -> pd.DataFrame:
    """The table as strings: method, flags, then per metric the reproduced cell and, where claims
    are shown, `<metric> claim` and `<metric> Δ`."""
    claim_metrics = set(table.cells.loc[table.cells["claim"].notna(), "metric"]) \
        if table.claims_shown else set()
    by_key = {(r.method, r.metric): r for r in table.cells.itertuples()}
    rows = []
    for method, flags in zip(table.rows["method"], table.rows["flags"]):
        row = {"method": method}
        for metric in table.metrics:
            cell = by_key.get((method, metric))
            row[metric] = _fmt_cell(cell.mean, cell.std, cell.n) if cell is not None else NO_VALUE
            if metric in claim_metrics:
                has = cell is not None and not pd.isna(cell.claim)
                row[f"{metric} claim"] = f"{_fmt_claim(cell.claim)} [{cell.claim_ref}]" if has else NO_VALUE
                row[f"{metric} Δ"] = _fmt_diff(cell.diff) if has else NO_VALUE
        row["flags"] = flags or ""
        rows.append(row)
    return pd.DataFrame(rows)


def long_frame(tables: Sequence[Table]) -> pd.DataFrame:
    """Every (dataset, profile, method, metric) cell with its numbers and provenance (CSV)."""
    rows = []
    for t in tables:
        flags = dict(zip(t.rows["method"], t.rows["flags"]))
        for c in t.cells.itertuples():
            rows.append({
                "dataset": t.dataset, "dataset_title": t.title, "profile": t.profile,
                "synthetic": t.synthetic, "withdrawn": t.withdrawn, "method": c.method,
                "metric": c.metric, "mean_pct": c.mean, "std_pct": c.std, "n": c.n,
                "seeds": " ".join(str(s) for s in c.seeds),
                "claim_pct": c.claim, "diff_pct": c.diff,
                "claim_source": c.claim_source if isinstance(c.claim_source, str) else "",
                "flags": flags.get(c.method, ""),
                **{k: v for k, v in t.provenance.items() if k not in ("profile", "seeds", "records")},
            })
    return pd.DataFrame(rows)


def _intro(results: Path) -> list[str]:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return [
        f"Generated {stamp} from the result records under {results}.",
        ("Metrics in percent. A cell is the mean ± sample standard deviation (ddof = 1) over the "
        "finished seeds, n = number of seeds. Each table is one dataset under one profile; "
        "profiles differ in scale and are never mixed."),
    ]


def render_markdown(tables: Sequence[Table], results: Path, out: Path,
                    scatter: Path | None) -> str:
    lines = ["# Leaderboard", "", *_intro(results), ""]
    for t in tables:
        lines += [f"## {t.heading}", "", t.note, ""]
        lines += [f"- {k}: {v}" for k, v in t.provenance.items()] + [""]
        lines += [display_frame(t).to_markdown(index=False), ""]
        lines += [f"{n}  " for n in t.footnotes] + ([""] if t.footnotes else [])
        for name, path in t.plots.items():
            lines += [f"![{name}: {t.dataset}, {t.profile}]({os.path.relpath(path, out)})", ""]
    if scatter is not None:
        lines += ["## Reproduced vs claimed", "",
                  f"![reproduced vs claimed]({os.path.relpath(scatter, out)})", ""]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "—": "--"}


def _latex_text(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for symbol, command in _LATEX_UNICODE.items():
        out = out.replace(symbol, command)
    return out


def render_latex(tables: Sequence[Table]) -> str:
    parts = ["% Generated by `python -m benchmark leaderboard`; needs \\usepackage{booktabs}.", ""]
    for i, t in enumerate(tables, start=1):
        shown = display_frame(t)
        columns = "l" + "r" * (len(shown.columns) - 2) + "l"  # method, numbers, flags
        tabular = shown.to_latex(index=False, escape=True, column_format=columns)
        for symbol, command in _LATEX_UNICODE.items():
            tabular = tabular.replace(symbol, command)
        provenance = "; ".join(f"{k}: {v}" for k, v in t.provenance.items())
        notes = " \\\\\n".join(_latex_text(n) for n in [t.note, provenance, *t.footnotes])
        parts += [
            "\\begin{table}[ht]", "\\centering", "\\scriptsize",
            f"\\caption{{{_latex_text(t.heading)}}}",
            f"\\label{{tab:leaderboard-{t.slug}}}",
            tabular.strip(),
            f"\\par\\smallskip\\raggedright {notes}",
            "\\end{table}", "",
        ]
    return "\n".join(parts)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1300px; color: #1f2328; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; }
.badge { display: inline-block; font-size: .75rem; padding: .1rem .5rem; border-radius: 1rem;
         margin-left: .4rem; vertical-align: middle; background: #ddf4ff; color: #0969da; }
.badge.synthetic { background: #fff1e5; color: #bc4c00; } .badge.withdrawn { background: #ffebe9; color: #cf222e; }
.note { background: #f6f8fa; border-left: 4px solid #8c959f; padding: .5rem .8rem; }
.synthetic-table .note { border-left-color: #bc4c00; }
table.lb { border-collapse: collapse; margin: .8rem 0; font-size: .88rem; }
table.lb th, table.lb td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: right;
                           white-space: nowrap; }
table.lb th { background: #f6f8fa; } table.lb tr:nth-child(even) td { background: #fbfcfd; }
table.lb td:first-child, table.lb td:last-child, table.lb th:first-child,
table.lb th:last-child { text-align: left; }
table.lb td:last-child { white-space: normal; min-width: 14rem; }
.scroll { overflow-x: auto; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; font-size: .85rem; }
dl.prov dt { color: #57606a; } dl.prov dd { margin: 0; font-family: ui-monospace, monospace; }
.footnotes { font-size: .8rem; color: #424a53; } img { max-width: 100%; border: 1px solid #eaeef2; margin: .5rem 0; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(tables: Sequence[Table], results: Path, scatter: Path | None) -> str:
    """One self-contained page: styles inline, plots embedded as data URIs."""
    e = html.escape
    body = ["<h1>Leaderboard</h1>", *(f"<p>{e(p)}</p>" for p in _intro(results))]
    if tables:
        body.append("<p>Tables: " + ", ".join(
            f'<a href="#{e(t.slug)}">{e(t.dataset)} ({e(t.profile)})</a>' for t in tables) + "</p>")
    for t in tables:
        badges = f'<span class="badge">{e(t.profile)} profile</span>'
        if t.synthetic:
            badges += '<span class="badge synthetic">synthetic data</span>'
        if t.withdrawn:
            badges += '<span class="badge withdrawn">withdrawn dataset</span>'
        body += [
            f'<section id="{e(t.slug)}" class="{"synthetic-table" if t.synthetic else ""}">',
            f"<h2>{e(t.title)} <code>{e(t.dataset)}</code>{badges}</h2>",
            f'<p class="note">{e(t.note)}</p>',
            '<div class="scroll">' + display_frame(t).to_html(
                index=False, escape=True, border=0, classes="lb") + "</div>",
            '<dl class="prov">' + "".join(
                f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in t.provenance.items()) + "</dl>",
        ]
        if t.footnotes:
            body.append('<div class="footnotes">' + "".join(
                f"<p>{e(n)}</p>" for n in t.footnotes) + "</div>")
        body += [_img(p, f"{name}: {t.dataset}, {t.profile}") for name, p in t.plots.items()]
        body.append("</section>")
    if scatter is not None:
        body += ["<h2>Reproduced vs claimed</h2>", _img(scatter, "reproduced vs claimed")]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Leaderboard</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# -- plots and the whole command --------------------------------------------------------------------
def _draw_plots(tables: Sequence[Table], records: Sequence[Mapping[str, Any]], folder: Path) -> Path | None:
    curves = mean_cmc(records)
    history = pseudo_label_history(records)
    for t in tables:
        mine = {m: c for (d, p, m), c in curves.items() if d == t.dataset and p == t.profile}
        if mine:
            title = f"CMC, {t.heading} (mean over seeds)"
            t.plots["CMC"] = plot_cmc(mine, title, folder / f"cmc_{t.slug}.png")
        sub = history[(history["dataset"] == t.dataset) & (history["profile"] == t.profile)]
        if not sub.empty:
            title = f"Pseudo-label quality per epoch, {t.heading}"
            t.plots["pseudo-label quality"] = plot_pseudo_label_quality(
                sub, title, folder / f"pseudo_labels_{t.slug}.png")
    points = [
        {"metric": c.metric, "method": c.method, "dataset": t.dataset, "claim": c.claim,
         "mean": c.mean, "std": c.std}
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
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    scatter = None
    if plots:
        chosen = [r for r in records if profile is None or r["profile"] == profile]
        scatter = _draw_plots(tables, chosen, out / "plots")
        written += [p for t in tables for p in t.plots.values()] + ([scatter] if scatter else [])
    texts = {
        "md": lambda: render_markdown(tables, results, out, scatter),
        "csv": lambda: long_frame(tables).to_csv(index=False),
        "tex": lambda: render_latex(tables),
        "html": lambda: render_html(tables, results, scatter),
    }
    for fmt in formats:
        path = out / f"{BASENAME}.{fmt}"
        path.write_text(texts[fmt](), encoding="utf-8")
        written.append(path)
    return written
