"""The leaderboard's four outputs (Markdown, CSV, LaTeX, HTML), each from the same built tables.

Each format serves a different reader: Markdown for the repository, HTML as one self-contained page
(styles inline, plots as data URIs, records and MLflow runs as links), CSV for analysis (one row per
cell, every provenance field a column, numbers rounded to what a seed-to-seed spread can support),
and LaTeX for a paper (booktabs, shrunk to the text width when wider, long flags moved to notes).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.reporting.leaderboard import (
    NO_VALUE,
    SMALL_N,
    SMALL_N_MARK,
    Summary,
    Table,
    display_frame,
    fmt_claim,
    fmt_delta,
    relative,
)

DECIMALS = 2  # CSV: percent to 0.01 points, far below any seed-to-seed spread


def _intro(results: Path) -> list[str]:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return [
        f"Generated {stamp} from the result records under {results}.",
        ("Metrics in percent. A row is one experiment: a method's seeds that share config, initial "
         "weights and code (otherwise they are separate rows, flagged with what differs). A cell is "
         "the mean ± sample standard deviation (ddof = 1) over the finished seeds and, in "
         "brackets, the t-based 95% confidence interval of the mean (clipped to 0-100); n = "
         "number of seeds, "
         f"{SMALL_N_MARK} = fewer than {SMALL_N}. Each table is one dataset under one profile; "
         "profiles differ in scale and are never mixed."),
    ]


def _summary_note(summary: Summary) -> str:
    text = ("Each method's first row (its paper's own run where it has one). A cell is the "
            "reproduced mean; where a claim stands beside it: (claim, Δ). Bold: the best "
            f"unsupervised value of the column. {SMALL_N_MARK}: n < {SMALL_N}.")
    if summary.published:
        text += (" Published: what other papers print for the method (quoted, fully unsupervised, "
                 "ResNet-50 or unstated backbone), mAP / R1 or ACC / NMI; a reference, never a Δ.")
    if summary.uses_labels:
        text += " Rows marked (uses labels) are supervised references and are never ranked."
    return text


# -- Markdown ---------------------------------------------------------------------------------------
def _md_link(text: str, target: str) -> str:
    return f"[{text}]({target.replace(' ', '%20')})"


def _md_runs(runs: Sequence[tuple[int, str, str | None]]) -> str:
    return ", ".join(_md_link(f"seed{s}: {rid[:8]}", url) if url else f"seed{s}: `{rid}`"
                     for s, rid, url in runs) or NO_VALUE


def provenance_frame(table: Table, out: Path, link: Callable[[str, str], str]) -> pd.DataFrame:
    """Per row: where its numbers come from (records, MLflow runs, commit, config hash, init)."""
    rows = []
    for r in table.rows.itertuples():
        rows.append({
            "row": r.row, "seeds": r.seeds or NO_VALUE, "commit": r.commit,
            "config": r.config_hash[:12], "init": r.init,
            "records": ", ".join(link(f"seed{s}", relative(p, out)) for s, p in r.records),
            "MLflow runs": (", ".join(link(f"seed{s}: {rid[:8]}", url) if url else f"seed{s}: {rid}"
                                      for s, rid, url in r.runs) or NO_VALUE),
        })
    return pd.DataFrame(rows)


def render_markdown(*, tables: Sequence[Table], summaries: Sequence[Summary], results: Path,
                    out: Path, scatter: Path | None) -> str:
    lines = ["# Leaderboard", "", *_intro(results), ""]
    for s in summaries:
        lines += [f"## {s.title}", "", _summary_note(s), "",
                  s.frame().to_markdown(index=False), ""]
    for t in tables:
        lines += [f"## {t.heading}", "", t.note, ""]
        lines += [f"- {k}: {v}" for k, v in t.provenance.items()] + [""]
        lines += [display_frame(t).to_markdown(index=False), ""]
        lines += [f"{n}  " for n in t.footnotes] + ([""] if t.footnotes else [])
        lines += ["Where each row comes from:", "",
                  provenance_frame(t, out, _md_link).to_markdown(index=False), ""]
        for name, path in t.plots.items():
            lines += [f"![{name}: {t.dataset}, {t.profile}]({relative(path, out)})", ""]
    if scatter is not None:
        lines += ["## Reproduced vs claimed", "",
                  f"![reproduced vs claimed]({relative(scatter, out)})", ""]
    return "\n".join(lines)


# -- CSV --------------------------------------------------------------------------------------------
def _round(value: Any) -> Any:
    return round(float(value), DECIMALS) if value is not None and not pd.isna(value) else None


def long_frame(tables: Sequence[Table], out: Path) -> pd.DataFrame:
    """Every (dataset, profile, row, metric) cell with its numbers and provenance."""
    rows = []
    for t in tables:
        facts = t.rows.set_index("row")
        for c in t.cells.itertuples():
            f = facts.loc[c.row]
            rows.append({
                "dataset": t.dataset, "dataset_title": t.title, "profile": t.profile,
                "synthetic": t.synthetic, "withdrawn": t.withdrawn, "row": c.row,
                "method": c.method, "variant": int(f["variant"]), "metric": c.metric,
                "mean_pct": _round(c.mean), "std_pct": _round(c.std), "n": int(c.n),
                "ci95_low_pct": _round(c.ci_low), "ci95_high_pct": _round(c.ci_high),
                "seeds": " ".join(str(s) for s in c.seeds),
                "claim_pct": None if pd.isna(c.claim) else float(c.claim),
                "diff_pct": _round(c.diff), "diff_sd": _round(c.diff_sd),
                "claim_in_ci": c.claim_in_ci,
                "claim_source": c.claim_source if isinstance(c.claim_source, str) else "",
                "paper_run_gaps": "; ".join(f["paper_gaps"]),
                "flags": f["flags"], "commit": f["commit"], "config_hash": f["config_hash"],
                "init": f["init"],
                "records": " ".join(relative(p, out) for _, p in f["records"]),
                "mlflow_run_ids": " ".join(rid for _, rid, _ in f["runs"]),
                "mlflow_urls": " ".join(url for _, _, url in f["runs"] if url),
                **{k: v for k, v in t.provenance.items()
                   if k in ("backbone", "hardware", "torch")},
            })
    return pd.DataFrame(rows)


def render_csv(*, tables: Sequence[Table], out: Path, **_: Any) -> str:
    return long_frame(tables, out).to_csv(index=False)


# -- LaTeX ------------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "—": "--", "†": r"$^\dagger$",
                  "·": r"$\cdot$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$",
                  "→": r"$\rightarrow$", "√": r"$\surd$"}


def latex_text(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for symbol, command in _LATEX_UNICODE.items():
        out = out.replace(symbol, command)
    return "".join(ch if ord(ch) < 128 else "?" for ch in out)  # pdflatex reads ASCII safely


def _fit(tabular: list[str]) -> list[str]:
    """Shrink a tabular to the text width when it is wider; never enlarge it."""
    return ["\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
            *tabular, "}"]


def _latex_footnote(note: str) -> str:
    """A deviation footnote ("[D1] method: (1) ... (9) ...") can run to a page of text; a table in a
    paper names how many there are and where they are written, so the float fits its page."""
    match = re.match(r"(\[D\d+\] [^:]+): \(1\)", note)
    if not match:
        return note
    count = len(re.findall(r"(?:^|\s)\((\d+)\) ", note))
    return f"{match.group(1)}: {count} deviation{'s' if count > 1 else ''} from the paper."


def _latex_main(t: Table) -> list[str]:
    claim_metrics = [m for m in t.metrics
                     if t.claims_shown and t.cells.loc[t.cells["metric"] == m, "claim"].notna().any()]
    header = ["method", "n"]
    for m in t.metrics:
        header.append(m)
        if m in claim_metrics:
            header += [f"{m} claim", f"{m} Δ"]
    by_key = {(c.row, c.metric): c for c in t.cells.itertuples()}
    body, marks = [], []
    for i, r in enumerate(t.rows.itertuples()):
        mark = chr(ord("a") + i % 26) if r.flags else ""
        if mark:
            marks.append(f"({mark}) {r.row}: {r.flags}")
        top = [latex_text(r.row) + (f"$^{{({mark})}}$" if mark else ""),
               latex_text(f"{r.n}{SMALL_N_MARK if 0 < r.n < SMALL_N else ''}")]
        bottom = ["", ""]
        for m in t.metrics:
            c = by_key.get((r.row, m))
            if c is None:
                top.append("--")
                bottom.append("")
            else:
                spread = f" ± {c.std:.1f}" if c.n > 1 and not math.isnan(c.std) else ""
                top.append(latex_text(f"{c.mean:.1f}{spread}"))
                bottom.append("" if math.isnan(c.ci_low) else
                              f"{{\\scriptsize [{c.ci_low:.1f}, {c.ci_high:.1f}]}}")
            if m in claim_metrics:
                has = c is not None and not pd.isna(c.claim)
                top += [latex_text(f"{fmt_claim(c.claim)} [{c.claim_ref}]") if has else "--",
                        latex_text(fmt_delta(c).split(" (")[0]) if has else "--"]
                bottom += ["", latex_text(fmt_delta(c).split(" (", 1)[1].rstrip(")"))
                           if has else ""]
        body.append(" & ".join(top) + r" \\")
        if any(bottom):
            body.append(" & ".join(bottom) + r" \\")
    columns = "l" + "r" * (len(header) - 1)
    tabular = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
               " & ".join(latex_text(h) for h in header) + r" \\", "\\midrule", *body,
               "\\bottomrule", "\\end{tabular}"]
    provenance = "; ".join(f"{k}: {v}" for k, v in t.provenance.items())
    notes = [t.note, provenance, *marks, *(_latex_footnote(n) for n in t.footnotes)]
    if any(n.startswith("[D") for n in t.footnotes):
        notes.append("Each deviation is written in its adapter's docstring and in the Markdown and "
                     "HTML leaderboards.")
    return [
        "\\begin{table}[p]", "\\centering", "\\small",
        f"\\caption{{{latex_text(t.heading)}}}", f"\\label{{tab:leaderboard-{t.slug}}}",
        *_fit(tabular),
        "\\par\\medskip\\begin{minipage}{\\linewidth}\\scriptsize\\raggedright\\sloppy",
        " \\par\n".join(latex_text(n) for n in notes),
        "\\end{minipage}", "\\end{table}", "",
    ]


def _latex_summary(s: Summary) -> list[str]:
    frame = s.frame(bold=("\x00", "\x01"))
    header = [latex_text(c) for c in frame.columns]
    body = []
    for row in frame.itertuples(index=False):
        cells = [latex_text(v).replace("\x00", "\\textbf{").replace("\x01", "}") for v in row]
        body.append(" & ".join(cells) + r" \\")
    tabular = [f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule",
               " & ".join(header) + r" \\", "\\midrule", *body, "\\bottomrule", "\\end{tabular}"]
    return ["\\begin{table}[p]", "\\centering", "\\small",
            f"\\caption{{{latex_text(s.title)}}}",
            f"\\label{{tab:leaderboard-{s.slug}}}", *_fit(tabular),
            "\\par\\medskip\\begin{minipage}{\\linewidth}\\scriptsize\\raggedright\\sloppy",
            latex_text(_summary_note(s)), "\\end{minipage}", "\\end{table}", ""]


def render_latex(*, tables: Sequence[Table], summaries: Sequence[Summary], **_: Any) -> str:
    parts = ["% Generated by `python -m benchmark leaderboard`; needs \\usepackage{booktabs} and "
             "\\usepackage{graphicx}.", ""]
    for s in summaries:
        parts += _latex_summary(s)
    for t in tables:
        parts += _latex_main(t)
    return "\n".join(parts)


# -- HTML -------------------------------------------------------------------------------------------
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
table.lb td:first-child, table.lb th:first-child { text-align: left; }
table.lb td.flags { text-align: left; white-space: normal; min-width: 16rem; }
table.summary { font-size: 1rem; } table.summary td { white-space: normal; }
table.summary td:first-child { white-space: nowrap; } table.summary td.ref { text-align: left; }
.scroll { overflow-x: auto; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; font-size: .85rem; }
dl.prov dt { color: #57606a; } dl.prov dd { margin: 0; font-family: ui-monospace, monospace; }
.footnotes { font-size: .8rem; color: #424a53; } img { max-width: 100%; border: 1px solid #eaeef2; margin: .5rem 0; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_table(frame: pd.DataFrame, classes: str, raw_columns: Sequence[str] = ()) -> str:
    """A table of strings; cells of `raw_columns` are HTML already, others are escaped."""
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, values):
            text = str(value) if column in raw_columns else e(str(value))
            cls = (' class="flags"' if column in ("flags", "init", "records", "MLflow runs")
                   else ' class="ref"' if str(column).endswith(" published") else "")
            cells.append(f"<td{cls}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="{classes}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _html_link(text: str, target: str) -> str:
    return f'<a href="{html.escape(target, quote=True)}">{html.escape(text)}</a>'


def render_html(*, tables: Sequence[Table], summaries: Sequence[Summary], results: Path, out: Path,
                scatter: Path | None) -> str:
    e = html.escape
    body = ["<h1>Leaderboard</h1>", *(f"<p>{e(p)}</p>" for p in _intro(results))]
    for s in summaries:
        frame = s.frame(bold=("\x00", "\x01"))
        frame = frame.map(lambda v: e(str(v)).replace("\x00", "<strong>").replace("\x01", "</strong>"))
        body += [f'<section id="{e(s.slug)}">', f"<h2>{e(s.title)}</h2>",
                 _html_table(frame, "lb summary", raw_columns=list(frame.columns)),
                 f'<p class="note">{e(_summary_note(s))}</p>', "</section>"]
    if tables:
        body.append("<p>Tables: " + ", ".join(
            f'<a href="#{e(t.slug)}">{e(t.dataset)} ({e(t.profile)})</a>' for t in tables) + "</p>")
    for t in tables:
        badges = f'<span class="badge">{e(t.profile)} profile</span>'
        if t.synthetic:
            badges += '<span class="badge synthetic">synthetic data</span>'
        if t.withdrawn:
            badges += '<span class="badge withdrawn">withdrawn dataset</span>'
        provenance = provenance_frame(t, out, _html_link)
        body += [
            f'<section id="{e(t.slug)}" class="{"synthetic-table" if t.synthetic else ""}">',
            f"<h2>{e(t.title)} <code>{e(t.dataset)}</code>{badges}</h2>",
            f'<p class="note">{e(t.note)}</p>',
            _html_table(display_frame(t), "lb"),
            '<dl class="prov">' + "".join(
                f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in t.provenance.items()) + "</dl>",
        ]
        if t.footnotes:
            body.append('<div class="footnotes">' + "".join(
                f"<p>{e(n)}</p>" for n in t.footnotes) + "</div>")
        body += ["<h3>Where each row comes from</h3>",
                 _html_table(provenance, "lb", raw_columns=("records", "MLflow runs"))]
        body += [_img(p, f"{name}: {t.dataset}, {t.profile}") for name, p in t.plots.items()]
        body.append("</section>")
    if scatter is not None:
        body += ["<h2>Reproduced vs claimed</h2>", _img(scatter, "reproduced vs claimed")]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Leaderboard</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


RENDERERS: dict[str, Callable[..., str]] = {
    "md": render_markdown, "csv": render_csv, "tex": render_latex, "html": render_html,
}
