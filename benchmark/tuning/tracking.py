"""MLflow for sweeps: one parent run per study, one nested run per trial.

A tracking failure never fails a trial: the study (Optuna storage) is the source of truth, MLflow is
the place to look at it. Every call is retried briefly (two workers may write a local SQLite store
at the same moment) and then given up with a warning.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from benchmark.engine.tracking import flatten, quiet_mlflow

EXPERIMENT = "benchmark-sweeps"
PARENT_ATTR = "mlflow_parent_run_id"
TRIAL_ATTR = "mlflow_run_id"
T = TypeVar("T")


class SweepTracker:
    """Parent and nested MLflow runs of one study; disabled (all calls no-ops) when `uri` is None."""

    def __init__(self, uri: str | None, artifact_location: str | None = None) -> None:
        self.uri = uri
        self.artifact_location = artifact_location
        self._client: Any = None
        self._experiment_id: str | None = None
        self.failed = False

    # -- plumbing -----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], attempts: int = 4) -> T | None:
        if self.uri is None or self.failed:
            return None
        for attempt in range(attempts):
            try:
                return fn()
            except Exception as exc:  # store locked, server down, ...
                if attempt == attempts - 1:
                    print(f"warning: MLflow ({self.uri}) {what} failed: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}; the sweep goes on without it",
                          file=sys.stderr)
                    self.failed = True
                    return None
                time.sleep(0.3 * 2**attempt)
        return None

    @property
    def client(self) -> Any:
        if self._client is None:
            quiet_mlflow(self.uri or "")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(EXPERIMENT)
            self._experiment_id = (
                found.experiment_id if found is not None
                else self.client.create_experiment(EXPERIMENT,
                                                   artifact_location=self.artifact_location)
            )
        return self._experiment_id

    # -- runs ---------------------------------------------------------------------------------------
    def parent(self, study: Any, description: Mapping[str, Any]) -> str | None:
        """The study's run: found through the study's user attribute, made by the first worker."""
        existing = study.user_attrs.get(PARENT_ATTR)
        if existing:
            return existing

        def make() -> str:
            run = self.client.create_run(
                self._experiment(), run_name=f"sweep {study.study_name}",
                tags={"benchmark.kind": "sweep", "benchmark.study": study.study_name},
            )
            params = flatten(dict(description))
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run.info.run_id, params=items[i : i + 100])
            return run.info.run_id

        run_id = self._call("creating the study's run", make)
        if run_id:
            study.set_user_attr(PARENT_ATTR, run_id)
        return run_id

    def start_trial(self, parent: str | None, number: int, params: Mapping[str, Any]) -> str | None:
        if parent is None:
            return None

        def make() -> str:
            from mlflow.entities import Param

            run = self.client.create_run(
                self._experiment(), run_name=f"trial {number}",
                tags={"mlflow.parentRunId": parent, "benchmark.kind": "trial",
                      "benchmark.trial": str(number)},
            )
            items = [Param(k, v) for k, v in flatten(dict(params)).items()]
            if items:
                self.client.log_batch(run.info.run_id, params=items[:100])
            return run.info.run_id

        return self._call(f"starting trial {number}'s run", make)

    def metric(self, run_id: str | None, key: str, value: float, step: int = 0) -> None:
        if run_id is not None:
            self._call(f"logging {key}", lambda: self.client.log_metric(run_id, key, value,
                                                                       step=step))

    def end(self, run_id: str | None, state: str, tags: Mapping[str, str] | None = None) -> None:
        """Close a run; `state` is the Optuna state (COMPLETE, PRUNED, FAIL)."""
        if run_id is None:
            return
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")

        def close() -> None:
            self.client.set_tag(run_id, "optuna.state", state)
            for k, v in (tags or {}).items():
                self.client.set_tag(run_id, k, v[:5000])
            self.client.set_terminated(run_id, status=status)

        self._call("closing a run", close)

    def close_orphans(self, trials: list[Any]) -> None:
        """Runs of trials that failed because their worker died (heartbeat) are still RUNNING in
        MLflow: mark them FAILED."""
        for t in trials:
            run_id = t.user_attrs.get(TRIAL_ATTR)
            if t.state.name != "FAIL" or not run_id:
                continue
            info = self._call("reading a run", lambda: self.client.get_run(run_id).info)
            if info is not None and info.status == "RUNNING":
                self.end(run_id, "FAIL", {"benchmark.error": "worker stopped (heartbeat expired)"})
