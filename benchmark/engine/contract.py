"""The method adapter contract (DESIGN.md, "Methods: the adapter contract").

Like a scikit-learn estimator, an adapter's `__init__` only stores parameters; `fit` does the work.
Like torchreid, the harness owns the loop: `run_epochs` runs setup -> (resume) -> per epoch
`train_epoch` -> log -> harness scorers -> checkpoint -> harness hooks, so that seeding, logging,
checkpoints and resume behave the same for every method, and a method only writes the steps that
make it different.

The isolation guarantee (DESIGN.md, integrity rule 1), checkable by reading this file:

- An adapter receives exactly three things (the one declared exception: an adapter with
  `uses_labels`, the supervised ceiling, gets a `LabeledView` instead): an `UnlabeledView` (image bytes or pixels in a seeded
  order; camera ids only when `uses_camera_ids`), its resolved config (plain values), and a
  `RunContext`. The context's fields are listed below; none holds a label, an identity, a file name,
  a validation split or the test split. Its `sink` holds the method's own metrics and pseudo labels,
  and its `pseudo_label_hook` stores into that sink.
- The harness's scorers (model selection on a validation hold-out, sweep pruning, pseudo-label
  diagnostics) never hang off anything the adapter receives: `run_epochs` takes them as arguments
  from the harness and calls them between epochs, and pseudo-label quality is computed from hidden
  labels after `fit` returns (`benchmark.engine.runner.fit_cell`). An `EpochMethod` may not
  override `fit`: the harness drives its steps, so no adapter code runs between a scorer and the
  encoder it scores.
- Python cannot hide memory from code running in the same process (`gc.get_objects()`, stack
  frames, the file system). What structure cannot rule out, `benchmark audit` tests: it trains a
  cell again with the hidden training labels permuted, training file names replaced, validation
  labels permuted and the test split replaced, and requires the encoder to be bit-identical
  (`benchmark.engine.audit`).
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import math
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine import distributed, failpoints
from benchmark.engine.profiles import Profile
from benchmark.engine.run_identity import IMAGENET_V1, init_from_checkpoint

TASKS = ("reid", "clustering")


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    venue: str
    year: int | None = None
    seed_file: str | None = None  # file in ../shared/papers/, None for baselines not there
    reference: str | None = None  # arXiv id, DOI or URL


class ConfigError(ValueError):
    """A parameter the adapter does not declare, or an invalid value."""


@dataclass(frozen=True)
class Bound:
    """The values a numeric parameter may take: `low` / `high` inclusive unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None
                    and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "finite"


# Bounds of parameter names that mean the same in every adapter that has them; an adapter adds or
# overrides its own in `bounds`, next to its `defaults`.
COMMON_BOUNDS: dict[str, Bound] = {
    "epochs": Bound(low=1),
    "batch_size": Bound(low=1),
    "iters": Bound(low=0),
    "lr": Bound(low=0, low_open=True),
    "eps": Bound(low=0, low_open=True),
    "temperature": Bound(low=0, low_open=True),
    "weight_decay": Bound(low=0),
    "momentum": Bound(low=0, high=1),
    "sgd_momentum": Bound(low=0, high=1),
    "memory_momentum": Bound(low=0, high=1),
    "dropout": Bound(low=0, high=1, high_open=True),
    "merge_fraction": Bound(low=0, high=1, low_open=True),
    "validation_fraction": Bound(low=0, high=1, low_open=True, high_open=True),
    "size_penalty": Bound(low=0),
}


