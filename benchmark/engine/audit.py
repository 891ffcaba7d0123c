"""`benchmark audit`: an experiment showing that a method's training used nothing it must not see.

Why an experiment. `benchmark.engine.contract` lists what an adapter receives, and none of it holds a
label, a file name, a validation label or the test split. But code in the harness's process can look
past its arguments (`gc.get_objects()`, stack frames, the harness's files), and `--method
pkg.mod:Class` runs code nobody here reviewed. So the audit trains the cell again in a substituted
world and requires the outcome to be bit-identical. The substitutions:

- training labels: the hidden labels of the images the method trains on are shuffled among them (and
  apart, those of the validation hold-out among the hold-out, so that it stays the same images);
- file names: every training image is reached through a new, meaningless file name (a hard link, or
  a copy, holding the same bytes); re-ID only (clustering sets are arrays, without file names);
- validation labels: the hold-out's labels are shuffled (modes `validation` and `sweep`);
- test split: every query and gallery image is replaced by another (mirrored, colour-inverted);
  re-ID in modes `plain` and `validation` (a clustering cell is scored on the images it learns from,
  whose labels the first substitution covers; a sweep drops the test split before its first trial).

The outcome compared: the trained encoder's weights, its embeddings of a fixed batch of training
images (through the harness's evaluation transform), the pseudo labels the method reported and its
own per-epoch metrics. When the fully substituted run differs, each substitution is tried alone, to
name the one the training depends on, and the unsubstituted run is repeated, to tell a leak from
nondeterminism.

Modes, each the code path of a real run: `plain` (`run` with the last epoch's model; the loaded
dataset, test split included, stays in memory while training, as in `run`), `validation` (`run`
with `model_selection = "validation"`: a hold-out carved from the training data scored after every
epoch), `sweep` (one sweep trial on the carved split, scored after every epoch, never pruned).

Scope: the audit substitutes what the harness holds. Data a method fetches by a way of its own (the
dataset's folder opened by a path it builds, the network) is beyond it; a sandbox is for that.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmark.data.registry import load_dataset
from benchmark.data.types import ClusteringDataset, Dataset, ReidDataset, ReidSplit
from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.audit_log import add_audits
from benchmark.engine.contract import MethodAdapter
from benchmark.engine.evaluate import PathImages, encoder_features, evaluation_size
from benchmark.engine.profiles import Profile, get_profile
from benchmark.engine.records import git_state, now
from benchmark.engine.runner import (
    HistorySink,
    Trained,
    TrainingPlan,
    method_ref,
    plan_training,
    resolve_device,
    train_cell,
)
from benchmark.engine.seeding import cpu_threads, seed_everything
from benchmark.engine.selection import FRACTION_KEY, SELECTION_KEY
from benchmark.tuning.objective import run_trial
from benchmark.tuning.validation import DEFAULT_FRACTION, ValidationSplit, clustering_part

MODES = ("plain", "validation", "sweep")
SUBSTITUTIONS = ("training labels", "file names", "validation labels", "test split")
MEANING = {
    "training labels": "the hidden labels of the training images (identities / classes)",
    "file names": "the training images' file names (re-ID file names encode the identity)",
    "validation labels": "the labels of the validation hold-out (model selection and tuning)",
    "test split": "the test split's images (query / gallery)",
}
PROBE_IMAGES = 32  # training images embedded for the comparison


def applicable(mode: str, kind: str) -> tuple[str, ...]:
    """The substitutions that mean something for a mode and a dataset kind."""
    if mode not in MODES:
        raise ValueError(f"audit mode must be one of {', '.join(MODES)}, got {mode!r}")
    subs = ["training labels"]
    if kind == "reid":
        subs.append("file names")
    if mode != "plain":
        subs.append("validation labels")
    if kind == "reid" and mode != "sweep":
        subs.append("test split")
    return tuple(subs)


# -- what is compared ------------------------------------------------------------------------------
def _digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().reshape(-1).contiguous()
    raw = flat.view(torch.uint8) if flat.numel() else flat
    return f"{tensor.dtype}{tuple(tensor.shape)}:" + hashlib.sha256(raw.numpy().tobytes()).hexdigest()


@dataclass
class Outcome:
    """What one training produced, reduced to what the audit compares."""

    error: str | None = None
    outputs: str | None = None  # digest of the embeddings of the probe images
    weights: dict[str, str] = field(default_factory=dict)  # state_dict key -> digest
    pseudo: dict[int, str] = field(default_factory=dict)  # epoch -> digest of reported labels
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)  # the method's own

    def changes(self, other: "Outcome") -> list[str]:
        """What differs from `other`, in words; empty when bit-identical."""
        if self.error or other.error:
            if self.error == other.error:
                return []
            return [f"the outcome ({self.error or 'trained'} / {other.error or 'trained'})"]
        found = []
        if self.outputs != other.outputs:
            found.append("the encoder's output")
        weights = sorted(k for k in set(self.weights) | set(other.weights)
                         if self.weights.get(k) != other.weights.get(k))
        if weights:
            found.append(f"the encoder's weights ({len(weights)} tensors, e.g. {weights[0]})")
        epochs = sorted(e for e in set(self.pseudo) | set(other.pseudo)
                        if self.pseudo.get(e) != other.pseudo.get(e))
        if epochs:
            found.append(f"the reported pseudo labels (epochs {_epochs(epochs)})")
        epochs = sorted(e for e in set(self.metrics) | set(other.metrics)
                        if self.metrics.get(e) != other.metrics.get(e))
        if epochs:
            found.append(f"the method's own metrics (epochs {_epochs(epochs)})")
        return found


def _epochs(epochs: Sequence[int]) -> str:
    shown = ", ".join(str(e) for e in epochs[:6])
    return shown + (", ..." if len(epochs) > 6 else "")


def _outcome(trained: Trained, probe: Sequence, size: tuple[int, int], profile: Profile,
             device: torch.device) -> Outcome:
    encoder = trained.encoder
    outputs = encoder_features(encoder, probe, size, profile, device)
    return Outcome(
        outputs=_digest(outputs),
        weights={k: _digest(v) for k, v in encoder.state_dict().items()},
        pseudo={int(e): _digest(torch.from_numpy(np.ascontiguousarray(labels)))
                for e, labels in trained.pseudo_labels.items()},
        metrics={int(row["epoch"]): {k: v for k, v in row.items()
                                     if k not in ("epoch", "pseudo_labels")}
                 for row in trained.history},
    )


# -- the substituted worlds ------------------------------------------------------------------------
@dataclass
class World:
    """What exists during one training: the loaded dataset (None once a sweep dropped it) and the
    plan the method trains and is scored on."""

    data: Dataset | None
    plan: TrainingPlan


def _shuffled_within(n: int, groups: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """An index map that shuffles positions within each group and leaves the others in place."""
    perm = np.arange(n)
    for group in groups:
        group = np.asarray(group, dtype=np.int64)
        perm[group] = group[rng.permutation(group.size)]
    return perm


class Worlds:
    """Builds the original world of a mode and its substituted variants, for one dataset."""

    def __init__(self, data: Dataset, plan: TrainingPlan, mode: str, workdir: Path, seed: int):
        self.data, self.plan, self.mode, self.workdir = data, plan, mode, workdir
        self.seed = seed
        self._renamed: list[Path] | None = None
        self._replaced: tuple[ReidSplit, ReidSplit] | None = None

    def _label_map(self, n: int, subs: frozenset[str]) -> np.ndarray:
        held = self.plan.selection.held_out if self.plan.selection is not None else np.zeros(0, int)
        kept = np.setdiff1d(np.arange(n), held)
        rng = np.random.default_rng([self.seed, 0xA0D17])
        train_map = _shuffled_within(n, [kept], rng)
        held_map = _shuffled_within(n, [held], rng)
        perm = np.arange(n)
        if "training labels" in subs:
            perm[kept] = train_map[kept]
        if "validation labels" in subs:
            perm[held] = held_map[held]
        return perm

    def world(self, subs: frozenset[str]) -> World:
        data = self._reid(subs) if isinstance(self.data, ReidDataset) else self._clustering(subs)
        return World(data=None if self.mode == "sweep" else data, plan=self._plan(data))

    # re-ID: the training split's labels and paths, the test split's images
    def _reid(self, subs: frozenset[str]) -> ReidDataset:
        data = self.data
        train = data.train
        perm = self._label_map(train.num_images, subs)
        paths = self.renamed_paths() if "file names" in subs else list(train.paths)
        train2 = ReidSplit(name=train.name, paths=paths, pids=train.pids[perm].copy(),
                           camids=train.camids.copy())
        query, gallery = self.replaced_test() if "test split" in subs else (data.query, data.gallery)
        return ReidDataset(name=data.name, train=train2, query=query, gallery=gallery,
                           root=data.root)

    def renamed_paths(self) -> list[Path]:
        if self._renamed is None:
            folder = self.workdir / "renamed"
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([self.seed, 0xF11E])
            self._renamed = []
            for i, path in enumerate(self.data.train.paths):
                token = "".join(f"{b:02x}" for b in rng.integers(0, 256, 8))
                new = folder / f"img-{token}-{i}{Path(path).suffix}"
                if not new.exists():  # made once per audit (`Auditor`), shared by its trainings
                    try:
                        os.link(path, new)
                    except OSError:
                        shutil.copyfile(path, new)
                self._renamed.append(new)
        return self._renamed

    def replaced_test(self) -> tuple[ReidSplit, ReidSplit]:
        if self._replaced is None:
            splits = []
            for split in (self.data.query, self.data.gallery):
                folder = self.workdir / "replaced" / split.name
                folder.mkdir(parents=True, exist_ok=True)
                paths = []
                for path in split.paths:
                    new = folder / Path(path).name
                    if not new.exists():  # made once per audit, shared by its trainings
                        with Image.open(path) as img:
                            ImageOps.invert(ImageOps.mirror(img.convert("RGB"))).save(
                                new, format="PNG")
                    paths.append(new)
                splits.append(ReidSplit(name=split.name, paths=paths, pids=split.pids.copy(),
                                        camids=split.camids.copy()))
            self._replaced = (splits[0], splits[1])
        return self._replaced

    def _clustering(self, subs: frozenset[str]) -> ClusteringDataset:
        data = self.data
        perm = self._label_map(len(data.labels), subs)
        return ClusteringDataset(name=data.name, images=data.images, labels=data.labels[perm].copy(),
                                 num_classes=data.num_classes, parts=dict(data.parts),
                                 root=data.root)

    def _plan(self, data: Dataset) -> TrainingPlan:
        """The original plan rebuilt from `data`: the same images in the same roles."""
        selection = self.plan.selection
        if selection is None:
            return TrainingPlan(train=data)
        if isinstance(data, ClusteringDataset):
            kept = np.setdiff1d(np.arange(len(data.labels)), selection.held_out)
            carved: Dataset = clustering_part(data, kept, "training part")
            validation: Dataset = clustering_part(data, selection.held_out, "validation part")
        else:
            original = selection.train
            index = {Path(p): i for i, p in enumerate(self.data.train.paths)}

            def rebuild(split: ReidSplit) -> ReidSplit:
                at = np.array([index[Path(p)] for p in split.paths], dtype=np.int64)
                return ReidSplit(name=split.name, paths=[data.train.paths[i] for i in at],
                                 pids=data.train.pids[at].copy(), camids=data.train.camids[at].copy())

            carved = validation = ReidDataset(
                name=original.name, train=rebuild(original.train), query=rebuild(original.query),
                gallery=rebuild(original.gallery), root=original.root)
        split = ValidationSplit(train=carved, validation=validation,
                                description=dict(selection.description),
                                held_out=selection.held_out)
        return TrainingPlan(train=carved, selection=split)


# -- one training, in a process of its own ---------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One training of the audit (picklable: it runs in a fresh spawned process)."""

    method: str  # registry key or module:Class
    dataset: str
    profile: str
    seed: int
    params: dict[str, Any]
    device: str
    root: str | None
    weights: str | None
    mode: str
    subs: tuple[str, ...]
    workdir: str
    files: str  # the substitute files (renamed training images, replaced test images)


