"""Runs cells (method x dataset x seed x profile): train on the unlabeled view, evaluate, record, track.

The harness owns everything around a method's `fit`: seeding, the unlabeled view (labels kept back in
`HiddenLabels`), checkpoints and resume (through `RunContext`), evaluation, the record and MLflow.
Pseudo-label quality is computed from labels the method can never reach: during training the
context's hook only stores each epoch's pseudo labels (in the sink, which holds no truth); the
harness scores them against the hidden labels after `fit` returns. A failed cell still writes a
record (status "failed", with the traceback), so a suite run goes on and shows what broke.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark import metrics as metric_names
from benchmark.data.cards import ProtocolCard, all_cards, get_card
from benchmark.data.decoding import require_readable
from benchmark.data.registry import is_present, load_dataset, locate_dataset
from benchmark.data.types import ClusteringDataset, Dataset, ReidDataset
from benchmark.data.unlabeled import (
    HiddenLabels,
    UnlabeledView,
    clustering_view,
    reid_view,
    with_labels,
)
from benchmark.engine.contract import (
    EpochHook,
    EpochMethod,
    MethodAdapter,
    MetricSink,
    RunContext,
    disk_is_full,
    run_epochs,
)
from benchmark.engine import distributed, failpoints
from benchmark.engine.audit_log import isolation_status
from benchmark.engine.evaluate import evaluate_encoder
from benchmark.engine.method_registry import get_method, method_names
from benchmark.engine.precision import describe_precision, resolve_precision
from benchmark.engine.profiles import Profile, get_profile
from benchmark.engine.records import (
    FAILED,
    FINISHED,
    SCHEMA_VERSION,
    cell_dir,
    check_writable,
    environment,
    jsonable,
    launch_facts,
    now,
    read_record,
    record_path,
    write_record,
)
from benchmark.engine.run_identity import (
    NO_NETWORK,
    RANDOM,
    config_hash,
    execution_identity,
    init_from_standin,
    init_from_weights_file,
    init_record,
    paper_config_diff,
)
from benchmark.engine.seeding import (
    check_seed,
    collect_nondeterministic_ops,
    cpu_threads,
    seed_everything,
    silent_nondeterministic_modules,
)
from benchmark.engine.selection import (
    FRACTION_KEY,
    SELECTED,
    BestOnValidation,
    selection_mode,
)
from benchmark.engine.tracking import (
    PENDING_NAME,
    log_cell,
    resolve_tracking_uri,
    write_pending,
)
from benchmark.tuning.validation import (
    DEFAULT_FRACTION,
    ValidationSplit,
    carve_validation,
    without_images,
)
from methods.common import faiss_index

CHECKPOINTS = "checkpoints"
PSEUDO_LABEL_PROTOCOL = (
    "per epoch, the pseudo labels the method reported, scored by the harness against the hidden "
    "training labels (benchmark.evaluation.pseudo_labels: pairwise precision / recall / F-score, "
    "expansion, NMI, ARI over clustered samples; outliers counted apart); diagnostics only"
)
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class HistorySink(MetricSink):
    """Per-epoch metrics and the pseudo labels the method reported; survives resume via `state`.

    Holds no ground truth: pseudo-label quality is added by the harness after training.
    """

    def __init__(self, prefix: str = "", log: Log | None = _stderr) -> None:
        self.history: dict[int, dict[str, Any]] = {}
        self.pseudo: dict[int, np.ndarray] = {}
        self.prefix = prefix
        self.log = log
        self.elapsed_before_s = 0.0  # training time of earlier, interrupted attempts
        self._start = time.perf_counter()

    def store_pseudo_labels(self, epoch: int, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"pseudo labels of epoch {epoch} must be a 1-D integer array, got "
                f"{labels.dtype} {labels.shape}"
            )
        self.pseudo[int(epoch)] = labels.astype(np.int64, copy=True)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.history[int(epoch)] = jsonable(dict(metrics))
        if self.log is not None:
            shown = " ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
            )
            self.log(f"{self.prefix}epoch {epoch}: {shown}")

    def elapsed_s(self) -> float:
        return self.elapsed_before_s + time.perf_counter() - self._start

    def state(self) -> dict[str, Any]:
        return {
            "history": {str(k): v for k, v in self.history.items()},
            "pseudo": {str(k): torch.from_numpy(v) for k, v in self.pseudo.items()},
            "elapsed_s": self.elapsed_s(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.history = {int(k): dict(v) for k, v in (state.get("history") or {}).items()}
        self.pseudo = {int(k): v.numpy().copy() for k, v in (state.get("pseudo") or {}).items()}
        self.elapsed_before_s = float(state.get("elapsed_s", 0.0))
        self._start = time.perf_counter()
        if self.log is not None and self.history:
            self.log(f"{self.prefix}resumed after epoch {max(self.history)}")

    def history_with_quality(self, truth: np.ndarray) -> list[dict[str, Any]]:
        """History rows in epoch order, each with its pseudo-label quality against `truth`."""
        from benchmark.evaluation.pseudo_labels import pseudo_label_quality

        rows = []
        for epoch in sorted(set(self.history) | set(self.pseudo)):
            row: dict[str, Any] = {"epoch": epoch, **self.history.get(epoch, {})}
            if epoch in self.pseudo:
                quality = pseudo_label_quality(self.pseudo[epoch], truth)
                # numbers per epoch; the definitions (strings) go once into the record's protocol
                row["pseudo_labels"] = jsonable(
                    {k: v for k, v in quality.items() if not isinstance(v, str)}
                )
            rows.append(row)
        return rows


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when available, else CPU; an explicit device must exist."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return dev


def build_view(
    dataset: Dataset, method: type[MethodAdapter], seed: int
) -> tuple[UnlabeledView, HiddenLabels]:
    """The training data as the method may see it: unlabeled, except for an adapter that declares
    `uses_labels` (the supervised ceiling), which alone gets the labels attached."""
    if isinstance(dataset, ReidDataset):
        view, hidden = reid_view(dataset.train, uses_camera_ids=method.uses_camera_ids, seed=seed)
    elif isinstance(dataset, ClusteringDataset):
        view, hidden = clustering_view(dataset, seed=seed)
    else:
        raise TypeError(f"unknown dataset type {type(dataset).__name__}")
    if method.uses_labels:
        view = with_labels(view, hidden.labels)
    return view, hidden


def make_context(
    *, device: torch.device, seed: int, profile: Profile, dataset: str, task: str,
    checkpoint_dir: Path, sink: HistorySink, weights: Path | None = None,
    random_init: bool = False, precision: str = "fp32",
) -> RunContext:
    """The run context of a cell; its pseudo-label hook stores labels in the sink, nothing more."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return RunContext(
        device=device, seed=seed, profile=profile, dataset=dataset, task=task,
        checkpoint_dir=checkpoint_dir, rng=np.random.default_rng(seed), torch_generator=generator,
        sink=sink, pseudo_label_hook=sink.store_pseudo_labels, weights=weights,
        random_init=random_init, precision=precision,
    )