def _type_error(value: Any, default: Any) -> str | None:
    """Why `value` cannot stand where `default` does (None when it can): the type of a parameter
    is its default's; an int may stand for a float, never a string for a number."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, (list, tuple)) else "a list"
    return None


class MethodAdapter:
    """Base of every method adapter. Subclasses set the class attributes and implement `fit`.

    Deviations from the paper are written in the class docstring under a line `Deviations:` as
    `- ...` items; `deviations()` reads them so that records and leaderboards show them.
    """

    key: ClassVar[str] = ""
    paper: ClassVar[Paper | None] = None
    tasks: ClassVar[tuple[str, ...]] = ()
    uses_camera_ids: ClassVar[bool] = False
    # True only for the `supervised` ceiling: the runner then hands it the training labels (a
    # `LabeledView`), and records, tables and plots mark it and never rank it among unsupervised
    # methods. Every other adapter gets an `UnlabeledView`.
    uses_labels: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}  # the paper's hyperparameters
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # where the paper differs per dataset
    # scale for quick / ci (epochs, ...); a "<profile>:<dataset>" entry applies on top for one
    # dataset (e.g. a clustering set whose quick backbone starts from random weights)
    profile_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    bounds: ClassVar[dict[str, Bound]] = {}  # numeric ranges, beyond COMMON_BOUNDS
    # Ops the method runs that have no deterministic CUDA kernel and do not warn under
    # torch.use_deterministic_algorithms (e.g. "torchvision.ops.deform_conv2d backward"); the harness
    # lists them in the run record when the device is CUDA.
    nondeterministic_cuda_ops: ClassVar[tuple[str, ...]] = ()
    # What the paper's backbone starts from (an init key of benchmark.engine.run_identity), per
    # dataset where it differs from `paper_init_default`: a paper-profile run with another start is
    # not the paper's run, and the leaderboard sets no claim beside it.
    paper_init_default: ClassVar[str] = IMAGENET_V1
    paper_inits: ClassVar[dict[str, str]] = {}
    # Why even a paper-profile run with the paper's config cannot be the paper's run, per dataset
    # ("*" for all): something the paper relies on that the harness withholds or lacks. Written
    # here, in the adapter, so the leaderboard marks the cell without knowing any method.
    not_comparable: ClassVar[dict[str, str]] = {}
    # Whether the adapter runs under torchrun (DDP): its training forwards go through
    # `ctx.parallel(model)` and it takes shared decisions with `distributed.on_main`; the harness
    # and methods/common do the rest (sharded extraction, sliced global batches, gathered memory
    # updates, rank-0 checkpoints). The runner refuses a multi-process run of any other adapter.
    supports_distributed: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    # -- declarations ----------------------------------------------------------------------------
    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Optuna search space: suggest values on `trial` and return them as config overrides."""
        return {}

    @classmethod
    def deviations(cls) -> list[str]:
        doc = inspect.getdoc(cls) or ""
        match = re.search(r"^Deviations:\s*\n(.*?)(?:\n\s*\n(?!\s*-)|\Z)", doc, re.S | re.M)
        if not match:
            return []
        items = re.split(r"\n\s*-\s+", "\n" + match.group(1).strip())
        return [" ".join(item.split()) for item in items if item.strip()]

    @classmethod
    def paper_init(cls, dataset: str) -> str:
        return cls.paper_inits.get(dataset, cls.paper_init_default)

    @classmethod
    def not_comparable_reason(cls, dataset: str) -> str | None:
        return cls.not_comparable.get(dataset, cls.not_comparable.get("*"))

    @classmethod
    def paper_config(cls, dataset: str) -> dict[str, Any]:
        """The config the paper states for `dataset`: defaults and per-dataset defaults, nothing
        scaled, nothing given."""
        return {**cls.defaults, **cls.dataset_defaults.get(dataset, {})}

    def resolve_config(self, dataset: str, profile: str) -> dict[str, Any]:
        """Paper defaults < per-dataset paper defaults < profile scaling < the profile's scaling
        for one dataset (`profile_overrides["quick:digits"]`) < explicit parameters.

        A parameter given as None keeps the default (the timm convention)."""
        config = dict(self.defaults)
        config.update(self.dataset_defaults.get(dataset, {}))
        config.update(self.profile_overrides.get(profile, {}))
        config.update(self.profile_overrides.get(f"{profile}:{dataset}", {}))
        unknown = sorted(set(self.params) - set(config))
        if unknown:
            raise ConfigError(
                f"{self.key}: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(config))}"
            )
        config.update({k: v for k, v in self.params.items() if v is not None})
        self.check_values(config, self.params)
        return config

    def check_values(self, config: Mapping[str, Any], given: Mapping[str, Any]) -> None:
        """ConfigError naming the first parameter whose type is not its default's or whose value
        is outside its bounds; runs before any data is loaded."""
        defaults = {**self.defaults}
        for key, value in config.items():
            default = defaults.get(key)
            reason = _type_error(value, default) if key in given else None
            if reason is not None:
                raise ConfigError(f"{self.key}: parameter {key!r} must be {reason} (its default is "
                                  f"{default!r}), got {value!r}")
            bound = {**COMMON_BOUNDS, **self.bounds}.get(key)
            if bound is not None and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and not bound.admits(float(value)):
                origin = "given" if key in given else "resolved"
                raise ConfigError(f"{self.key}: parameter {key!r} must be {bound.describe()}, "
                                  f"got {value!r} ({origin})")

    # -- the work ----------------------------------------------------------------------------------
    def fit(self, view: UnlabeledView, config: Mapping[str, Any], ctx: "RunContext") -> nn.Module:
        """Learn from the unlabeled view; return an encoder: a module mapping a normalised image
        batch (B, 3, H, W) to features (B, D). The harness extracts features and evaluates."""
        raise NotImplementedError


