"""Probe adapters for the engine tests, independent of the real method adapters.

Named on the command line as `engine_probes:ProbeMethod` (the tests put tests/ on PYTHONPATH), the
way a user names their own adapter. `reachable` walks the data reachable from an object, closures
and bound methods included, so that a probe can look for labels and file names where a method could.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import types
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import EpochMethod, MethodAdapter, Paper, RunContext

PROBE_PAPER = Paper(title="Engine probe", authors="tests", venue="none")


def reachable(*roots: object) -> list[object]:
    """Every object reachable from `roots` through data: containers, instance attributes, slots,
    array bases, closure cells, default arguments and bound methods' instances. Classes, modules and
    function globals are not followed (they are code, not what was handed over)."""
    seen: dict[int, object] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen[id(obj)] = obj
        if isinstance(obj, types.FunctionType):
            stack.extend(c.cell_contents for c in (obj.__closure__ or ()) if _filled(c))
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
            stack.append(obj.__dict__)
            continue
        if isinstance(obj, types.MethodType):
            stack.extend((obj.__self__, obj.__func__))
            continue
        if isinstance(obj, types.BuiltinMethodType) and not isinstance(obj.__self__, types.ModuleType):
            stack.append(obj.__self__)
            continue
        if isinstance(obj, np.ndarray) and obj.base is not None:
            stack.append(obj.base)
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def arrays_and_strings(objects: list[object]) -> tuple[list[np.ndarray], list[str]]:
    arrays, strings = [], []
    for obj in objects:
        if isinstance(obj, np.ndarray) and obj.dtype != object:
            arrays.append(np.array(obj, copy=True))
        elif isinstance(obj, torch.Tensor) and not obj.is_meta:
            arrays.append(obj.detach().cpu().numpy().copy())
        elif isinstance(obj, str):
            strings.append(obj)
    return arrays, strings


class TinyEncoder(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, dim, 3, padding=1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _to_tensor(size: tuple[int, int]):
    return T.Compose([T.Resize(size), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


class ProbeMethod(EpochMethod):
    """A small method trained by the harness loop: random crops with ctx's generators, a feature
    agreement loss, pseudo labels (argmax of the first k feature dimensions) reported each epoch.

    Deviations:
    - not a published method: a probe of the engine
    """

    key = "engine-probe"
    paper = PROBE_PAPER
    tasks = ("reid", "clustering")
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 2, "lr": 0.05, "batch": 16, "steps": 1, "k": 5, "sleep": 0.0,
        "fail_at_epoch": -1, "noise_stdout": False,
    }

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        self.config, self.ctx = dict(config), ctx
        size = tuple(ctx.profile.reid_size) if ctx.task == "reid" else tuple(np.asarray(view[0]).shape[:2])
        self.size = size
        transform = _to_tensor(size)
        self.images = torch.stack([transform(view[i]) for i in range(len(view))])
        self.model = TinyEncoder()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config["lr"], momentum=0.9)
        if config["noise_stdout"]:
            print("probe noise on sys.stdout")
            sys.stdout.flush()
            os.write(1, b"probe noise on file descriptor 1\n")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        if epoch == cfg["fail_at_epoch"]:
            raise RuntimeError(f"probe failure at epoch {epoch}")
        self.model.train()
        total = 0.0
        for _ in range(cfg["steps"]):
            idx = torch.from_numpy(self.ctx.rng.choice(len(self.images), cfg["batch"], replace=False))
            x = self.images[idx]
            noise = torch.randn(x.shape, generator=self.ctx.torch_generator) * 0.1
            f1 = nn.functional.normalize(self.model(x), dim=1)
            f2 = nn.functional.normalize(self.model(x + noise + 0.05 * torch.randn_like(x)), dim=1)
            loss = -(f1 * f2).sum(1).mean() + f1.mean(0).pow(2).sum()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        self.model.eval()
        with torch.no_grad():
            feats = self.model(self.images)
        head = feats[:, : cfg["k"]]
        labels = head.argmax(1).numpy()
        strength = head.max(1).values.numpy()
        labels[strength < np.quantile(strength, 0.1)] = -1  # the weakest tenth are outliers
        self.ctx.report_pseudo_labels(epoch, labels)
        if cfg["sleep"]:
            time.sleep(cfg["sleep"])
        return {"loss": total / cfg["steps"], "num_clusters": int(np.unique(labels[labels >= 0]).size)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def encoder(self) -> nn.Module:
        return self.model


class FailingProbe(ProbeMethod):
    """ProbeMethod that fails in its first epoch.

    Deviations:
    - not a published method: a probe of failure handling
    """

    key = "failing-probe"
    defaults: ClassVar[dict[str, Any]] = {**ProbeMethod.defaults, "fail_at_epoch": 0}


# What LabelSnoop found during its last fit (set by the probe, read by the test).
SNOOPED: dict[str, Any] = {}


class LabelSnoop(MethodAdapter):
    """Inspects everything reachable from its fit arguments (and itself) and keeps what it found.

    Deviations:
    - not a published method: a probe of label isolation
    """

    key = "label-snoop"
    paper = PROBE_PAPER
    tasks = ("reid", "clustering")
    defaults: ClassVar[dict[str, Any]] = {"dim": 8}

    def fit(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> nn.Module:
        objects = reachable(self, view, config, ctx)
        arrays, strings = arrays_and_strings(objects)
        try:
            camids = np.array(view.camids, copy=True)
        except PermissionError as exc:
            camids = exc
        SNOOPED.clear()
        SNOOPED.update(arrays=arrays, strings=strings, camids=camids, num_objects=len(objects),
                       view_len=len(view))
        torch.manual_seed(ctx.seed)
        return nn.Sequential(nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten(), nn.Linear(24, config["dim"]))


class DeclaredLabelSnoop(LabelSnoop):
    """LabelSnoop that declares `uses_labels`: the positive control of the one exception.

    Deviations:
    - not a published method: a probe of the supervised exception
    """

    key = "declared-label-snoop"
    uses_labels = True


class EpochLabelSnoop(ProbeMethod):
    """ProbeMethod that, every epoch, inspects everything reachable from its fit arguments and
    itself (the harness's scorers have run by the second epoch) and keeps what it found.

    Deviations:
    - not a published method: a probe of label isolation in validation mode and sweep trials
    """

    key = "epoch-label-snoop"
    defaults: ClassVar[dict[str, Any]] = {
        **ProbeMethod.defaults, "epochs": 2, "model_selection": "last", "validation_fraction": 0.2,
    }

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        super().setup(view, config, ctx)
        self.view, self.given_config = view, config
        SNOOPED.update(arrays=[], strings=[], num_objects=0, view_len=len(view))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        objects = reachable(self, self.view, self.given_config, self.ctx)
        arrays, strings = arrays_and_strings(objects)
        SNOOPED["arrays"] += arrays
        SNOOPED["strings"] += strings
        SNOOPED["num_objects"] = max(SNOOPED["num_objects"], len(objects))
        return super().train_epoch(epoch)


class CameraLabelSnoop(LabelSnoop):
    """LabelSnoop that declares camera-id use.

    Deviations:
    - not a published method: a probe of label isolation
    """

    key = "camera-label-snoop"
    uses_camera_ids = True


class TunableProbe(ProbeMethod):
    """ProbeMethod with a search space, for sweeps; fails when lr exceeds `fail_above_lr`.

    Deviations:
    - not a published method: a probe of sweeps
    """

    key = "tunable-probe"
    defaults: ClassVar[dict[str, Any]] = {**ProbeMethod.defaults, "fail_above_lr": 1.0}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", 0.01, 0.1, log=True),
                "k": trial.suggest_int("k", 3, 8)}

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        if config["lr"] > config["fail_above_lr"]:
            raise RuntimeError(f"probe failure: lr {config['lr']} > {config['fail_above_lr']}")
        super().setup(view, config, ctx)


class SelectingProbe(ProbeMethod):
    """ProbeMethod whose model is chosen on a validation split carved from the training data (the
    harness's `model_selection`); reports its training view's size.

    Deviations:
    - not a published method: a probe of model selection
    """

    key = "selecting-probe"
    defaults: ClassVar[dict[str, Any]] = {
        **ProbeMethod.defaults, "epochs": 3, "model_selection": "validation",
        "validation_fraction": 0.2,
    }

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        super().setup(view, config, ctx)
        self.view_size = len(view)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        return {**super().train_epoch(epoch), "view_size": float(self.view_size)}


class CategoricalProbe(TunableProbe):
    """TunableProbe whose search space is one categorical setting, for grid sweeps.

    Deviations:
    - not a published method: a probe of grid sweeps
    """

    key = "categorical-probe"

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"k": trial.suggest_categorical("k", [3, 5, 8])}


class SlowProbe(ProbeMethod):
    """ProbeMethod that rests after each of its four epochs, so that a test can stop it mid-run
    (a Slurm cancel or requeue) between two epoch checkpoints.

    Deviations:
    - not a published method: a probe of launchers
    """

    key = "slow-probe"
    defaults: ClassVar[dict[str, Any]] = {**ProbeMethod.defaults, "epochs": 4, "sleep": 2.5}