@dataclass
class Trained:
    encoder: nn.Module
    history: list[dict[str, Any]]  # per epoch: the method's metrics and pseudo-label quality
    nondeterministic_ops: list[str]  # ops torch warned about while training
    pseudo_labels: dict[int, np.ndarray] = field(default_factory=dict)  # as reported, per epoch
    init: dict[str, Any] | None = None  # the checkpoint the method said it started from, if any


def fit_cell(
    adapter: MethodAdapter,
    view: UnlabeledView,
    hidden: HiddenLabels,
    config: Mapping[str, Any],
    ctx: RunContext,
    *,
    before_checkpoint: Sequence[EpochHook] = (),
    after_checkpoint: Sequence[EpochHook] = (),
) -> Trained:
    """The training half of a cell: the method on the view (under the collector of ops without a
    deterministic implementation), then the pseudo labels it reported scored against `hidden`.

    An `EpochMethod` is driven by the harness's `run_epochs`, with the harness's scorers as its
    hooks (model selection before each checkpoint, pruning after it); any other adapter's `fit`
    runs whole. Neither `hidden` nor the hooks are reachable from what the adapter receives;
    scrambling them changes the diagnostics and scores only, never the trained encoder (`benchmark
    audit` and tests/test_adapter_conformance.py check this for every adapter)."""
    if not isinstance(ctx.sink, HistorySink):
        raise TypeError("fit_cell needs a context made by make_context (a HistorySink)")
    with collect_nondeterministic_ops() as warned:
        if isinstance(adapter, EpochMethod):
            encoder = run_epochs(adapter, view, dict(config), ctx,
                                 before_checkpoint=before_checkpoint,
                                 after_checkpoint=after_checkpoint)
        else:
            encoder = adapter.fit(view, dict(config), ctx)
    if not isinstance(encoder, nn.Module):
        raise TypeError(
            f"{adapter.key}: fit returned {type(encoder).__name__}, not a torch.nn.Module encoder"
        )
    return Trained(encoder, ctx.sink.history_with_quality(hidden.labels), list(warned),
                   dict(ctx.sink.pseudo), ctx.reported_init)


