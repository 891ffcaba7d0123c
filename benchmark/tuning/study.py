"""Optuna sweeps: a TPE study per (method, dataset, profile, seed), tuned on a carved validation split.

Why it is built this way:
- Tuning never sees the test split (`benchmark.tuning.validation`); every trial trains with the same
  seed, so trials differ by their parameters only.
- Workers are processes, never threads: each trial seeds torch's global RNGs, which threads would
  share. `--jobs K` starts K local worker processes on one study; the same command started on other
  machines with a shared PostgreSQL `--storage` joins the same study.
- A killed worker's trial is found by its stopped heartbeat, marked FAIL and retried a bounded number
  of times (Optuna's RetryHeartbeatStaleTrialCallback). A worker keeps starting trials while the study has
  fewer than `--trials` counted trials (a retry replaces the trial it retries), and before leaving
  waits until no trial is RUNNING, so that none is left RUNNING when the last worker ends.
- A trial that raises is recorded as FAIL with its error, and the study goes on.
- A parameter fixed by `--params` is not searched, and `--tune` narrows the search to named
  parameters: the rest keep their resolved values, so a study can settle a few settings without
  moving the others.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

try:  # the name since Optuna 4.9
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryStale
except ImportError:  # pragma: no cover - older Optuna
    from optuna.storages import RetryFailedTrialCallback as RetryStale
from optuna.trial import TrialState

from benchmark.data.decoding import require_readable
from benchmark.data.registry import load_dataset
from benchmark.data.types import ReidDataset
from benchmark.engine.contract import MethodAdapter
from benchmark.engine.method_registry import get_method
from benchmark.engine.profiles import get_profile
from benchmark.engine.records import jsonable, write_record
from benchmark.engine.runner import TUNED_ON_KEY, resolve_device
from benchmark.engine.seeding import SEED_LIMIT, check_seed
from benchmark.engine.selection import validation_metric
from benchmark.engine.slurm import RequeueCapped, SlurmOptions, executor, require_slurm, wait_for
from benchmark.engine.tracking import is_remote_uri, resolve_tracking_uri
from benchmark.tuning.objective import Pruned, run_trial
from benchmark.tuning.tracking import TRIAL_ATTR, SweepTracker
from benchmark.tuning.validation import DEFAULT_FRACTION, carve_validation

SWEEPS = "sweeps"
BEST_PARAMS = "best_params.json"
SUMMARY = "summary.json"
TRIALS_CSV = "trials.csv"
FINAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs (picklable: workers are spawned processes)."""

    method: str
    dataset: str
    profile: str
    trials: int
    out: str = "results"
    seed: int = 0
    storage: str | None = None
    study_name: str | None = None
    device: str | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    fraction: float = DEFAULT_FRACTION
    base_params: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int = 1
    root: str | None = None
    worker_index: int = 0  # seeds this process's sampler; workers of one study need different ones
    tune: tuple[str, ...] | None = None  # search only these names of the search space (None: all)
    prune: bool = True  # MedianPruner on the per-epoch validation metric
    grid: bool = False  # every combination of the tuned (categorical) choices, not TPE

    @property
    def name(self) -> str:
        key = get_method(self.method).key
        return self.study_name or f"{key}-{self.dataset}-{self.profile}-seed{self.seed}"

    @property
    def folder(self) -> Path:
        return Path(self.out) / SWEEPS / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.out) / SWEEPS / 'optuna.db').resolve()}"


_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_study_name(name: str) -> None:
    """A study name is also a folder under <out>/sweeps: letters, digits, '.', '_' and '-' only
    (no path separators, no leading dot), so that it cannot write outside --out."""
    if not _STUDY_NAME.match(name) or ".." in name:
        raise ValueError(f"--study-name {name!r}: use letters, digits, '.', '_' and '-' only "
                         "(at most 128, not starting with '.' or '-', no '..')")


