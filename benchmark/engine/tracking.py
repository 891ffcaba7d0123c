"""MLflow tracking of finished (and failed) cells, which never costs a run its result.

The result record on disk is the source of truth; MLflow is a view of it. So a cell is logged to
MLflow from its record after the record is written: one MLflow run per cell holding the flattened
resolved config and profile as params, tags (method, dataset, seed, profile, commit, ...), the
per-epoch history as metrics with step = epoch, the final metrics, and the record, config and plots
as artifacts. Logging is retried a few times with a short backoff; if it still fails (server down),
the failure is written into the record's `tracking` block, reported on stderr, and a replay file
`tracking-pending.json` beside the record lets `python -m benchmark run --replay-tracking` push it
later (re-running a finished cell's command also retries it). A replay first deletes any run that a
half-finished earlier attempt left for the same record, so each cell stays one run.

Default store: SQLite inside the results folder (`sqlite:///<out>/mlflow.db`, artifacts in
`<out>/mlartifacts`); `--tracking-uri` or MLFLOW_TRACKING_URI point elsewhere. MLflow's usage
telemetry is switched off (MLFLOW_DISABLE_TELEMETRY) unless the user sets it: nothing leaves the
machine but what goes to the tracking server the user named.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmark import metrics as metric_names
from benchmark.engine import failpoints
from benchmark.engine.records import (
    FINISHED,
    file_lock,
    jsonable,
    now,
    read_record,
    record_path,
    write_record,
)

PENDING_NAME = "tracking-pending.json"
EXPERIMENT = "benchmark"
FINAL_METRICS = metric_names.ALL
_PARAM_VALUE_LIMIT = 6000
_BATCH = 100  # MLflow accepts at most 100 params (and 1000 entries in all) per log_batch call


def resolve_tracking_uri(explicit: str | None, out: str | os.PathLike[str]) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else the SQLite store in the results folder."""
    if explicit:
        return explicit
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def is_remote_uri(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def quiet_mlflow(uri: str) -> None:
    """Settings made before MLflow is imported (each only where the user has not set it):
    MLflow's own HTTP retries default to minutes, and the harness does its own short retries;
    no usage telemetry leaves the machine; INFO logs (database migrations) stay out of the way."""
    if is_remote_uri(uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys; values as MLflow param strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(jsonable(value)) if not isinstance(value, str) else value
            flat[name] = text[:_PARAM_VALUE_LIMIT]
    return flat


def record_params(record: Mapping[str, Any]) -> dict[str, str]:
    params = flatten(record.get("config") or {})
    params.update(flatten(record.get("profile_settings") or {}, "profile."))
    return params


def record_tags(record: Mapping[str, Any]) -> dict[str, str]:
    env = record.get("environment") or {}
    facts = record.get("dataset_facts") or {}
    tags = {
        "method": record["method"],
        "dataset": record["dataset"],
        "seed": str(record["seed"]),
        "profile": record["profile"],
        "commit": str(env.get("commit")),
        "dirty": str(env.get("dirty")),
        "status": record["status"],
        "synthetic": str(facts.get("synthetic", False)),
        "withdrawn": str(facts.get("withdrawn", False)),
        "uses_camera_ids": str(record.get("uses_camera_ids")),
        "benchmark.record_id": record["record_id"],
        "mlflow.runName": f"{record['method']}/{record['dataset']}/{record['profile']}/seed{record['seed']}",
    }
    if env.get("device"):
        tags["device"] = str(env["device"])
    if record.get("config_hash"):  # what exactly ran (benchmark.engine.run_identity)
        tags["config_hash"] = str(record["config_hash"])
    init = record.get("init") or {}
    if init.get("key"):
        tags["init"] = str(init["key"])
        if init.get("sha256"):
            tags["init.sha256"] = str(init["sha256"])
    isolation = record.get("isolation")
    if isolation:  # integrity rule 1: whether `benchmark audit` showed the training isolated
        tags["isolation"] = "audited" if isolation.get("audited") else "not audited"
        if isolation.get("commit"):
            tags["isolation.commit"] = str(isolation["commit"])
    launch = record.get("launch") or {}
    if launch.get("launcher"):  # where it ran: local, or which Slurm job on which node
        tags["launcher"] = str(launch["launcher"])
        for key in ("job_id", "node"):
            if launch.get(key):
                tags[f"launch.{key}"] = str(launch[key])
    return tags


def record_metrics(record: Mapping[str, Any]) -> Iterator[tuple[str, float, int]]:
    """(key, value, step): history with step = epoch, final metrics at step 0, CMC with step = rank."""
    for entry in record.get("history") or []:
        epoch = int(entry["epoch"])
        for key, value in entry.items():
            if key == "epoch":
                continue
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                        yield f"{key}/{sub}", float(v), epoch
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                yield f"epoch/{key}", float(value), epoch
    metrics = record.get("metrics") or {}
    for key in FINAL_METRICS:
        if metrics.get(key) is not None:
            yield key, float(metrics[key]), 0
    for rank, value in enumerate((metrics.get("cmc") or [])[:50], start=1):
        if value is not None:
            yield "cmc", float(value), rank
    if record.get("wall_time_s") is not None:
        yield "wall_time_s", float(record["wall_time_s"]), 0


def plot_record(record: Mapping[str, Any], folder: Path) -> list[Path]:
    """Per-epoch curves and the CMC curve as PNG files; none when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    written = []
    series: dict[str, list[tuple[int, float]]] = {}
    for key, value, step in record_metrics({"history": record.get("history") or []}):
        series.setdefault(key, []).append((step, value))
    series = {k: v for k, v in series.items() if len({p[1] for p in v}) > 1}  # constants say nothing
    if series:
        fig, axes = plt.subplots(len(series), 1, figsize=(5, 1.8 * len(series)), squeeze=False)
        for ax, (key, points) in zip(axes[:, 0], sorted(series.items())):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
            ax.set_ylabel(key, fontsize=7)
        axes[-1, 0].set_xlabel("epoch")
        fig.tight_layout()
        path = folder / "history.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    cmc = (record.get("metrics") or {}).get("cmc")
    if cmc:
        ranks = min(len(cmc), 50)
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot(range(1, ranks + 1), cmc[:ranks], marker=".")
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate")
        ax.set_title(f"CMC {record['method']} on {record['dataset']}", fontsize=8)
        fig.tight_layout()
        path = folder / "cmc.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _experiment_id(client: Any, uri: str, out: Path) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps its artifacts beside it, never in the working directory.
    location = None if is_remote_uri(uri) else (out / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _log_once(record: dict[str, Any], cell: Path, uri: str, out: Path) -> tuple[str, str]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, uri, out)
    earlier = client.search_runs(
        [experiment_id], filter_string=f"tags.`benchmark.record_id` = '{record['record_id']}'"
    )
    for run in earlier:  # a half-logged earlier attempt of this same record
        client.delete_run(run.info.run_id)
    tags = record_tags(record)
    run = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"])
    run_id = run.info.run_id
    failpoints.reached("mlflow")
    stamp = int(time.time() * 1000)
    params = [Param(k, v) for k, v in record_params(record).items()]
    metrics = [Metric(k, v, stamp, step) for k, v, step in record_metrics(record)]
    for i in range(0, len(params), _BATCH):
        client.log_batch(run_id, params=params[i : i + _BATCH])
    for i in range(0, len(metrics), 10 * _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + 10 * _BATCH])
    logged = dict(record)
    logged["tracking"] = {**(record.get("tracking") or {}), "uri": uri, "run_id": run_id,
                          "experiment_id": experiment_id, "status": "logged"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_record(folder / "record.json", logged)
        (folder / "config.json").write_text(json.dumps(jsonable(record.get("config") or {}), indent=2))
        client.log_artifact(run_id, str(folder / "record.json"))
        client.log_artifact(run_id, str(folder / "config.json"))
        try:
            plots = plot_record(record, folder)
        except Exception as exc:  # a plot is never worth a lost run
            print(f"warning: plots for {cell} not drawn: {exc}", file=sys.stderr)
            plots = []
        for plot in plots:
            client.log_artifact(run_id, str(plot), artifact_path="plots")
    client.set_terminated(run_id, status="FINISHED" if record["status"] == FINISHED else "FAILED")
    return run_id, experiment_id


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of one SQLite store: Slurm jobs on several nodes, or local processes.

    SQLite's own locking is unreliable on network filesystems, and two processes creating the store
    at once race in its schema migration. A POSIX record lock (`lockf`, which NFS v4 and Lustre
    honour) on `<db>.lock` beside the store lets one writer in at a time. A tracking server needs
    none: it serialises its writers itself."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    with file_lock(path.with_name(path.name + ".lock")):
        yield


def log_cell(
    record: dict[str, Any],
    cell: Path,
    uri: str,
    out: Path,
    *,
    attempts: int = 3,
    backoff_s: float = 0.5,
) -> dict[str, Any]:
    """Log a written record to MLflow; return the record's new `tracking` block (and update the
    record file with it). Never raises for a tracking failure.

    Write-ahead: the pending marker is on disk before any MLflow call and is removed only after
    the run is fully logged and the record says so, so a kill at any point leaves either a
    complete MLflow run or a marker that a rerun or `--replay-tracking` pushes (a half-logged run
    of the same record is deleted first, so the run exists exactly once)."""
    quiet_mlflow(uri)
    write_pending(cell, uri, out)
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            with store_lock(uri):
                run_id, experiment_id = _log_once(record, cell, uri, out)
        except Exception as exc:  # any store / network / server failure
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            if attempt < attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            continue
        tracking = {"uri": uri, "run_id": run_id, "experiment_id": experiment_id,
                    "status": "logged", "attempts": attempt, "logged_at": now()}
        record["tracking"] = tracking
        write_record(record_path(cell), record)
        (cell / PENDING_NAME).unlink(missing_ok=True)
        return tracking
    tracking = {
        "uri": uri, "run_id": None, "status": f"failed: {error}", "attempts": attempts,
        "replay": PENDING_NAME,
    }
    record["tracking"] = tracking
    write_record(record_path(cell), record)
    write_pending(cell, uri, out, error=error)
    print(
        f"warning: MLflow tracking to {uri} failed after {attempts} attempts ({error}); the record "
        f"is saved at {record_path(cell)}; push it later with "
        f"`python -m benchmark run --replay-tracking --out {out}`",
        file=sys.stderr,
    )
    return tracking


def write_pending(cell: Path, uri: str, out: Path, error: str | None = None) -> None:
    """The marker saying this cell's record is not (fully) in MLflow yet."""
    marker = {"status": "pending", "uri": uri, "out": str(out), "written_at": now()}
    if error:
        marker.update(error=error, failed_at=now())
    write_record(cell / PENDING_NAME, marker)


def pending_cells(out: Path) -> list[Path]:
    return sorted(p.parent for p in Path(out).rglob(PENDING_NAME))


def replay_pending(out: Path, uri: str | None = None) -> list[dict[str, Any]]:
    """Push every record under `out` whose tracking failed or was cut off; `uri` (else
    MLFLOW_TRACKING_URI) overrides the one the marker names."""
    results = []
    for cell in pending_cells(out):
        pending = read_pending(cell)
        target = (uri or os.environ.get("MLFLOW_TRACKING_URI") or pending.get("uri")
                  or resolve_tracking_uri(None, out))
        record = read_record(record_path(cell))
        results.append({"cell": str(cell), **log_cell(record, cell, target, Path(out))})
    return results


def read_pending(cell: Path) -> dict[str, Any]:
    try:
        return json.loads((cell / PENDING_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