@dataclass(frozen=True)
class TrainingPlan:
    """The data a cell trains and selects on, decided before training starts.

    `train` feeds the method (a re-ID dataset's training split, a clustering set's images);
    `selection` is the hold-out carved from the training data that a validation-selected model is
    scored on (None when the last epoch's model is reported). The audit substitutes labels, file
    names and the test split in a plan and trains it again (`benchmark.engine.audit`)."""

    train: Dataset
    selection: ValidationSplit | None = None


def plan_training(data: Dataset, config: Mapping[str, Any], seed: int) -> TrainingPlan:
    if selection_mode(config) != "validation":
        return TrainingPlan(train=data)
    # the method's own model selection: on a hold-out of the training split only
    split = carve_validation(data, seed=seed,
                             fraction=float(config.get(FRACTION_KEY, DEFAULT_FRACTION)))
    return TrainingPlan(train=split.train, selection=split)


def train_cell(
    adapter: MethodAdapter,
    plan: TrainingPlan,
    config: Mapping[str, Any],
    *,
    seed: int,
    profile: Profile,
    device: torch.device,
    dataset: str,
    checkpoint_dir: Path,
    sink: HistorySink,
    weights: Path | None = None,
    random_init: bool = False,
    precision: str = "fp32",
) -> tuple[Trained, BestOnValidation | None]:
    """Train `adapter` on `plan`: its view, its context, and the harness's selector (scoring each
    epoch on `plan.selection`, kept in `checkpoint_dir`) as a hook of the epoch loop."""
    selector = None
    if plan.selection is not None:
        selector = BestOnValidation(plan.selection, profile, device, seed,
                                    checkpoint_dir / SELECTED)
    view, hidden = build_view(plan.train, type(adapter), seed)
    ctx = make_context(device=device, seed=seed, profile=profile, dataset=dataset,
                       task=plan.train.kind, checkpoint_dir=checkpoint_dir, sink=sink,
                       weights=weights, random_init=random_init, precision=precision)
    trained = fit_cell(adapter, view, hidden, config, ctx,
                       before_checkpoint=[selector] if selector is not None else ())
    return trained, selector


INIT_CHOICES = ("profile", RANDOM)  # `run --init`: what the profile gives, or random weights
TUNED_ON_KEY = "_tuned_on"  # in a sweep's best_params.json: the study whose hold-out chose them


def scored_part(
    data: Dataset, plan: TrainingPlan, tuned_on: Mapping[str, Any] | None, dataset: str
) -> tuple[Dataset, dict[str, Any]]:
    """What the cell's reported metrics are computed on, and the record's account of it.

    Integrity rule 1: no image whose label selected or tuned the model counts in a reported number.
    Re-ID hold-outs are training identities, which the test protocol never scores. A clustering set
    is learned and scored on the same images, so its scored part is every image outside the
    validation hold-out that selected the model and the sweep hold-out that tuned its parameters
    (`run --params best_params.json` carries the study's seed and fraction)."""
    if not isinstance(data, ClusteringDataset):
        return data, {"scored_images": "the test split (query x gallery); validation and sweep "
                                       "hold-outs are training identities, never scored"}
    excluded: list[np.ndarray] = []
    reasons = []
    if plan.selection is not None:
        excluded.append(plan.selection.held_out)
        d = plan.selection.description
        reasons.append(f"{plan.selection.held_out.size} that selected the model (validation "
                       f"hold-out, seed {d.get('seed')}, {d.get('fraction')})")
    if tuned_on and tuned_on.get("dataset") == dataset:
        study = carve_validation(data, seed=int(tuned_on["seed"]),
                                 fraction=float(tuned_on["validation_fraction"]))
        excluded.append(study.held_out)
        reasons.append(f"{study.held_out.size} that tuned its parameters (sweep "
                       f"{tuned_on.get('study')!r} hold-out, seed {tuned_on['seed']}, "
                       f"{tuned_on['validation_fraction']})")
    total = len(data.labels)
    if not excluded:
        return data, {"scored_images": f"all {total} images (train and test together)",
                      "scored_count": total}
    held = np.unique(np.concatenate(excluded))
    scored = without_images(data, held, "images outside the hold-outs")
    return scored, {
        "scored_images": f"{total - held.size} of {total} images: every image except the "
                         + " and the ".join(reasons),
        "scored_count": int(total - held.size),
        "excluded_count": int(held.size),
    }