def _plan_for(data: Dataset, config: Mapping[str, Any], mode: str, seed: int) -> TrainingPlan:
    selection = "last" if mode == "plain" else "validation"
    fraction = float(config.get(FRACTION_KEY, DEFAULT_FRACTION))
    return plan_training(data, {SELECTION_KEY: selection, FRACTION_KEY: fraction}, seed)


def train_job(job: Job) -> Outcome:
    """Build the job's world, let go of the original dataset, train, and reduce to an `Outcome`.

    Each training runs in a fresh process so that the only dataset in memory is the world's: an
    adapter that searches memory (`gc.get_objects()`) finds the substituted labels, names and test
    images, never the originals."""
    from benchmark.engine.method_registry import get_method

    workdir = Path(job.workdir)
    cls = get_method(job.method)
    profile = get_profile(job.profile)
    device = torch.device(job.device)
    try:
        adapter = cls(**job.params)
        config = adapter.resolve_config(job.dataset, profile.name)
        original = load_dataset(job.dataset, job.root)
        worlds = Worlds(original, _plan_for(original, config, job.mode, job.seed), job.mode,
                        Path(job.files), job.seed)
        world = worlds.world(frozenset(job.subs))
        del worlds, original
        gc.collect()
        trained_on = world.plan.train
        if isinstance(trained_on, ReidDataset):
            probe: Sequence = PathImages(trained_on.train.paths[:PROBE_IMAGES])
        else:
            probe = UnlabeledView(pixels=trained_on.images[:PROBE_IMAGES], kind="clustering")
        size = evaluation_size(trained_on, profile)
        del trained_on
        threads = profile.cpu_threads if device.type == "cpu" else None
        cell = workdir / "cell"
        if job.mode == "sweep":
            assert world.plan.selection is not None
            split, world = world.plan.selection, None  # the study keeps only the carved split
            trained = run_trial(cls, job.params, split, dataset=job.dataset, profile=profile,
                                seed=job.seed, device=device, workdir=cell).trained
        else:
            data = world.data  # noqa: F841  (in memory while training, as in `run`)
            with cpu_threads(threads):
                seed_everything(job.seed, deterministic=True, device=device)
                trained, _ = train_cell(
                    adapter, world.plan, config, seed=job.seed, profile=profile, device=device,
                    dataset=job.dataset, checkpoint_dir=cell / "checkpoints",
                    sink=HistorySink(log=None), weights=Path(job.weights) if job.weights else None)
        assert trained is not None
        with cpu_threads(threads):
            return _outcome(trained, probe, size, profile, device)
    except Exception as exc:  # a crash under a substitution is an outcome too
        return Outcome(error=f"{type(exc).__name__}: {exc}"[:300])