class EpochMethod(MethodAdapter):
    """A method trained epoch by epoch; the harness loop handles resume and checkpoints."""

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: "RunContext") -> None:
        raise NotImplementedError

    def num_epochs(self, config: Mapping[str, Any]) -> int:
        return int(config["epochs"])

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch (pseudo-labelling included, where the method does it); returns metrics."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors and plain containers (loaded weights_only=True)."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def encoder(self) -> nn.Module:
        raise NotImplementedError

    def fit(self, view: UnlabeledView, config: Mapping[str, Any], ctx: "RunContext") -> nn.Module:
        """The harness loop with no scorers (what the harness itself runs is `run_epochs`)."""
        return run_epochs(self, view, config, ctx)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__}: an EpochMethod implements setup / "
                "train_epoch / state_dict / load_state_dict / encoder, not fit (the harness drives "
                "the epoch loop); subclass MethodAdapter to own fit"
            )


EpochHook = Callable[[int, nn.Module], None]


def run_epochs(
    method: EpochMethod,
    view: UnlabeledView,
    config: Mapping[str, Any],
    ctx: "RunContext",
    *,
    before_checkpoint: Sequence[EpochHook] = (),
    after_checkpoint: Sequence[EpochHook] = (),
) -> nn.Module:
    """The harness's epoch loop: setup, resume from the latest checkpoint, then per epoch
    `train_epoch`, log, `before_checkpoint` hooks (model selection), checkpoint, `after_checkpoint`
    hooks (pruning). The hooks are the harness's and are not reachable from `method`, `view`,
    `config` or `ctx`.

    Under `ctx.precision` "bf16" each epoch trains under bf16 autocast (feature extraction for
    pseudo labels included) with the encoder in channels_last; the harness's evaluation stays in
    float32 (`benchmark.engine.evaluate`).

    Logging and scoring come before the save: the checkpoint then carries this epoch's history, the
    RNG states it stores are those after scoring (as in an uninterrupted run), and a crash between
    the two re-runs the epoch, whose metrics and score replace the same epoch's entries."""
    method.setup(view, config, ctx)
    if ctx.channels_last:
        method.encoder().to(memory_format=torch.channels_last)
    start = 0
    resumed = ctx.load_checkpoint()
    if resumed is not None:
        method.load_state_dict(resumed["method"])
        start = int(resumed["epoch"]) + 1
    for epoch in range(start, method.num_epochs(config)):
        with ctx.autocast():
            metrics = method.train_epoch(epoch)
        failpoints.reached("epoch")
        ctx.sink.log_epoch(epoch, metrics)
        for hook in before_checkpoint:
            hook(epoch, method.encoder())
        ctx.save_checkpoint(epoch, method.state_dict())
        for hook in after_checkpoint:
            hook(epoch, method.encoder())
    return method.encoder()


# -- the run context ------------------------------------------------------------------------------
class MetricSink:
    """Receives per-epoch metrics; the engine's sink writes history and MLflow."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:  # pragma: no cover
        pass

    def state(self) -> dict[str, Any]:
        """What must survive a crash (the history so far); saved inside each checkpoint."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        pass