def _dataset_facts(card: ProtocolCard, dataset: Dataset) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "name": card.name, "title": card.title, "kind": card.kind, "embedded": card.embedded,
        "synthetic": card.synthetic, "withdrawn": card.withdrawn, "evaluation": card.evaluation,
    }
    if isinstance(dataset, ReidDataset):
        facts.update(
            train_images=dataset.train.num_images, train_identities=dataset.train.num_identities,
            query_images=dataset.query.num_images, gallery_images=dataset.gallery.num_images,
        )
    else:
        facts.update(images=len(dataset.images), classes=int(dataset.num_classes),
                     image_shape=list(dataset.images.shape[1:]))
    return facts


def _nondeterministic(
    method: type[MethodAdapter], device: torch.device, warned: list[str], encoder: nn.Module | None
) -> list[str]:
    ops = list(warned)
    if device.type == "cuda":
        extra = list(getattr(method, "nondeterministic_cuda_ops", ()))
        if encoder is not None:
            extra += silent_nondeterministic_modules(encoder)
        ops += [op for op in extra if op not in ops]
    return ops


def method_ref(method: str | type[MethodAdapter]) -> tuple[type[MethodAdapter], str]:
    if isinstance(method, str):
        return get_method(method), method
    return method, f"{method.__module__}:{method.__qualname__}"