def _preload_modules() -> list[str]:
    """What the fork server imports once: this module and every registered adapter's."""
    from benchmark.engine.method_registry import get_method, method_names

    return [__name__, *sorted({get_method(name).__module__ for name in method_names()})]


# -- the audit -------------------------------------------------------------------------------------
@dataclass
class ModeVerdict:
    mode: str
    passed: bool
    verdict: str  # "pass", "leak", "nondeterministic", "error"
    substitutions: list[str]
    leaks: list[str]  # substitutions that, alone, changed the outcome
    changed: list[str]  # what the fully substituted run changed
    message: str
    trainings: int
    time_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Auditor:
    """Audits one (method, dataset, profile, seed): per mode, trainings in fresh processes,
    `jobs` at a time (they are independent; each uses the profile's CPU threads)."""

    def __init__(self, method: str, dataset: str, *, profile: str = "ci", seed: int = 0,
                 params: Mapping[str, Any] | None = None, device: torch.device,
                 root: str | Path | None = None, weights: str | Path | None = None,
                 jobs: int = 2) -> None:
        self.method, self.dataset, self.profile, self.seed = method, dataset, profile, seed
        self.params = dict(params or {})
        self.device, self.jobs = device, max(1, int(jobs))
        self.root = str(root) if root is not None else None
        self.weights = str(weights) if weights is not None else None
        self.data = load_dataset(dataset, root)
        self.kind = self.data.kind
        self.files: Path | None = None

    def _substitute_files(self) -> Path:
        """Renamed training images and replaced test images, made once for every training."""
        if self.files is None:
            self.files = Path(tempfile.mkdtemp(prefix="audit-files-"))
            if isinstance(self.data, ReidDataset):
                worlds = Worlds(self.data, TrainingPlan(train=self.data), "plain", self.files,
                                self.seed)
                worlds.renamed_paths()
                worlds.replaced_test()
        return self.files

    def close(self) -> None:
        if self.files is not None:
            shutil.rmtree(self.files, ignore_errors=True)
            self.files = None

    def _run(self, mode: str, workdir: Path, chosen: Sequence[frozenset[str]]) -> list[Outcome]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        jobs = [Job(method=self.method, dataset=self.dataset, profile=self.profile,
                    seed=self.seed, params=self.params, device=str(self.device), root=self.root,
                    weights=self.weights, mode=mode, subs=tuple(sorted(subs)),
                    workdir=str(workdir / f"job-{i}"), files=str(self._substitute_files()))
                for i, subs in enumerate(chosen)]
        # A fresh process per training (max_tasks_per_child=1), forked from a server that holds
        # the harness's modules and no data: clean memory without paying the imports each time.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_preload_modules())
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(jobs)), mp_context=context,
                                 max_tasks_per_child=1) as pool:
            outcomes = list(pool.map(train_job, jobs))
        for job in jobs:
            shutil.rmtree(job.workdir, ignore_errors=True)
        return outcomes

    def audit_mode(self, mode: str) -> ModeVerdict:
        subs = applicable(mode, self.kind)
        # An adapter that declares `uses_labels` (the supervised ceiling) is given the training
        # labels: the audit then requires that they do change its outcome (they reach it, as
        # declared) and that nothing else does.
        declared = ("training labels",) if method_ref(self.method)[0].uses_labels else ()
        subs = tuple(s for s in subs if s not in declared)
        t0 = time.perf_counter()
        workdir = Path(tempfile.mkdtemp(prefix=f"audit-{mode}-"))
        try:
            base, alt, *uses = self._run(mode, workdir, [frozenset(), frozenset(subs)]
                                         + [frozenset(declared)] * bool(declared))
            trainings = 2 + len(uses)
            if base.error:
                return self._verdict(mode, False, "error", subs, [], [],
                                     f"{mode}: the cell does not train unsubstituted: {base.error}",
                                     trainings, t0)
            changed = base.changes(alt)
            if uses and not base.changes(uses[0]):
                return self._verdict(
                    mode, False, "error", subs, [], [],
                    f"{mode}: the adapter declares uses_labels, yet its outcome is bit-identical "
                    "with the training labels substituted: the labels do not reach it", trainings,
                    t0)
            if not changed:
                note = (" (training labels, declared by uses_labels, do change it, as expected)"
                        if uses else "")
                return self._verdict(mode, True, "pass", subs, [], [],
                                     f"{mode}: bit-identical with {', '.join(subs)} substituted"
                                     + note, trainings, t0)
            repeat, *singles = self._run(mode, workdir,
                                         [frozenset()] + [frozenset({s}) for s in subs])
            trainings += 1 + len(subs)
            if base.changes(repeat):
                return self._verdict(
                    mode, False, "nondeterministic", subs, [], changed,
                    f"{mode}: the unsubstituted cell trained twice gives different results, so "
                    "the audit cannot decide; make the method deterministic for a seed",
                    trainings, t0)
            alone = {s: base.changes(o) for s, o in zip(subs, singles)}
            leaks = [s for s, found in alone.items() if found]
            if leaks:
                message = f"{mode}: LEAK: " + "; ".join(
                    f"with {s} substituted, {', '.join(alone[s])} changed: the training depends "
                    f"on {MEANING[s]}" for s in leaks)
            else:
                message = (f"{mode}: LEAK: {', '.join(changed)} changed with {', '.join(subs)} "
                           "substituted together, though with none alone")
            return self._verdict(mode, False, "leak", subs, leaks, changed, message, trainings, t0)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _verdict(mode: str, passed: bool, verdict: str, subs: Sequence[str], leaks: list[str],
                 changed: list[str], message: str, trainings: int, t0: float) -> ModeVerdict:
        return ModeVerdict(mode=mode, passed=passed, verdict=verdict, substitutions=list(subs),
                           leaks=leaks, changed=changed, message=message, trainings=trainings,
                           time_s=round(time.perf_counter() - t0, 2))


