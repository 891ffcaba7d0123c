"""Supervised ceiling: the same backbone trained on the true training labels.

Why it exists: every unsupervised re-ID paper prints a supervised row as the upper bound its method
approaches, and on the embedded `synthetic-reid` it shows whether the problem is learnable at the
profile's scale at all (if supervised training cannot rank identities, no unsupervised ranking
below it means anything). It is the one adapter the harness hands labels to: it declares
`uses_labels`, the runner gives it a `LabeledView`, and records, tables and plots mark it "uses
labels" and never rank it among the unsupervised methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.unlabeled import LabeledView, UnlabeledView
from benchmark.engine.contract import Bound, EpochMethod, Paper, RunContext
from benchmark.engine.method_registry import register_method
from methods.common.backbones import BNNeckEncoder, draw_seed, forked_torch_rng, run_backbone
from methods.common.features import training_loader
from methods.common.samplers import PKSampler
from methods.common.transforms import train_transform
from methods.common.triplet import batch_hard_triplet_loss


@register_method
class Supervised(EpochMethod):
    """The strong supervised baseline of Luo et al. (BoT): identity cross-entropy with label
    smoothing on a BNNeck, batch-hard triplet loss on the pooled feature, P x K batches, Adam with
    a linear warm-up and step decay, last stride 1. Evaluation uses the L2-normalised BNNeck
    feature, as every method here is evaluated.

    Deviations:
    - Not one of the reproduced papers: the "supervised" upper-bound row the unsupervised re-ID
      papers print, trained here with the profile's backbone and input size, so it is comparable
      only with methods run under the same profile. It uses the training labels and is never
      ranked among unsupervised methods.
    - BoT's center loss is left out (BoT itself reports it as a small extra); the recipe's other
      tricks (warm-up, random erasing, label smoothing, last stride 1, BNNeck) are kept.
    - quick / ci profiles: the small ResNet from the profile's pretrained stand-in, 64x32 / 32x16
      inputs, padding scaled with the input, lr 3.5e-3 (ten times BoT's: the small network trains
      from a short schedule), and epochs, warm-up and decay steps scaled to the schedule.
    """

    key = "supervised"
    paper = Paper(
        title="Bag of Tricks and A Strong Baseline for Deep Person Re-identification",
        authors="Hao Luo, Youzhi Gu, Xingyu Liao, Shenqi Lai, Wei Jiang",
        venue="CVPR Workshops 2019",
        year=2019,
        seed_file=None,
        reference="arXiv:1903.07071",
    )
    tasks = ("reid",)
    uses_camera_ids = False
    uses_labels = True
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 120,
        "batch_size": 64,
        "num_instances": 4,
        "lr": 3.5e-4,
        "weight_decay": 5e-4,
        "warmup_epochs": 10,
        "milestones": [40, 70],
        "gamma": 0.1,
        "label_smoothing": 0.1,
        "margin": 0.3,
        "last_stride": 1,
        "pad": 10,
        "erasing": 0.5,
    }
    bounds: ClassVar[dict[str, Bound]] = {
        "num_instances": Bound(low=1), "warmup_epochs": Bound(low=0), "gamma": Bound(low=0, high=1),
        "label_smoothing": Bound(low=0, high=1, high_open=True), "margin": Bound(low=0),
        "last_stride": Bound(low=1, high=2), "pad": Bound(low=0), "erasing": Bound(low=0, high=1),
    }
    profile_overrides: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"epochs": 30, "lr": 3.5e-3, "warmup_epochs": 2, "milestones": [20], "pad": 3},
        "ci": {"epochs": 2, "batch_size": 32, "lr": 3.5e-3, "warmup_epochs": 0, "milestones": [1],
               "pad": 1},
    }

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}

    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        if not isinstance(view, LabeledView):
            raise TypeError(f"{self.key} trains on labels and was given no LabeledView; the "
                            "runner builds one only for adapters that declare uses_labels")
        self.config, self.ctx = dict(config), ctx
        self.device = torch.device(ctx.device)
        self.view = view
        _, self.labels = np.unique(view.labels, return_inverse=True)
        size = tuple(ctx.profile.reid_size)
        self.train_tf = train_transform(size, pad=int(config["pad"]),
                                        erasing=float(config["erasing"]))
        self.model = BNNeckEncoder(run_backbone(ctx, last_stride=int(config["last_stride"])))
        with forked_torch_rng(draw_seed(ctx.torch_generator), self.device):
            self.classifier = nn.Linear(self.model.feature_dim, int(self.labels.max()) + 1,
                                        bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)
        self.model.to(self.device)
        self.classifier.to(self.device)
        params = [p for p in [*self.model.parameters(), *self.classifier.parameters()]
                  if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=float(config["lr"]),
                                          weight_decay=float(config["weight_decay"]))
        warmup, milestones = int(config["warmup_epochs"]), [int(m) for m in config["milestones"]]
        gamma = float(config["gamma"])

        def factor(epoch: int) -> float:  # BoT: linear warm-up from 1/10, then step decay
            w = 0.1 + 0.9 * epoch / warmup if epoch < warmup else 1.0
            return w * gamma ** sum(epoch >= m for m in milestones)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        ctx, c = self.ctx, self.config
        targets_all = torch.from_numpy(self.labels).to(self.device)
        sampler = PKSampler(self.labels, batch_size=int(c["batch_size"]),
                            num_instances=int(c["num_instances"]),
                            generator=np.random.default_rng(ctx.rng.integers(2**63)))
        loader = training_loader(self.view, self.train_tf, ctx, self.device,
                                 batch_sampler=sampler)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.model.train()
        total, correct, seen, steps = 0.0, 0, 0, 0
        for images, index in loader:
            images = images.to(self.device, non_blocking=True)
            targets = targets_all[index.to(self.device)]
            pooled = self.model.backbone(images)
            logits = self.classifier(self.model.neck(pooled))
            loss = (F.cross_entropy(logits, targets, label_smoothing=float(c["label_smoothing"]))
                    + batch_hard_triplet_loss(pooled, targets, margin=float(c["margin"]),
                                              normalize=False))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            correct += int((logits.argmax(1) == targets).sum())
            seen += int(targets.numel())
            steps += 1
        self.scheduler.step()
        return {"loss": total / max(steps, 1), "train_accuracy": correct / max(seen, 1),
                "lr": lr, "iterations": float(steps)}

    def encoder(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "classifier": self.classifier.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
