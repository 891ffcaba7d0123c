"""Adapters that cheat, each in its own way: what `benchmark audit` must catch and name.

Each finds data a method must not see, by a route the adapter contract cannot close (Python lets
code in the same process read any object), and lets it shape the encoder and the pseudo labels it
reports, as a method that used it for training would. Named on the command line as
`leaky_adapters:Class` (tests/ on the path), the way a user names their own adapter.
"""

from __future__ import annotations

import gc
import hashlib
import io
import re
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from benchmark.data.types import ReidDataset, ReidSplit
from benchmark.data.unlabeled import HiddenLabels, UnlabeledView
from benchmark.engine.contract import EpochMethod, MethodAdapter, Paper, RunContext
from benchmark.engine.selection import BestOnValidation
from benchmark.tuning.validation import ValidationSplit
from engine_probes import TinyEncoder, reachable

LEAK_PAPER = Paper(title="Leak probe", authors="tests", venue="none")


def _value(data: Any) -> float:
    """A number that changes whenever `data` does (what the leak feeds into the weights)."""
    raw = np.ascontiguousarray(np.asarray(data)).tobytes() if not isinstance(data, bytes) else data
    return int(hashlib.sha256(raw).hexdigest()[:8], 16) / 2**32


def _encoder(seed: int, value: float) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyEncoder()
    with torch.no_grad():
        model.body[2].bias += value  # the leaked data moves the weights
    return model


class _OneShotLeak(MethodAdapter):
    """Builds its encoder from what `leak` returns; reports the leaked labels as pseudo labels."""

    paper = LEAK_PAPER
    tasks = ("reid", "clustering")
    defaults: ClassVar[dict[str, Any]] = {}

    def leak(self, view: UnlabeledView, ctx: RunContext) -> np.ndarray:
        raise NotImplementedError

    def fit(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> nn.Module:
        leaked = self.leak(view, ctx)
        if leaked.size == len(view) and np.issubdtype(leaked.dtype, np.integer):
            ctx.report_pseudo_labels(0, leaked)
        return _encoder(ctx.seed, _value(leaked))


class GcLabelSnoop(_OneShotLeak):
    """Walks `gc.get_objects()` for the harness's hidden labels of its own training view.

    Deviations:
    - not a published method: reads the hidden training labels from the process's memory
    """

    key = "gc-label-snoop"

    def leak(self, view: UnlabeledView, ctx: RunContext) -> np.ndarray:
        for obj in gc.get_objects():
            if type(obj) is HiddenLabels and len(obj.labels) == len(view):
                return np.asarray(obj.labels, dtype=np.int64)
        return np.zeros(0, dtype=np.int64)


class FileNameSnoop(_OneShotLeak):
    """Finds the training split's file paths in memory and parses the identity from each name.

    Deviations:
    - not a published method: reads identities from the training images' file names
    """

    key = "file-name-snoop"
    tasks = ("reid",)

    def leak(self, view: UnlabeledView, ctx: RunContext) -> np.ndarray:
        for obj in gc.get_objects():
            if type(obj) is ReidSplit and obj.num_images == len(view):
                found = [re.match(r"(-?\d+)_c\d", p.name) for p in map(_path, obj.paths)]
                return np.array([int(m.group(1)) if m else -1 for m in found], dtype=np.int64)
        return np.zeros(0, dtype=np.int64)


class TestSplitTrainer(_OneShotLeak):
    """Finds the loaded dataset in memory and learns from its query and gallery images.

    Deviations:
    - not a published method: trains on the test split
    """

    key = "test-split-trainer"
    tasks = ("reid",)

    def leak(self, view: UnlabeledView, ctx: RunContext) -> np.ndarray:
        for obj in gc.get_objects():
            if type(obj) is ReidDataset and "validation" not in obj.query.name:
                pixels = [np.asarray(Image.open(io.BytesIO(_path(p).read_bytes())).convert("RGB"))
                          for p in list(obj.query.paths[:8]) + list(obj.gallery.paths[:8])]
                return np.stack([p.mean(axis=(0, 1)) for p in pixels]).astype(np.float64)
        return np.zeros(0)


class ContextSnoop(EpochMethod):
    """Looks through `ctx` and then up the harness's stack frames for the scorers' data: the
    validation hold-out (a model selector's or a sweep trial's split) and the hidden labels, and
    trains on their labels each epoch (the hole the old `ctx.selection_callback` left open).

    Deviations:
    - not a published method: reads labels through the run context and the harness's frames
    """

    key = "context-snoop"
    paper = LEAK_PAPER
    tasks = ("reid", "clustering")
    defaults: ClassVar[dict[str, Any]] = {"epochs": 2}

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        self.ctx, self.n = ctx, len(view)
        self.model = _encoder(ctx.seed, 0.0)

    def _find(self) -> np.ndarray:
        roots: list[object] = [self.ctx]
        frame = sys._getframe(1)
        while frame is not None:
            roots.extend(frame.f_locals.values())
            frame = frame.f_back
        found = []
        for obj in reachable(*roots):
            if type(obj) is BestOnValidation:
                obj = obj.split
            if type(obj) is ValidationSplit:
                held = obj.validation
                labels = held.query.pids if isinstance(held, ReidDataset) else held.labels
                found.append(np.asarray(labels, dtype=np.int64))
            elif type(obj) is HiddenLabels and len(obj.labels) == self.n:
                found.append(np.asarray(obj.labels, dtype=np.int64))
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        leaked = self._find()
        with torch.no_grad():
            self.model.body[2].bias += _value(leaked)
        return {"leaked": float(leaked.size)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def encoder(self) -> nn.Module:
        return self.model


def _path(p: Any):
    from pathlib import Path

    return Path(p)


class LabelsDeclaredButFileNamesRead(_OneShotLeak):
    """Declares `uses_labels` (so the training labels may change it) but reads the training images'
    file names as well: the audit must still catch the file names.

    Deviations:
    - not a published method: declared labels, undeclared file names
    """

    key = "labels-declared-file-names-read"
    tasks = ("reid",)
    uses_labels = True

    def leak(self, view: UnlabeledView, ctx: RunContext) -> np.ndarray:
        return np.concatenate([np.asarray(view.labels, dtype=np.int64),
                               FileNameSnoop().leak(view, ctx)])


class LabelsDeclaredButUnused(_OneShotLeak):
    """Declares `uses_labels` and never reads them: the audit says the declaration is wrong.

    Deviations:
    - not a published method: a false declaration
    """

    key = "labels-declared-unused"
    tasks = ("reid",)
    uses_labels = True

    def leak(self, view: UnlabeledView, ctx: RunContext) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)
