"""Result records of a results folder, as pandas frames: the one reader `leaderboard` and `check` share.

Both commands must agree on which records count (finished ones, found at the engine's cell layout)
and on what a mean over seeds is, so the reading and the aggregation live here once. A record whose
method, dataset, profile or seed disagrees with the folder it sits in was moved or copied by hand;
counting it under the wrong cell would corrupt a table silently, so it stops the read with an error
naming the file, as does a record that is not valid JSON.

Records are read with `json` here rather than through `benchmark.engine.records`, which imports
torch: `leaderboard` and `check` are light commands that CI runs after every suite, and torch was 15 s
of their 18 s start on a loaded machine. The layout constants below are the engine's
(tests/test_check.py asserts they stay equal).

Aggregation: mean over seeds, the *sample* standard deviation (ddof = 1; undefined, NaN, for a
single seed) and the t-based 95% confidence interval of the mean (mean ± t(0.975, n − 1) · std / √n;
undefined for one seed), in the records' units (fractions in [0, 1]). Which seeds share a mean is
`benchmark.reporting.comparability.pool_key`'s decision: callers group by a row label that the
pool key decides (`ROW`), never by the method alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.metrics import ALL as METRICS
from benchmark.metrics import table_order
from benchmark.reporting.comparability import (
    paper_run_gaps,
    pool_key,
    record_config_hash,
    record_init,
    short_commit,
)

RECORD_NAME = "record.json"  # benchmark.engine.records.RECORD_NAME
FINISHED = "finished"  # benchmark.engine.records.FINISHED
# <out>/<dataset>/<method>/<profile>/seed<seed>/record.json (benchmark.engine.records.cell_dir).
# A fixed depth, so that copies of records MLflow keeps as artifacts under <out> are never read.
RECORD_GLOB = f"*/*/*/seed*/{RECORD_NAME}"
CELL_KEYS = ("dataset", "method", "profile", "seed")
GROUP_KEYS = ("dataset", "profile", "method")
ROW = "_row"  # a record's row label in a table, set by the caller (else its method)
CONFIDENCE = 0.95


class ResultsError(ValueError):
    """A results folder that cannot be read as the engine writes it; the message names the path."""


def find_record_files(results: str | os.PathLike[str]) -> list[Path]:
    """Every record file of a results folder, in sorted order (the folder must exist)."""
    root = Path(results)
    if not root.is_dir():
        raise ResultsError(f"{root}: results folder does not exist")
    return sorted(root.glob(RECORD_GLOB))


def _check_location(path: Path, record: Mapping[str, Any]) -> None:
    seed_dir, profile_dir, method_dir, dataset_dir = path.parents[:4]
    expected = {"dataset": dataset_dir.name, "method": method_dir.name,
                "profile": profile_dir.name, "seed": seed_dir.name.removeprefix("seed")}
    missing = [k for k in CELL_KEYS if k not in record]
    if missing:
        raise ResultsError(f"{path}: record lacks {missing}")
    wrong = [f"{k} {record[k]!r} (folder says {expected[k]!r})" for k in CELL_KEYS
             if str(record[k]) != expected[k]]
    if wrong:
        raise ResultsError(f"{path}: record does not belong to its folder: {', '.join(wrong)}")


def read_record_file(path: Path) -> dict[str, Any]:
    """One record: a JSON object with a `status`; otherwise a ResultsError naming the file."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or "status" not in record:
        raise ResultsError(f"{path}: not a result record (no 'status')")
    return record