def run_cell(
    method: str | type[MethodAdapter],
    dataset: str,
    seed: int = 0,
    profile: str = "quick",
    out: str | Path = "results",
    device: str | torch.device | None = None,
    tracking_uri: str | None = None,
    params: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    force: bool = False,
    *,
    init: str = "profile",
    root: str | Path | None = None,
    tracking: bool = True,
    log: Log | None = _stderr,
    log_now: bool = True,
    precision: str | None = None,
) -> dict[str, Any]:
    """Run one cell and return its record (the existing one, marked `"skipped": True`, when the
    cell already finished and `force` is not set).

    Under torchrun every rank calls this with the same arguments: all train and evaluate together
    (`benchmark.engine.distributed`), rank 0 alone writes the record and logs to MLflow.

    Raises for bad input (unknown method, dataset or parameter, a method that does not support the
    dataset's task, a dataset that is not present); a failure while training or evaluating is
    written to the record as status "failed" instead.
    """
    cls, ref = method_ref(method)
    prof = get_profile(profile)
    card = get_card(dataset)
    check_seed(seed)
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {', '.join(INIT_CHOICES)}, got {init!r}")
    random_init = init == RANDOM
    if card.kind not in cls.tasks:
        raise ValueError(
            f"method {cls.key} supports {', '.join(cls.tasks)}; dataset {dataset} is {card.kind}"
        )
    params = dict(params or {})
    tuned_on = params.pop(TUNED_ON_KEY, None)
    if tuned_on is not None and not (
        isinstance(tuned_on, Mapping) and isinstance(tuned_on.get("seed"), int)
        and isinstance(tuned_on.get("validation_fraction"), (int, float))
    ):
        raise ValueError(f"parameter {TUNED_ON_KEY} must be a sweep's account of its hold-out "
                         f"(seed, validation_fraction, as best_params.json writes it), got "
                         f"{tuned_on!r}")
    adapter = cls(**params)
    config = adapter.resolve_config(dataset, prof.name)
    selection_mode(config)  # a bad value fails here, before anything is written
    dev = resolve_device(device)
    mode = resolve_precision(precision, dev, prof.name)
    world = distributed.world()
    check_world(cls, config, world)
    weights_path = Path(weights).expanduser() if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise FileNotFoundError(f"--weights {weights_path}: no such file")
    if not card.embedded:
        locate_dataset(dataset, root)  # not present: a clear error before anything is written
    out = Path(out)
    cell = cell_dir(out, dataset, cls.key, prof.name, seed)
    if world.main:
        check_writable(cell)  # a read-only --out or a file in the way fails here, not after training
        for stale in [*cell.glob(".*.tmp"), *(cell / CHECKPOINTS).glob("*.tmp")]:
            stale.unlink(missing_ok=True)  # what a killed write left; the file it replaces is whole
        if force:
            forget_cell(cell)
    distributed.barrier()
    if not world.main:
        log, tracking = None, False
    uri = resolve_tracking_uri(tracking_uri, out) if tracking else None
    path = record_path(cell)
    if not force and path.is_file():
        existing = read_record(path)
        if existing.get("status") == FINISHED:
            if uri and log_now and (cell / PENDING_NAME).is_file():
                log_cell(existing, cell, uri, out)  # an earlier tracking failure: push it now
            return {**existing, "skipped": True}

    threads = prof.cpu_threads if dev.type == "cpu" else None
    with cpu_threads(threads):
        prefix = f"[{cls.key} {dataset} {prof.name} seed{seed}] "
        started, t0 = now(), time.perf_counter()
        seeding = seed_everything(seed, deterministic=True, device=dev)
        record: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "record_id": uuid.uuid4().hex,
            "method": cls.key,
            "method_ref": ref,
            "dataset": dataset,
            "seed": seed,
            "profile": prof.name,
            "status": "running",
            "paper": asdict(cls.paper) if cls.paper else None,
            "tasks": list(cls.tasks),
            "uses_camera_ids": cls.uses_camera_ids,
            "uses_labels": cls.uses_labels,
            "deviations": cls.deviations() + execution_deviations(mode, world),
            "params": params,
            "tuned_on": tuned_on,  # the sweep whose validation hold-out chose `params`, if any
            "config": config,
            "profile_settings": prof.as_dict(),
            "weights": str(weights_path) if weights_path else None,
            "init_option": init,
            # what exactly ran, as hashes (benchmark.engine.run_identity): seeds pool on these
            "config_hash": config_hash(config, prof.as_dict(),
                                       execution_identity(mode, world.size)),
            "paper_run": paper_run_facts(cls, dataset, config),
            "seeding": seeding,
            "precision": describe_precision(mode, precision, seeding),
            "distributed": distributed_facts(config, world),
            "environment": environment(dev),
            "launch": launch_facts(),  # local, or the Slurm job, node and GPUs it ran on
            "started_at": started,
        }
        audit_modes = [selection_mode(config) if selection_mode(config) == "validation" else "plain"]
        if tuned_on:
            audit_modes.append("sweep")
        # whether `benchmark audit --out` showed this adapter's training isolated (integrity rule 1)
        record["isolation"] = isolation_status(out, cls.key, ref, audit_modes,
                                               record["environment"])
        encoder: nn.Module | None = None
        warned: list[str] = []
        sink = HistorySink(prefix, log)
        try:
            record["init"] = profile_init(cls, prof, weights_path, card.kind, random_init)
            data = load_dataset(dataset, root)
            failpoints.reached("load")
            record["dataset_facts"] = _dataset_facts(card, data)
            if isinstance(data, ReidDataset):  # a corrupt file is named now, not as a BytesIO later
                require_readable([*data.train.paths, *data.query.paths, *data.gallery.paths],
                                 f"{dataset}'s train, query and gallery splits")
            plan = plan_training(data, config, seed)
            record["resumed_from_epoch"] = _latest_checkpoint_epoch(cell / CHECKPOINTS)
            faiss_index.reset()
            trained, selector = train_cell(
                adapter, plan, config, seed=seed, profile=prof, device=dev, dataset=dataset,
                checkpoint_dir=cell / CHECKPOINTS, sink=sink, weights=weights_path,
                random_init=random_init, precision=mode,
            )
            encoder, warned = trained.encoder, trained.nondeterministic_ops
            record["faiss_indexes"] = faiss_index.used()  # which index each search ran on
            if trained.init is not None:  # the method started its backbone from a checkpoint
                record["init"] = trained.init
            record["train_time_s"] = sink.elapsed_s()
            record["history"] = trained.history
            failpoints.reached("evaluate")
            if log is not None:
                log(f"{prefix}evaluating")
            scored, scored_note = scored_part(data, plan, tuned_on, dataset)
            metrics, protocol = evaluate_encoder(encoder, scored, profile=prof, device=dev,
                                                 seed=seed, precision=mode)
            protocol.update(scored_note)
            if selector is not None:
                record["metrics_last"] = metrics  # the last epoch's model, reported beside
                record["selection"] = selector.summary()
                protocol["model"] = selector.model_description()
                if not selector.last_is_best():
                    metrics, _ = evaluate_encoder(selector.selected(encoder), scored, profile=prof,
                                                  device=dev, seed=seed, precision=mode)
            if any("pseudo_labels" in row for row in trained.history):
                protocol["pseudo_label_quality"] = PSEUDO_LABEL_PROTOCOL
            record.update(status=FINISHED, metrics=metrics, protocol=protocol)
        except Exception as exc:  # the record says what failed; the suite goes on
            message = str(exc) + _disk_full_note(cell)
            record.update(
                status=FAILED,
                error={"type": type(exc).__name__, "message": message,
                       "traceback": traceback.format_exc()},
                history=record.get("history") or _partial_history(sink),
            )
            if log is not None:
                log(f"{prefix}FAILED: {type(exc).__name__}: {exc}")
        record["nondeterministic_ops"] = _nondeterministic(cls, dev, warned, encoder)
        record["finished_at"] = now()
        record["wall_time_s"] = time.perf_counter() - t0
        record["tracking"] = {"uri": uri, "status": "pending" if uri else "disabled", "run_id": None}
        if not world.main:  # rank 0 writes the record; the others trained and evaluated with it
            return record
        try:
            if uri:  # write-ahead: the marker before the record, so no finished record lacks both
                write_pending(cell, uri, out)
            write_record(path, record)  # the record first: tracking can only add to it
        except OSError as exc:  # the earlier record, if any, is untouched (atomic writes)
            raise OSError(exc.errno, f"cannot write the record {path}: "
                          f"{exc.strerror or exc}{_disk_full_note(cell)}") from None
        if uri and log_now:
            log_cell(record, cell, uri, out)
        return record


