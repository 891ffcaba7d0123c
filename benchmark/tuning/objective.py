"""One sweep trial: train a method on the carved training part and score it on the validation part.

The trial runs the same code path as `run` (view, seeding, the harness's epoch loop, evaluation) on
`ValidationSplit.train`; the dataset's query/gallery (re-ID) are never loaded into the trial, so no
test number can reach the objective. After every epoch the harness evaluates the encoder on the
validation split and reports it to Optuna, which may prune the trial (MedianPruner). That scorer is
a hook of the harness's epoch loop (`run_epochs`): nothing the method receives refers to it or to
the split. The objective
is the validation metric of the last epoch, the same model `run` reports.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.engine.contract import EpochMethod, MethodAdapter
from benchmark.engine.profiles import Profile
from benchmark.engine.runner import HistorySink, Trained, build_view, fit_cell, make_context
from benchmark.engine.seeding import cpu_threads, seed_everything
from benchmark.engine.selection import validation_metric, validation_score
from benchmark.tuning.validation import ValidationSplit


class Pruned(Exception):
    """The pruner stopped the trial after `epoch` (raised from the harness's epoch callback)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


@dataclass
class TrialOutcome:
    value: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    epoch_values: list[float] = field(default_factory=list)
    trained: Trained | None = None  # the encoder and what the method reported (for the audit)


def run_trial(
    cls: type[MethodAdapter],
    params: Mapping[str, Any],
    split: ValidationSplit,
    *,
    dataset: str,
    profile: Profile,
    seed: int,
    device: torch.device,
    workdir: Path,
    report: Callable[[int, float], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrialOutcome:
    """Train `cls(**params)` on `split.train` and return the validation objective.

    `report(epoch, value)` is called after every epoch of an `EpochMethod` with the validation
    metric; when it returns True the trial stops (`Pruned`). The trial's checkpoints live in
    `workdir` and are removed when it ends.
    """
    adapter = cls(**dict(params))
    config = adapter.resolve_config(dataset, profile.name)
    metric = validation_metric(split)
    epoch_values: list[float] = []
    last: dict[str, Any] = {}
    threads = profile.cpu_threads if device.type == "cpu" else None
    try:
        with cpu_threads(threads):
            seed_everything(seed, deterministic=True, device=device)
            view, hidden = build_view(split.train, cls, seed)
            ctx = make_context(
                device=device, seed=seed, profile=profile, dataset=dataset,
                task=split.train.kind, checkpoint_dir=workdir / "checkpoints",
                sink=HistorySink(f"[trial {workdir.name}] ", log),
            )
            hooks = []
            if isinstance(adapter, EpochMethod):
                def after_epoch(epoch: int, encoder: nn.Module) -> None:
                    last.clear()
                    last.update(validation_score(encoder, split, profile, device, seed))
                    value = float(last[metric])
                    epoch_values.append(value)
                    if report is not None and report(epoch, value):
                        raise Pruned(epoch)

                hooks.append(after_epoch)
            trained = fit_cell(adapter, view, hidden, config, ctx, after_checkpoint=hooks)
            del view, hidden
            # the last epoch's evaluation is the reported model's: no need to repeat it
            metrics = dict(last) or validation_score(trained.encoder, split, profile, device, seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return TrialOutcome(value=float(metrics[metric]), metrics=metrics, history=trained.history,
                        epoch_values=epoch_values, trained=trained)