def load_records(results: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record under `results`, each with `_path` (its file) added; finished or not."""
    records = []
    for path in find_record_files(results):
        record = read_record_file(path)
        _check_location(path, record)
        records.append({**record, "_path": str(path)})
    return records


def _hardware(env: Mapping[str, Any]) -> str:
    device = str(env.get("device") or "unknown device")
    detail = env.get("gpu") if device.startswith("cuda") else env.get("cpu")
    return f"{device} ({detail})" if detail else device


def isolation_text(isolation: Mapping[str, Any] | None) -> str:
    """A record's `isolation` (benchmark.engine.audit_log) in a few words, for tables."""
    if not isolation:
        return "audit not recorded"
    if isolation.get("audited"):
        commit = str(isolation.get("commit") or "unknown commit")[:12]
        return f"audited at {commit}" + ("" if isolation.get("same_code") else " (other code)")
    if "FAILED" in str(isolation.get("note", "")):
        return "audit FAILED"
    return "not audited"


def init_text(init: Mapping[str, Any]) -> str:
    """A record's initial weights in words, with the file's hash where there is a file."""
    text = str(init.get("description") or init.get("key") or "unknown")
    sha = init.get("sha256")
    return f"{text} (sha256 {str(sha)[:12]})" if sha else text


def cells_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record: the cell, its status and the provenance a table prints."""
    rows = []
    for r in records:
        facts = r.get("dataset_facts") or {}
        settings = r.get("profile_settings") or {}
        env = r.get("environment") or {}
        error = r.get("error") or {}
        tracking = r.get("tracking") or {}
        rows.append({
            "dataset": r["dataset"], "method": r["method"], "profile": r["profile"],
            "seed": int(r["seed"]), "status": r.get("status"),
            "kind": facts.get("kind"), "synthetic": bool(facts.get("synthetic", False)),
            "withdrawn": bool(facts.get("withdrawn", False)),
            "row": r.get(ROW, r["method"]),
            "backbone": settings.get("backbone"), "pretrained": settings.get("pretrained"),
            "uses_camera_ids": bool(r.get("uses_camera_ids", False)),
            "deviations": tuple(r.get("deviations") or ()),
            "commit": short_commit(env), "hardware": _hardware(env),
            "torch": (env.get("packages") or {}).get("torch"),
            "error": f"{error.get('type', '')}: {error.get('message', '')}" if error else "",
            "path": r.get("_path", ""),
            "isolation": isolation_text(r.get("isolation")),
            "scored": (r.get("protocol") or {}).get("scored_images"),
            "pool": pool_key(r), "config_hash": record_config_hash(r),
            "init": init_text(record_init(r)), "init_sha256": record_init(r).get("sha256"),
            "paper_gaps": tuple(paper_run_gaps(r)),
            "run_id": tracking.get("run_id"), "tracking_uri": tracking.get("uri"),
            "experiment_id": tracking.get("experiment_id"),
        })
    columns = [*CELL_KEYS, "status", "kind", "synthetic", "withdrawn", "row", "backbone",
               "pretrained", "uses_camera_ids", "deviations", "commit", "hardware", "torch", "error",
               "path", "isolation", "scored", "pool", "config_hash", "init", "init_sha256",
               "paper_gaps", "run_id", "tracking_uri", "experiment_id"]
    return pd.DataFrame(rows, columns=columns)


def _scalar(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def metrics_frame(records: Iterable[Mapping[str, Any]],
                  metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Long frame of the finished records' scalar metrics: dataset, profile, method (the record's
    row label where the caller set one), seed, metric, value (a fraction). Metrics a record lacks,
    or holds as null, are left out."""
    rows = []
    for r in records:
        if r.get("status") != FINISHED:
            continue
        held = r.get("metrics") or {}
        for name in metrics:
            value = _scalar(held.get(name))
            if not math.isnan(value):
                rows.append({"dataset": r["dataset"], "profile": r["profile"],
                             "method": r.get(ROW, r["method"]), "seed": int(r["seed"]),
                             "metric": name, "value": value})
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "seed", "metric", "value"])


def t_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-based confidence interval of a mean of n seeds; (NaN, NaN) for fewer than two."""
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def aggregate(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1), n and the t-based 95% CI over seeds per (dataset, profile, method,
    metric), with the sorted tuple of seeds that went in."""
    keys = [*GROUP_KEYS, "metric"]
    columns = [*keys, "mean", "std", "n", "ci_low", "ci_high", "seeds"]
    if long.empty:
        return pd.DataFrame(columns=columns)
    grouped = long.groupby(keys, sort=True)
    out = grouped["value"].agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    seeds = grouped["seed"].agg(lambda s: tuple(sorted(int(x) for x in s))).reset_index(drop=True)
    out["seeds"] = seeds.to_numpy()
    bounds = [t_interval(m, sd, n) for m, sd, n in zip(out["mean"], out["std"], out["n"])]
    out["ci_low"] = [b[0] for b in bounds]
    out["ci_high"] = [b[1] for b in bounds]
    return out[columns]


def seed_cmc(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], np.ndarray]:
    """(dataset, profile, row) -> the finished seeds' CMC curves, one row per seed (cut to the
    shortest curve among them), fractions."""
    curves: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for r in records:
        cmc = (r.get("metrics") or {}).get("cmc") if r.get("status") == FINISHED else None
        if isinstance(cmc, list) and cmc:
            key = (r["dataset"], r["profile"], r.get(ROW, r["method"]))
            curves.setdefault(key, []).append(np.asarray(cmc, dtype=float))
    stacks = {}
    for key, group in curves.items():
        depth = min(len(c) for c in group)
        stacks[key] = np.stack([c[:depth] for c in group])
    return stacks


def pseudo_label_history(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long frame of per-epoch pseudo-label quality from the records' history: dataset, profile,
    method, seed, epoch, precision, recall, fscore, num_clusters (NaN where a record has none)."""
    fields = ("precision", "recall", "fscore", "num_clusters")
    rows = []
    for r in records:
        if r.get("status") != FINISHED:
            continue
        for row in r.get("history") or []:
            quality = row.get("pseudo_labels") if isinstance(row, Mapping) else None
            if not isinstance(quality, Mapping) or "epoch" not in row:
                continue
            rows.append({"dataset": r["dataset"], "profile": r["profile"],
                         "method": r.get(ROW, r["method"]), "seed": int(r["seed"]),
                         "epoch": int(row["epoch"]),
                         **{f: _scalar(quality.get(f)) for f in fields}})
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "seed", "epoch", *fields])


def metrics_for_kind(kind: str | None) -> tuple[str, ...]:
    """The table columns of a dataset kind, in the order papers print them."""
    return table_order(kind)