def public_url(url: str) -> str:
    """The storage URL without its password, for records and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def make_storage(spec: SweepSpec) -> RDBStorage:
    url = spec.storage_url
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver this installs
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period,
            heartbeat_stale_trial_callback=RetryStale(max_retry=spec.max_retry),
        )


def _identity(spec: SweepSpec, metric: str) -> dict[str, Any]:
    """What a study is for; a worker whose command differs refuses to join."""
    return {"method": get_method(spec.method).key, "dataset": spec.dataset,
            "profile": spec.profile, "seed": spec.seed, "objective": f"validation {metric}",
            "validation_fraction": spec.fraction, "base_params": jsonable(spec.base_params),
            "tuned": sorted(tuned_names(get_method(spec.method), spec)),
            **({"sampler": "grid"} if spec.grid else {})}


def open_study(spec: SweepSpec, metric: str, worker_index: int = 0) -> optuna.Study:
    storage = make_storage(spec)
    # constant_liar: a running trial counts as a bad result, so parallel workers spread out
    sampler: optuna.samplers.BaseSampler
    if spec.grid:  # settles a few discrete settings: each combination once, in a seeded order
        sampler = optuna.samplers.GridSampler(grid_space(get_method(spec.method), spec),
                                              seed=spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=(spec.seed * 1000 + worker_index) % SEED_LIMIT,
                                             constant_liar=True)
    # Without pruning when trials' schedules differ in length: epoch e is then not the same stage.
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if spec.prune
              else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    identity = _identity(spec, metric)
    found = study.user_attrs.get("identity")
    if found is None:
        study.set_user_attr("identity", identity)
    elif found != identity:
        raise ValueError(
            f"study {spec.name!r} in {public_url(spec.storage_url)} was made for {found}; this "
            f"command asks for {identity}: use another --study-name"
        )
    return study


class _NamesTrial:
    """Answers every suggestion with its first allowed value and records the names asked for
    (and the choices of categorical ones)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.choices: dict[str, list[Any]] = {}

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        self.names.append(name)
        return low

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.names.append(name)
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.names.append(name)
        self.choices[name] = list(choices)
        return next(iter(choices))


def search_space_names(cls: type[MethodAdapter]) -> list[str]:
    """The parameter names a method's search space suggests, in its order."""
    trial = _NamesTrial()
    cls.search_space(trial)
    return trial.names


def grid_space(cls: type[MethodAdapter], spec: SweepSpec) -> dict[str, list[Any]]:
    """The choices of every tuned name, for `--grid`; ValueError when one is not categorical."""
    trial = _NamesTrial()
    cls.search_space(trial)
    names = sorted(tuned_names(cls, spec))
    continuous = [n for n in names if n not in trial.choices]
    if continuous:
        raise ValueError(f"--grid needs categorical parameters; {', '.join(continuous)} of "
                         f"{cls.key} are not (name the categorical ones with --tune)")
    return {n: trial.choices[n] for n in names}


def grid_size(cls: type[MethodAdapter], spec: SweepSpec) -> int:
    size = 1
    for choices in grid_space(cls, spec).values():
        size *= len(choices)
    return size


def tuned_names(cls: type[MethodAdapter], spec: SweepSpec) -> set[str]:
    """The names a study searches: the search space's, narrowed by `--tune`, less fixed params."""
    names = set(search_space_names(cls))
    if spec.tune is not None:
        names &= set(spec.tune)
    return names - set(spec.base_params)


def check_search_space(cls: type[MethodAdapter], spec: SweepSpec | None = None) -> None:
    """ValueError when there is nothing to tune, or `--tune` names what the space lacks."""
    names = search_space_names(cls)
    if not names:
        raise ValueError(f"method {cls.key} declares no search space: nothing to tune")
    if spec is None:
        return
    unknown = sorted(set(spec.tune or ()) - set(names))
    if unknown:
        raise ValueError(f"--tune names {', '.join(unknown)}, not in the search space of "
                         f"{cls.key} ({', '.join(names)})")
    if not tuned_names(cls, spec):
        raise ValueError(f"nothing left to tune: every searched parameter of {cls.key} "
                         f"({', '.join(spec.tune or names)}) is fixed by --params")
    if spec.grid and spec.trials > grid_size(cls, spec):
        raise ValueError(f"--grid has {grid_size(cls, spec)} combinations; --trials "
                         f"{spec.trials} would repeat some")


