"""Model selection on a validation split carved from the training data, for methods whose paper
picks its model by validation accuracy (similarity-guidance's Algorithm 1).

Integrity rule 1 of DESIGN.md: no test-split number may choose a model. The harness carves the
hold-out from the training split (`benchmark.tuning.validation`), trains the method on the rest,
scores the encoder on the hold-out after every epoch (the method never sees those labels: the
selector is a hook of the harness's epoch loop, `run_epochs`, and nothing the method receives
refers to it), keeps the best epoch's weights, and evaluates both that
model and the last one on the test split. The selector's state is written atomically after every
epoch, before the harness's checkpoint, so a resumed run selects as an uninterrupted one does.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.data.types import ReidDataset
from benchmark.metrics import OBJECTIVE
from benchmark.engine import distributed
from benchmark.engine.evaluate import evaluate_encoder
from benchmark.engine.profiles import Profile
from benchmark.tuning.validation import ValidationSplit

SELECTIONS = ("last", "validation")
SELECTION_KEY = "model_selection"
FRACTION_KEY = "validation_fraction"
SELECTED = "selected.pt"  # in the cell's checkpoint folder


def selection_mode(config: Mapping[str, Any]) -> str:
    """"last" (the default) or "validation"; ValueError naming the bad value otherwise."""
    mode = config.get(SELECTION_KEY, "last")
    if mode not in SELECTIONS:
        raise ValueError(f"{SELECTION_KEY} must be one of {', '.join(SELECTIONS)}, got {mode!r}")
    return str(mode)


def validation_metric(split: ValidationSplit) -> str:
    return OBJECTIVE["reid" if isinstance(split.validation, ReidDataset) else "clustering"]


def validation_score(
    encoder: nn.Module, split: ValidationSplit, profile: Profile, device: torch.device, seed: int
) -> dict[str, Any]:
    """The harness's evaluation on the validation part; the encoder's train/eval mode is restored."""
    was_training = encoder.training
    try:
        metrics, _ = evaluate_encoder(encoder, split.validation, profile=profile, device=device,
                                      seed=seed)
    finally:
        encoder.train(was_training)
    return metrics


class BestOnValidation:
    """Epoch hook keeping the weights of the epoch with the best validation metric.

    Ties keep the earlier epoch. `path` holds the per-epoch scores and the best weights between a
    crash and its resume.
    """

    def __init__(self, split: ValidationSplit, profile: Profile, device: torch.device, seed: int,
                 path: Path) -> None:
        self.split, self.profile, self.device, self.seed, self.path = (
            split, profile, device, seed, path)
        self.metric = validation_metric(split)
        self.scores: dict[int, dict[str, Any]] = {}
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.scores = {int(e): dict(m) for e, m in state["scores"].items()}
            self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]

    def __call__(self, epoch: int, encoder: nn.Module) -> None:
        # a re-run epoch (crash between this save and the checkpoint) replaces its own entry
        self.scores = {e: m for e, m in self.scores.items() if e < epoch}
        self.scores[epoch] = validation_score(encoder, self.split, self.profile, self.device,
                                              self.seed)
        best = max(self.scores, key=lambda e: (float(self.scores[e][self.metric]), -e))
        if best == epoch:
            self.best_state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
        self.best_epoch = best
        if not distributed.world().main:  # rank 0 keeps the file; every rank keeps the state
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"scores": self.scores, "best_epoch": self.best_epoch,
                    "best_state": self.best_state}, tmp)
        os.replace(tmp, self.path)

    def last_is_best(self) -> bool:
        """Whether the last scored epoch is the selected one (its model is then the trained one)."""
        return self.best_epoch is not None and self.best_epoch == max(self.scores)

    def selected(self, last: nn.Module) -> nn.Module:
        """A copy of the trained encoder holding the best epoch's weights."""
        if self.best_state is None:
            raise RuntimeError("no epoch was scored on the validation split")
        model = copy.deepcopy(last)
        model.load_state_dict(self.best_state)
        return model

    def model_description(self) -> str:
        """The record's `protocol["model"]`: which epoch's weights the reported metrics are of."""
        if self.best_epoch is None:
            return "last epoch (no epoch was scored on the validation split)"
        last = max(self.scores)
        chosen = "the last epoch" if self.best_epoch == last else f"epoch {self.best_epoch}"
        return (f"{chosen} of epochs 0-{last}: best validation {self.metric} on a hold-out "
                "carved from the training data")

    def summary(self) -> dict[str, Any]:
        return {
            "mode": "validation",
            "metric": self.metric,
            "best_epoch": self.best_epoch,
            "best_value": float(self.scores[self.best_epoch][self.metric])
            if self.best_epoch is not None else None,
            "per_epoch": [{"epoch": e, **{k: v for k, v in m.items()
                                          if isinstance(v, (int, float))}}
                          for e, m in sorted(self.scores.items())],
            "validation": self.split.description,
        }