def check_world(cls: type[MethodAdapter], config: Mapping[str, Any],
                world: distributed.World) -> None:
    """Refuse a multi-process run the adapter or its batch cannot take, before anything is
    written."""
    if not world.active:
        return
    if not cls.supports_distributed:
        supported = sorted(m for m in method_names() if get_method(m).supports_distributed)
        raise ValueError(f"method {cls.key} does not run under torchrun yet (one process only); "
                         f"methods that do: {', '.join(supported) or 'none'}")
    batch = config.get("batch_size")
    if isinstance(batch, int) and batch % world.size:
        raise ValueError(f"{cls.key}: batch_size {batch} (the global batch) cannot be split over "
                         f"{world.size} processes; give a multiple of {world.size}")


def distributed_facts(config: Mapping[str, Any], world: distributed.World) -> dict[str, Any]:
    """The record's `distributed`: how many processes trained, and what the batch means.

    The paper's batch is the global batch: with N processes each takes batch / N of every batch
    (`distributed.RankSlices`), so the gradient is the global batch's mean as in one process."""
    facts = world.describe()
    batch = config.get("batch_size")
    if isinstance(batch, int):
        facts["global_batch"] = batch
        facts["per_process_batch"] = batch // world.size
    if world.active:
        facts["differs_from_one_process"] = (
            "BatchNorm statistics over each process's slice of the batch; gradient sums in "
            "another order; each process's augmentations from its own seed")
    return facts


def execution_deviations(precision: str, world: distributed.World) -> list[str]:
    """How the run's execution departs from a float32, one-process training, for the record's
    deviations (the leaderboard lists them beside the row)."""
    found = []
    if precision == "bf16":
        found.append("Trained under bf16 autocast with channels_last convolutions (the harness's "
                     "default for the paper profile on CUDA; --precision fp32 turns it off), not "
                     "in float32; metrics are computed in float32.")
    if world.active:
        found.append(f"Trained with {world.size} processes (DDP): the paper's batch is the global "
                     f"batch, each process takes batch / {world.size}, so BatchNorm statistics "
                     "come from each process's slice.")
    return found


def forget_cell(cell: Path) -> None:
    """What `--force` discards before a cell runs again from scratch: its record, checkpoints and
    pending-tracking marker."""
    shutil.rmtree(cell / CHECKPOINTS, ignore_errors=True)
    record_path(cell).unlink(missing_ok=True)
    (cell / PENDING_NAME).unlink(missing_ok=True)


def profile_init(cls: type[MethodAdapter], profile: Profile, weights: Path | None,
                 task: str = "reid", random_init: bool = False) -> dict[str, Any]:
    """The record's `init` before training: what the profile's backbone starts from, the file named
    by its content (a method that loads another checkpoint replaces this through the context)."""
    if cls.paper_init_default == NO_NETWORK:
        return init_record(NO_NETWORK)
    from methods.common.backbones import standin_path

    standin = standin_path(profile, task, random_init)
    if standin is not None:
        return init_from_standin(profile.standin, standin)
    if random_init or not profile.pretrained:
        return init_record(RANDOM)
    from methods.common.backbones import find_resnet50_weights  # the file the backbone will load

    return init_from_weights_file(find_resnet50_weights(weights))