def _rng_state(ctx: "RunContext") -> dict[str, Any]:
    return {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_global": _np_state(np.random.get_state()),
        "numpy_ctx": ctx.rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "torch_ctx": ctx.torch_generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _np_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _restore_rng(ctx: "RunContext", state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((state["python_version"], tuple(int(x) for x in py), state["python_gauss"]))
    ng = state["numpy_global"]
    np.random.set_state(
        (ng["name"], ng["keys"].numpy().astype(np.uint32), ng["pos"], ng["has_gauss"], ng["cached"])
    )
    ctx.rng.bit_generator.state = state["numpy_ctx"]
    torch.set_rng_state(state["torch"])
    ctx.torch_generator.set_state(state["torch_ctx"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def disk_is_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the disk holding `folder` has less than `margin` bytes free (torch reports a full
    disk only as "file write failed", so the harness looks)."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".pt.sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be trusted (its sha256 differs from the one written beside it);
    None when it matches or when no digest was written (a checkpoint of an older version)."""
    sidecar = _digest_path(path)
    try:
        expected = sidecar.read_text().split()[0]
    except (OSError, IndexError):
        return None
    found = _sha256(path)
    return None if found == expected else f"is corrupt (sha256 {found[:12]}, expected {expected[:12]})"


@dataclass
class RunContext:
    """What the harness hands to `fit`: device, seeded generators, logging, checkpoints, callbacks."""

    device: torch.device
    seed: int
    profile: Profile
    dataset: str
    task: str
    checkpoint_dir: Path
    rng: np.random.Generator
    torch_generator: torch.Generator
    sink: MetricSink = field(default_factory=MetricSink)  # the method's metrics; no ground truth
    # Where reported pseudo labels go (the runner: the sink's store); takes labels, returns nothing.
    pseudo_label_hook: Callable[[int, np.ndarray], None] | None = None
    keep_checkpoints: int = 2
    weights: Path | None = None  # local ImageNet weights file (`--weights`) for pretrained backbones
    # `run --init random`: the backbone starts from random weights even where the profile gives
    # pretrained ones (ImageNet or the stand-in).
    random_init: bool = False
    # Set by `report_init` when the method starts its backbone from a checkpoint instead of what
    # the profile gives (the record's `init` then names that file and its sha256).
    reported_init: dict[str, Any] | None = None
    # "fp32", or "bf16": bf16 autocast for training and feature extraction, channels_last conv
    # weights (benchmark.engine.precision); never the metric code.
    precision: str = "fp32"

    @property
    def channels_last(self) -> bool:
        return self.precision == "bf16"

    def autocast(self) -> Any:
        """The autocast context the harness trains an epoch under (off for fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def parallel(self, model: nn.Module) -> nn.Module:
        """What an adapter runs its training forwards through: `model` wrapped in DDP under
        torchrun (gradients averaged over ranks), `model` itself in one process. Keep `model` for
        `state_dict` and `encoder`. Under bf16 the model is first made channels_last."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return distributed.data_parallel(model, self.device)

    def worker_init_fn(self, worker_id: int) -> None:
        """Seeds python and numpy in each DataLoader worker (pass as DataLoader(worker_init_fn=...)).

        torch has already seeded the worker's torch RNG with base_seed + worker_id, base_seed drawn
        from the loader's `generator` (pass one seeded from `torch_generator`) or the seeded global
        RNG; deriving from it keeps workers seeded yet different every epoch (a fixed seed per
        worker id would repeat the same augmentations each epoch)."""
        worker_seed = torch.initial_seed() % 2**32
        random.seed(worker_seed)
        np.random.seed(worker_seed)

    def report_init(self, path: Path) -> None:
        """Say that the backbone's weights were loaded from the checkpoint file `path` (not the
        profile's ImageNet file or random init); the run's record names it by content."""
        self.reported_init = init_from_checkpoint(path)

    def report_pseudo_labels(self, epoch: int, labels: np.ndarray) -> None:
        """Give the harness this epoch's pseudo labels (view order, -1 = outlier) for diagnostics."""
        if self.pseudo_label_hook is not None:
            self.pseudo_label_hook(epoch, np.asarray(labels))

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"epoch-{epoch:04d}.pt"

    def save_checkpoint(self, epoch: int, method_state: Mapping[str, Any]) -> Path:
        """Write the epoch's checkpoint atomically, then its sha256 beside it (`.pt.sha256`), and
        keep the last `keep_checkpoints` (two by default: a corrupt latest one still leaves the
        one before to resume from).

        Under torchrun rank 0 writes it, with every rank's RNG state (`rng_ranks`), and the ranks
        wait for each other."""
        path = self._checkpoint_path(epoch)
        world = distributed.world()
        rng_ranks = distributed.gather_objects(_rng_state(self)) if world.active else None
        if not world.main:
            distributed.barrier()
            return path
        try:
            return self._write_checkpoint(path, epoch, method_state, rng_ranks)
        finally:
            distributed.barrier()

    def _write_checkpoint(self, path: Path, epoch: int, method_state: Mapping[str, Any],
                          rng_ranks: list[Any] | None) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        content = {"epoch": epoch, "method": dict(method_state), "rng": _rng_state(self),
                   "sink": self.sink.state()}
        if rng_ranks is not None:
            content["rng_ranks"] = rng_ranks
        try:
            torch.save(content, tmp)
        except BaseException as exc:  # e.g. the disk is full: leave no partial file behind
            full = disk_is_full(self.checkpoint_dir)
            tmp.unlink(missing_ok=True)
            if full and isinstance(exc, Exception):  # torch says only "file write failed"
                raise OSError(errno.ENOSPC, f"no space left on the disk holding {path.parent} "
                              f"while writing {path.name} ({exc})") from exc
            raise
        failpoints.reached("checkpoint-write")
        digest = _sha256(tmp)
        os.replace(tmp, path)
        sidecar = _digest_path(path)
        sidecar_tmp = sidecar.with_suffix(".tmp")
        sidecar_tmp.write_text(f"{digest}  {path.name}\n")
        os.replace(sidecar_tmp, sidecar)
        for old in sorted(self.checkpoint_dir.glob("epoch-*.pt"))[: -max(1, self.keep_checkpoints)]:
            old.unlink(missing_ok=True)
            _digest_path(old).unlink(missing_ok=True)
        return path

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest intact checkpoint, with the RNG states restored; None on a fresh run.

        A checkpoint whose sha256 does not match, or that torch cannot read, is moved aside
        (`.pt.corrupt`, with a warning naming it) and the one before is used; the epochs after it
        are trained again, to the same numbers. Under torchrun rank 0 chooses the checkpoint and
        every rank restores its own RNG state from it."""
        world = distributed.world()
        if not world.active:
            return self._load_latest()
        chosen = distributed.on_main(self._latest_intact_epoch)
        if chosen is None:
            return None
        state = torch.load(self._checkpoint_path(chosen), map_location="cpu", weights_only=True)
        ranks = state.get("rng_ranks")
        if ranks is None or len(ranks) != world.size:
            found = "one process" if ranks is None else f"{len(ranks)} processes"
            raise ValueError(f"checkpoint {self._checkpoint_path(chosen)} was written by {found}; "
                             f"resume it with the same number of processes (now {world.size}), "
                             "or start again with --force")
        _restore_rng(self, ranks[world.rank])
        self.sink.load_state(state.get("sink", {}))
        return state

    def _latest_intact_epoch(self) -> int | None:
        found = self._load_latest(restore=False)
        return None if found is None else int(found["epoch"])

    def _load_latest(self, restore: bool = True) -> dict[str, Any] | None:
        paths = sorted(self.checkpoint_dir.glob("epoch-*.pt")) if self.checkpoint_dir.is_dir() else []
        for path in reversed(paths):
            problem = _checkpoint_problem(path)
            state = None
            if problem is None:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as exc:  # a truncated or foreign file
                    problem = f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
            if problem is not None:
                aside = path.with_suffix(".pt.corrupt")
                os.replace(path, aside)
                _digest_path(path).unlink(missing_ok=True)
                warnings.warn(f"checkpoint {path} {problem}; moved aside to {aside.name}, "
                              "resuming from the one before it", RuntimeWarning, stacklevel=2)
                continue
            if restore:
                if state.get("rng_ranks") is not None:
                    raise ValueError(
                        f"checkpoint {path} was written by {len(state['rng_ranks'])} processes "
                        "(torchrun); resume it with the same number, or start again with --force")
                _restore_rng(self, state["rng"])
                self.sink.load_state(state.get("sink", {}))
            return state
        return None