def audit(
    method: str | type[MethodAdapter],
    dataset: str,
    *,
    modes: Sequence[str] = MODES,
    profile: str = "ci",
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    device: str | torch.device | None = "cpu",
    root: str | Path | None = None,
    weights: str | Path | None = None,
    out: str | Path | None = None,
    jobs: int = 2,
) -> dict[str, Any]:
    """Audit one method on one dataset in `modes`; the verdicts go to `<out>/audits/` when `out`
    is given (the records of cells run into `out` then carry them).

    Raises for bad input (unknown method, dataset, mode or parameter; a task the method does not
    support) before any training."""
    cls, ref = method_ref(method)
    for mode in modes:
        applicable(mode, "reid")
    get_profile(profile)
    cls(**dict(params or {})).resolve_config(dataset, profile)
    auditor = Auditor(ref, dataset, profile=profile, seed=seed, params=params,
                      device=resolve_device(device), root=root, weights=weights, jobs=jobs)
    if auditor.kind not in cls.tasks:
        raise ValueError(f"method {cls.key} supports {', '.join(cls.tasks)}; dataset {dataset} "
                         f"is {auditor.kind}")
    git = git_state()
    try:
        verdicts = [auditor.audit_mode(mode) for mode in modes]
    finally:
        auditor.close()
    report = {
        "method": cls.key, "method_ref": ref, "dataset": dataset, "profile": profile,
        "seed": seed, "params": dict(params or {}), "commit": git["commit"], "dirty": git["dirty"],
        "finished_at": now(), "passed": all(v.passed for v in verdicts),
        "modes": [v.as_dict() for v in verdicts],
    }
    if out is not None:
        entries = [{"dataset": dataset, "profile": profile, "seed": seed, "mode": v.mode,
                    "passed": v.passed, "verdict": v.verdict, "leaks": v.leaks,
                    "message": v.message, "method_ref": ref, "commit": git["commit"],
                    "dirty": git["dirty"], "finished_at": report["finished_at"]}
                   for v in verdicts]
        report["file"] = str(add_audits(out, cls.key, ref, entries))
    return report