def paper_run_facts(cls: type[MethodAdapter], dataset: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """How this run's recipe stands to the paper's on `dataset`: which config keys differ (with
    both values), what the paper's backbone starts from, and the adapter's reason, if any, why no
    run here is the paper's. The leaderboard sets a claim only beside a run that matches."""
    differs = paper_config_diff(config, cls.paper_config(dataset))
    return {"config_equal": not differs, "config_differs": differs,
            "init": cls.paper_init(dataset), "not_comparable": cls.not_comparable_reason(dataset)}


def _disk_full_note(folder: Path) -> str:
    """A hint for the error message when the disk holding `folder` is full."""
    if not disk_is_full(folder):
        return ""
    return (f" [the disk holding {folder} is full; free space and rerun, the cell resumes from "
            "its last checkpoint]")


def _partial_history(sink: HistorySink) -> list[dict[str, Any]]:
    return [{"epoch": e, **m} for e, m in sorted(sink.history.items())]


def _latest_checkpoint_epoch(folder: Path) -> int | None:
    names = sorted(folder.glob("epoch-*.pt")) if folder.is_dir() else []
    return int(names[-1].stem.split("-")[1]) if names else None


# -- suites ------------------------------------------------------------------------------------------
def applicable_cells(
    seeds: Sequence[int],
    *,
    methods: Iterable[str] | None = None,
    datasets: Iterable[str] | None = None,
    root: str | Path | None = None,
) -> list[tuple[str, str, int]]:
    """(dataset, method, seed) for every method whose tasks include the dataset's kind, on the
    named datasets (each must be present) or on every present dataset (embedded ones always)."""
    method_list = list(methods) if methods else method_names()
    classes = {m: get_method(m) for m in method_list}
    if datasets:
        names = list(datasets)
        for name in names:
            get_card(name)
            if not is_present(name, root):
                locate_dataset(name, root)  # raises with where it looked
    else:
        names = [name for name in sorted(all_cards()) if is_present(name, root)]
    seeds = [check_seed(s, "--seeds") for s in dict.fromkeys(seeds)]
    if not seeds:
        raise ValueError("no seed given")
    cells = []
    for name in names:
        kind = get_card(name).kind
        for m in method_list:
            if kind in classes[m].tasks:
                cells.extend((name, m, int(s)) for s in seeds)
    if not cells:
        raise ValueError(
            f"nothing to run: no method of {', '.join(method_list)} applies to the datasets "
            f"{', '.join(names) or '(none present)'} (re-ID methods need a re-ID dataset, "
            "clustering methods a clustering one)")
    return cells


def run_all(
    seeds: Sequence[int],
    profile: str,
    out: str | Path,
    *,
    methods: Iterable[str] | None = None,
    datasets: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    weights: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
    init: str = "profile",
    precision: str | None = None,
) -> list[dict[str, Any]]:
    """Every applicable cell; finished cells are skipped (their records returned); a cell that
    raises still yields a failed record and the suite goes on.

    `jobs` > 1 runs that many cells at once, each in its own spawned process: a cell's numbers do
    not depend on it (every cell seeds itself, and quick / ci fix torch's CPU threads), only the
    wall time does. MLflow logging then happens here, one cell after another, as cells finish."""
    from tqdm import tqdm

    get_profile(profile)
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if init not in INIT_CHOICES:
        raise ValueError(f"--init must be one of {', '.join(INIT_CHOICES)}, got {init!r}")
    if weights is not None and not Path(weights).expanduser().is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    cells = applicable_cells(seeds, methods=methods, datasets=datasets, root=root)
    check_writable(out)
    if jobs > 1 and len(cells) > 1:
        return _run_parallel(cells, profile, Path(out), device=device, tracking_uri=tracking_uri,
                             tracking=tracking, weights=weights, root=root, force=force,
                             progress=progress, jobs=jobs, init=init, precision=precision)
    records = []
    bar = tqdm(cells, desc="cells", unit="cell", file=sys.stderr,
               disable=not progress or not distributed.world().main)
    for dataset, method, seed in bar:
        bar.set_postfix_str(f"{method} on {dataset} seed {seed}")
        cell = cell_dir(out, dataset, get_method(method).key, profile, seed)
        try:
            record = run_cell(
                method, dataset, seed, profile, out, device, tracking_uri, None, weights, force,
                root=root, tracking=tracking, log=lambda line: tqdm.write(line, file=sys.stderr),
                init=init, precision=precision,
            )
        except Exception as exc:
            record = failed_setup_record(method, dataset, seed, profile, exc)
            if distributed.world().main:
                write_record(record_path(cell), record)
        records.append({"skipped": False, **record})
    bar.close()
    return records


_worker_log_lines: Any = None  # in a worker process: the queue its log lines go to


def _init_worker(lines: Any) -> None:
    global _worker_log_lines
    _worker_log_lines = lines


def _to_parent(line: str) -> None:
    _worker_log_lines.put(line)


def _cell_in_worker(
    method: str, dataset: str, seed: int, profile: str, out: str, device: Any,
    weights: str | Path | None, force: bool, root: str | Path | None, uri: str | None,
    init: str = "profile", precision: str | None = None,
) -> dict[str, Any]:
    """One cell in a worker process: it writes the pending-tracking marker with its record, and
    the parent logs it to MLflow (one writer to the store). Its log lines go to the parent, which
    prints them above the progress bar, so that several workers never break it."""
    log = _to_parent if _worker_log_lines is not None else _stderr
    return run_cell(method, dataset, seed, profile, out, device, uri, None, weights, force,
                    root=root, tracking=uri is not None, log=log, log_now=False, init=init,
                    precision=precision)


def _print_lines(lines: Any) -> None:
    """The parent's side of the workers' log queue: each line above the bar, until None."""
    from tqdm import tqdm

    for line in iter(lines.get, None):
        tqdm.write(line, file=sys.stderr)


def _run_parallel(
    cells: list[tuple[str, str, int]], profile: str, out: Path, *, device: Any,
    tracking_uri: str | None, tracking: bool, weights: str | Path | None,
    root: str | Path | None, force: bool, progress: bool, jobs: int, init: str = "profile",
    precision: str | None = None,
) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    uri = resolve_tracking_uri(tracking_uri, out) if tracking else None
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    bar = tqdm(total=len(cells), desc="cells", unit="cell", file=sys.stderr, disable=not progress)
    context = multiprocessing.get_context("spawn")
    lines = context.Queue()
    printer = threading.Thread(target=_print_lines, args=(lines,), daemon=True)
    printer.start()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(lines,)) as pool:
        futures = {
            pool.submit(_cell_in_worker, method, dataset, seed, profile, str(out),
                        str(device) if device is not None else None, weights, force, root, uri,
                        init, precision):
            (dataset, method, seed)
            for dataset, method, seed in cells
        }
        for future in as_completed(futures):
            dataset, method, seed = futures[future]
            cell = cell_dir(out, dataset, get_method(method).key, profile, seed)
            try:
                record = future.result()
            except Exception as exc:  # bad input, or the worker process died
                record = failed_setup_record(method, dataset, seed, profile, exc)
                write_record(record_path(cell), record)
            else:
                if uri and (cell / PENDING_NAME).is_file():  # new, or cut off earlier
                    skipped = record.pop("skipped", None)
                    log_cell(record, cell, uri, out)
                    if skipped is not None:
                        record["skipped"] = skipped
            done[(dataset, method, seed)] = {"skipped": False, **record}
            bar.set_postfix_str(f"{method} on {dataset} seed {seed} done")
            bar.update(1)
    lines.put(None)  # after the pool has ended: every worker's lines are in the queue
    printer.join(timeout=30)
    bar.close()
    return [done[c] for c in cells]