_NOT_TUNED = object()


class _NarrowedTrial:
    """A trial whose suggestions outside `names` are not made (they return a marker instead)."""

    def __init__(self, trial: optuna.Trial, names: set[str]) -> None:
        self._trial, self._names = trial, names

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._trial, attr)
        if not attr.startswith("suggest_"):
            return value

        def suggest(name: str, *args: Any, **kwargs: Any) -> Any:
            return value(name, *args, **kwargs) if name in self._names else _NOT_TUNED

        return suggest


def suggest_overrides(cls: type[MethodAdapter], trial: optuna.Trial, names: set[str]) -> dict:
    """The search space's overrides for the names tuned; the others are left to the config."""
    space = cls.search_space(_NarrowedTrial(trial, names))
    return {k: v for k, v in space.items() if v is not _NOT_TUNED}


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        numbers = [RetryStale.retried_trial_number(t) for t in trials]
    return {n for n in numbers if n is not None}


def _counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that count towards `--trials`: all but WAITING ones and failures that were retried."""
    retried = _retried(trials)
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in retried)


class _Objective:
    def __init__(self, spec: SweepSpec, cls: type[MethodAdapter], split, tracker: SweepTracker,
                 parent: str | None, metric: str) -> None:
        self.spec, self.cls, self.split = spec, cls, split
        self.tracker, self.parent, self.metric = tracker, parent, metric
        self.profile = get_profile(spec.profile)
        self.device = resolve_device(spec.device)
        self.names = tuned_names(cls, spec)

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.spec
        # first: a retry of this trial repeats the point
        overrides = suggest_overrides(self.cls, trial, self.names)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {**spec.base_params, **overrides}
        trial.set_user_attr("config_overrides", jsonable(overrides))
        run_id = self.tracker.start_trial(self.parent, trial.number, params)
        if run_id:
            trial.set_user_attr(TRIAL_ATTR, run_id)
        key = f"validation_{self.metric}"

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            self.tracker.metric(run_id, key, value, epoch)
            return trial.should_prune()

        print(f"[{spec.name}] trial {trial.number}: {overrides}", file=sys.stderr, flush=True)
        try:
            outcome = run_trial(
                self.cls, params, self.split, dataset=spec.dataset, profile=self.profile,
                seed=spec.seed, device=self.device,
                workdir=spec.folder / "trials" / f"{trial.number}-{os.getpid()}",
                report=report, log=None,
            )
        except Pruned as exc:
            self.tracker.end(run_id, "PRUNED")
            print(f"[{spec.name}] trial {trial.number}: pruned after epoch {exc.epoch}",
                  file=sys.stderr, flush=True)
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", error[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            self.tracker.end(run_id, "FAIL", {"benchmark.error": error})
            print(f"[{spec.name}] trial {trial.number}: FAILED: {error}", file=sys.stderr,
                  flush=True)
            raise
        shown = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
        trial.set_user_attr("validation_metrics", shown)
        for k, v in shown.items():
            self.tracker.metric(run_id, f"validation_{k}", v, len(outcome.epoch_values))
        self.tracker.end(run_id, "COMPLETE")
        print(f"[{spec.name}] trial {trial.number}: validation {self.metric} {outcome.value:.4f}",
              file=sys.stderr, flush=True)
        return outcome.value


def _prepare(spec: SweepSpec):
    cls = get_method(spec.method)
    check_search_space(cls, spec)
    profile = get_profile(spec.profile)
    cls(**spec.base_params).resolve_config(spec.dataset, profile.name)  # bad base params: fail now
    data = load_dataset(spec.dataset, spec.root)
    if data.kind not in cls.tasks:
        raise ValueError(f"method {cls.key} supports {', '.join(cls.tasks)}; dataset "
                         f"{spec.dataset} is {data.kind}")
    if isinstance(data, ReidDataset):  # the trials use the training split only
        require_readable(data.train.paths, f"{spec.dataset}'s training split")
    split = carve_validation(data, seed=spec.seed, fraction=spec.fraction)
    del data  # the test split goes no further
    return cls, split


def _tracker(spec: SweepSpec) -> SweepTracker:
    if not spec.tracking:
        return SweepTracker(None)
    uri = resolve_tracking_uri(spec.tracking_uri, spec.out)
    location = None if is_remote_uri(uri) else (Path(spec.out) / "mlartifacts").resolve().as_uri()
    return SweepTracker(uri, location)


def _description(spec: SweepSpec, metric: str, split) -> dict[str, Any]:
    return {**_identity(spec, metric), "validation": split.description, "study": spec.name,
            "storage": public_url(spec.storage_url)}


def work(spec: SweepSpec, worker_index: int | None = None) -> None:
    """One worker: run trials until the study holds `spec.trials` counted trials, then wait until
    no trial is RUNNING (failing stale ones), so that every trial ends in a final state."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker_index = spec.worker_index if worker_index is None else worker_index
    cls, split = _prepare(spec)
    metric = validation_metric(split)
    study = open_study(spec, metric, worker_index)
    tracker = _tracker(spec)
    parent = tracker.parent(study, _description(spec, metric, split))
    objective = _Objective(spec, cls, split, tracker, parent, metric)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or _counted(trials) < spec.trials:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            continue
        if not any(t.state == TrialState.RUNNING for t in trials):
            break
        time.sleep(max(1.0, spec.heartbeat_interval / 2))
    tracker.close_orphans(study.get_trials(deepcopy=False))


