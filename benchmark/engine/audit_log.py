"""Where audit verdicts are kept, and what a result record says about them (`record["isolation"]`).

`benchmark audit --out DIR` writes one file per method, `<DIR>/audits/<method>.json`, holding its
latest verdict per (dataset, profile, seed, mode) with the commit the audit ran at. A cell run into
the same DIR reads it: its record's `isolation` says whether the method passed the audit in the mode
that cell runs in (`plain`, or `validation` for a validation-selected model; `sweep` too when its
parameters came from a sweep), and whether the audit ran on the same code (same commit, both trees
clean). An audit is a statement about code, so a verdict at another commit is shown, not trusted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.engine.records import RecordError, write_record

AUDITS = "audits"


def audit_path(out: str | Path, method: str) -> Path:
    return Path(out) / AUDITS / f"{method}.json"


def read_audits(out: str | Path, method: str) -> dict[str, Any]:
    """The method's audit file, or an empty one; RecordError naming the file when it is corrupt."""
    path = audit_path(out, method)
    if not path.is_file():
        return {"method": method, "entries": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not a readable audit file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise RecordError(f"{path}: not an audit file (no 'entries' list)")
    return data


def add_audits(out: str | Path, method: str, method_ref: str,
               entries: Sequence[Mapping[str, Any]]) -> Path:
    """Merge verdicts into the method's file (atomically); a newer verdict replaces an older one of
    the same dataset, profile, seed and mode."""
    data = read_audits(out, method)
    key = ("dataset", "profile", "seed", "mode")
    fresh = {tuple(e[k] for k in key) for e in entries}
    kept = [e for e in data["entries"] if tuple(e.get(k) for k in key) not in fresh]
    return write_record(audit_path(out, method), {
        "method": method, "method_ref": method_ref, "status": "audits",
        "entries": kept + [dict(e) for e in entries],
    })


def isolation_status(
    out: str | Path, method: str, method_ref: str, modes: Sequence[str], git: Mapping[str, Any]
) -> dict[str, Any]:
    """The record's `isolation`: audited means a passing verdict for this adapter in each of
    `modes` (any dataset or profile: the audit tests the method's code, not a dataset)."""
    try:
        entries = [e for e in read_audits(out, method)["entries"]
                   if e.get("method_ref") in (None, method_ref)]
    except RecordError as exc:
        return {"audited": False, "modes": list(modes), "note": str(exc)}
    status: dict[str, Any] = {"audited": False, "modes": list(modes), "commit": None,
                              "same_code": False, "file": str(audit_path(out, method))}
    if not entries:
        status["note"] = "no audit of this method in this results folder"
        return status
    failed = [e for e in entries if e.get("mode") in modes and not e.get("passed")]
    passing = {e["mode"]: e for e in entries if e.get("passed")}
    missing = [m for m in modes if m not in passing]
    if failed:
        status["note"] = "audit FAILED: " + "; ".join(str(e.get("message")) for e in failed)[:500]
        return status
    if missing:
        status["note"] = f"not audited in mode(s) {', '.join(missing)}"
        return status
    commits = {passing[m].get("commit") for m in modes}
    commit = commits.pop() if len(commits) == 1 else None
    status.update(
        audited=True, commit=commit,
        same_code=bool(commit and commit == git.get("commit") and not git.get("dirty")
                       and not any(passing[m].get("dirty") for m in modes)),
        audited_on=sorted({f"{passing[m]['dataset']} ({passing[m]['profile']})" for m in modes}),
    )
    return status