def failed_setup_record(
    method: str, dataset: str, seed: int, profile: str, exc: Exception,
    launch: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a cell that failed outside `run_cell` (bad input, a worker process or Slurm job
    that died): called where `exc` is handled, so the traceback is the one that ended it."""
    tb = traceback.format_exc()
    return {
        "schema": SCHEMA_VERSION, "record_id": uuid.uuid4().hex, "method": method,
        "dataset": dataset, "seed": seed, "profile": profile, "status": FAILED,
        "error": {"type": type(exc).__name__, "message": str(exc),
                  "traceback": "" if tb.startswith("NoneType: None") else tb},
        "launch": dict(launch) if launch is not None else launch_facts(),
        "finished_at": now(), "tracking": {"status": "disabled", "uri": None, "run_id": None},
    }


SUMMARY_METRICS = metric_names.RUN_SUMMARY


def summary_table(records: Sequence[Mapping[str, Any]]):  # -> pandas.DataFrame
    """One row per cell; metrics in percent (as tables show them), with a note on synthetic /
    withdrawn data and on skipped (already finished) cells."""
    import pandas as pd

    rows = []
    for r in records:
        facts = r.get("dataset_facts") or {}
        metrics = r.get("metrics") or {}
        row: dict[str, Any] = {
            "dataset": r["dataset"], "method": r["method"], "seed": r["seed"],
            "status": r["status"],
        }
        for names in SUMMARY_METRICS.values():
            for name in names:
                if metrics.get(name) is not None:
                    row[name] = round(100 * float(metrics[name]), 1)
        row["epochs"] = len(r.get("history") or [])
        row["time_s"] = round(float(r["wall_time_s"]), 1) if r.get("wall_time_s") else None
        notes = [n for n in ("synthetic", "withdrawn") if facts.get(n)]
        if r.get("uses_labels"):
            notes.append("uses labels: a ceiling, not ranked")
        if r.get("skipped"):
            notes.append("skipped: finished earlier")
        if r["status"] == FAILED:
            notes.append(f"{r['error']['type']}: {r['error']['message'][:60]}")
        row["note"] = ", ".join(notes)
        rows.append(row)
    columns = ["dataset", "method", "seed", "status"]
    columns += [m for names in SUMMARY_METRICS.values() for m in names if any(m in r for r in rows)]
    columns += ["epochs", "time_s", "note"]
    return pd.DataFrame(rows, columns=columns)