def _worker_main(spec: SweepSpec, index: int) -> None:
    try:
        work(spec, index)
    except Exception as exc:
        print(f"sweep worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def sweep(spec: SweepSpec, jobs: int = 1) -> dict[str, Any]:
    """Run the study with `jobs` local worker processes (1: in this process); write the outputs."""
    if spec.trials < 1 or jobs < 1:
        raise ValueError("--trials and --jobs must be at least 1")
    check_seed(spec.seed)
    check_study_name(spec.name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cls, split = _prepare(spec)  # bad input fails here, before any worker starts
    metric = validation_metric(split)
    study = open_study(spec, metric, spec.worker_index)
    # The study's MLflow run is made here, before any worker starts: workers creating a new MLflow
    # store at the same moment race in its schema migration.
    tracker = _tracker(spec)
    parent = tracker.parent(study, _description(spec, metric, split))
    del cls, split
    if jobs == 1:
        work(spec)
    else:
        context = multiprocessing.get_context("spawn")
        first = spec.worker_index * jobs
        workers = [context.Process(target=_worker_main, args=(spec, first + i),
                                   name=f"sweep-worker-{i}") for i in range(jobs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        codes = [w.exitcode for w in workers]
        if any(codes):
            print(f"warning: sweep workers exited with {codes}", file=sys.stderr)
    return _finish(spec, study, tracker, parent, metric)


def _finish(spec: SweepSpec, study: optuna.Study, tracker: SweepTracker, parent: Any,
            metric: str) -> dict[str, Any]:
    summary = write_outputs(spec, study)
    if summary["best"]:
        tracker.metric(parent, f"best_validation_{metric}", float(summary["best"]["value"]))
    for state, count in summary["trials"].items():
        tracker.metric(parent, f"trials_{state.lower()}", float(count))
    tracker.end(parent, "COMPLETE" if summary["best"] else "FAIL")  # this command's part is done
    return summary


class SweepWorkerJob(RequeueCapped):
    """One sweep worker as a Slurm job. A requeued worker simply joins the study again: the trial
    it was running stops sending heartbeats and is failed and retried by the usual rule."""

    def __init__(self, spec: SweepSpec, index: int, max_requeue: int) -> None:
        self.spec, self.index, self.max_requeue = spec, index, max_requeue

    def __call__(self) -> int:
        work(self.spec, self.index)
        return self.index


def sweep_on_slurm(spec: SweepSpec, workers: int, options: SlurmOptions, *, wait: bool = True,
                   poll_s: float = 10.0) -> dict[str, Any]:
    """Start `workers` worker jobs on one study; with `wait`, write the outputs once all have
    ended (as `sweep` does), else return the job ids at once."""
    if spec.trials < 1 or workers < 1:
        raise ValueError("--trials and --workers must be at least 1")
    if spec.storage_url.startswith("sqlite"):
        raise ValueError("--launcher slurm needs a shared --storage, e.g. postgresql://user@host/db: "
                         "every worker job opens the study from its own node, and SQLite on a "
                         "network filesystem does not lock reliably")
    require_slurm()
    check_seed(spec.seed)
    check_study_name(spec.name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cls, split = _prepare(spec)
    metric = validation_metric(split)
    study = open_study(spec, metric, spec.worker_index)
    tracker = _tracker(spec)
    parent = tracker.parent(study, _description(spec, metric, split))
    del cls, split
    ex = executor(spec.folder / "slurm", options, job_name=f"sweep-{spec.name}")
    first = spec.worker_index * workers
    with ex.batch():
        jobs = [ex.submit(SweepWorkerJob(spec, first + i, options.max_requeue))
                for i in range(workers)]
    job_ids = [str(job.job_id) for job in jobs]
    if not wait:
        return {"study": spec.name, "storage": public_url(spec.storage_url), "jobs": job_ids}
    wait_for(job_ids, lambda job_id, entry: None, poll_s=poll_s)  # the study holds the results
    summary = _finish(spec, study, tracker, parent, metric)
    summary["jobs"] = job_ids
    return summary


def write_outputs(spec: SweepSpec, study: optuna.Study) -> dict[str, Any]:
    """best_params.json (for `run --params`), trials.csv and summary.json in the study's folder."""
    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": spec.name,
        "storage": public_url(spec.storage_url),
        **study.user_attrs.get("identity", {}),
        "trials": {k: v for k, v in states.items() if v},
        "best": None,
        "best_params_file": None,
    }
    if complete:
        best = study.best_trial
        params = {**spec.base_params, **best.user_attrs.get("config_overrides", {})}
        # which hold-out chose them: a clustering run with these parameters does not score it
        tuned_on = {"study": spec.name, "dataset": spec.dataset, "profile": spec.profile,
                    "seed": spec.seed, "validation_fraction": spec.fraction,
                    "objective": study.user_attrs.get("identity", {}).get("objective")}
        write_record(folder / BEST_PARAMS, {**params, TUNED_ON_KEY: tuned_on})
        summary["best"] = {"trial": best.number, "value": best.value,
                           "validation_metrics": best.user_attrs.get("validation_metrics"),
                           "params": params}
        summary["best_params_file"] = str(folder / BEST_PARAMS)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs",
                                          "datetime_start", "datetime_complete"))
    tmp = folder / (TRIALS_CSV + ".tmp")
    frame.drop(columns=[c for c in frame.columns if c.endswith("traceback")]).to_csv(tmp, index=False)
    os.replace(tmp, folder / TRIALS_CSV)
    write_record(folder / SUMMARY, summary)
    return summary


def spec_from(args: Any, base_params: Mapping[str, Any] | None) -> SweepSpec:
    base_params = {k: v for k, v in (base_params or {}).items() if k != TUNED_ON_KEY}
    return SweepSpec(
        method=args.method, dataset=args.dataset, profile=args.profile, trials=args.trials,
        out=args.out, seed=args.seed, storage=args.storage, study_name=args.study_name,
        device=args.device, tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
        fraction=args.validation_fraction, base_params=dict(base_params or {}),
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        max_retry=args.max_retry, root=args.root, worker_index=args.worker_index,
        tune=tuple(n.strip() for n in args.tune.split(",") if n.strip()) if args.tune else None,
        prune=not args.no_prune,
        grid=bool(getattr(args, "grid", False)),
    )


