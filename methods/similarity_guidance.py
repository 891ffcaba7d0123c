"""Similarity guidance (Chen, Jin, Wang, Yang, Liao, Meng, "Unsupervised Visual Feature Learning
Based on Similarity Guidance"; seed file 001): bottom-up merging with an individual-group distance,
a DBSCAN first clustering and a memory + triplet loss.

Why a subclass of `methods.buc.BUC`: the paper is BUC with three changes (Algorithm 1): after the
instance-discrimination stage the first pseudo labels come from DBSCAN with a small radius instead
of a merge step; later merge steps rank cluster pairs by the individual-group distance
(`methods.common.group_distance`, Eq. 3-8) instead of BUC's minimum distance; and training after
each relabelling adds a batch-hard triplet loss on PK batches to the repelled loss (Eq. 9-11).
Everything else (network and head, memory, optimiser, learning rates, the epoch layout and
checkpoint state) is BUC's, inherited rather than rewritten, so that the two differ exactly where
the papers do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import ConfigError, Paper, RunContext
from benchmark.engine.method_registry import register_method
from methods.buc import BUC
from methods.common.clustering import dbscan_pseudo_labels
from methods.common.features import training_loader
from methods.common.group_distance import (
    SampleDistance,
    individual_group_distance,
    parse_terms,
)
from methods.common.losses import repelled_loss
from methods.common.memory import ClusterMemory
from methods.common.merging import merge_step, merges_per_step
from methods.common.samplers import PKSampler
from methods.common.transforms import IMAGENET_MEAN, IMAGENET_STD, test_transform
from methods.common.triplet import batch_hard_triplet_loss

FIRST_CLUSTERINGS = ("dbscan", "none")
LOSSES = ("joint", "repelled")


def square_train_transform(size: tuple[int, int], *, flip: bool, crop_scale: float) -> T.Compose:
    """BUC's augmentation for square object images: a random crop of `crop_scale`-100 % of the
    area with aspect 3/4-4/3 (not the person-shaped 1/3-1/2), resized back, optional flip."""
    steps: list[Any] = []
    if crop_scale < 1.0:
        steps.append(T.RandomResizedCrop(size, scale=(crop_scale, 1.0), ratio=(3 / 4, 4 / 3),
                                         interpolation=T.InterpolationMode.BICUBIC))
    else:
        steps.append(T.Resize(size, interpolation=T.InterpolationMode.BICUBIC))
    if flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def find_init_checkpoint(
    setting: str, checkpoint_dir: Path, source: str = "cifar10"
) -> Path | None:
    """The checkpoint to initialise from: `setting` if it is a path; for "auto", the last
    checkpoint of the finished `source` cell with the same method, profile and seed in the same
    results folder (`<out>/<dataset>/<method>/<profile>/seed<S>/checkpoints`), if there is one."""
    if not setting:
        return None
    if setting != "auto":
        path = Path(setting).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"init_checkpoint {path}: no such file")
        return path
    cell = Path(checkpoint_dir).parent
    if len(cell.parts) < 5:
        return None
    sibling = cell.parents[3] / source / cell.parts[-3] / cell.parts[-2] / cell.parts[-1]
    try:
        finished = json.loads((sibling / "record.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return None
    found = sorted((sibling / checkpoint_dir.name).glob("epoch-*.pt")) if finished else []
    return found[-1] if found else None


def backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """Backbone weights from a harness checkpoint of this family (method state -> model ->
    backbone.*) or from a plain backbone state dict."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "method" in state:
        state = state["method"]["model"]
    if not isinstance(state, Mapping):
        raise TypeError(f"init_checkpoint {path}: holds no state dict")
    inner = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return inner or dict(state)


@register_method
class SimilarityGuidance(BUC):
    """Similarity guidance: instance discrimination with the repelled loss (every image its own
    class), then DBSCAN with a small radius for the first pseudo labels, then bottom-up merging of
    N * p cluster pairs per step ranked by the individual-group distance D = alpha d1 + beta d2 +
    gamma d3, retraining after every relabelling with eta * kappa + (1 - eta) * omega (repelled
    loss over the cluster memory + batch-hard triplet) on PK batches.

    Paper defaults (Sec. 3, 4.3, 4.4, Table 2): ResNet-50 ImageNet (STL-10: initialised from a
    CIFAR-10-trained model), 256x128; batch 64 with 4 instances per class (a class with fewer
    images is sampled with repetition); first round 20 epochs, then 4 per step; merge percent
    p = 0.05, 1 / p steps, the first of which is the DBSCAN clustering (eps 0.1); D with
    alpha, beta, gamma = 0.5, 0.5, 0.03 and neighbourhood depths (20, 10, 5); loss with triplet
    proportion 1 - eta = 0.1 and margin 0.2. Unstated, taken from BUC (the paper's basis and
    baseline, its reference [5]): the network head (Linear -> BN -> L2 -> dropout 0.5), the memory
    temperature 0.1 and update V <- (V + v) / 2, SGD (momentum 0.9, Nesterov, weight decay 5e-4,
    backbone at 0.1 x lr), lr 0.1 in the first round (x0.1 after 16 epochs), 0.01 afterwards, and
    the training crop and flip.
    Ablation switches: `loss` ("joint" / "repelled": Table 3 "+loss"), `first_clustering`
    ("dbscan" / "none": Table 3 "+clustering"), `distance` (a "+"-joined subset of d1, d2, d3:
    Table 4, and Table 3 "+distance" = "d1+d2+d3" against "d1"); `merge_steps` 0 is Table 3
    "basic".

    Deviations:
    - Model selection (Algorithm 1 keeps the model with the best validation accuracy) is done by
      the harness (`model_selection` "validation", `benchmark.engine.selection`): it holds out
      `validation_fraction` (0.2) of the training split (re-ID: of the training identities;
      clustering: class-stratified images), trains on the rest, scores the encoder on the hold-out
      after every epoch (mAP / ACC; the adapter never sees those labels) and reports the best
      epoch's model as `metrics`, the last step's as `metrics_last`. So this method trains on 80 %
      of the training data, unlike the other adapters; `model_selection` "last" trains on all of
      it and reports the last step. Sweeps score the last step of each trial. On a clustering set
      the reported metrics are computed on the images outside the hold-out (the paper scores every
      image): no image whose label selected the model is scored (DESIGN.md, integrity rule 1).
      Algorithm 1 evaluates once per merge step (line 13, after the step's retraining; the first
      round is never a candidate); the harness scores every epoch, first round included, so the
      candidates are a superset of the paper's.
    - Merges per step are N * p (Algorithm 1, lines 2 and 8: `num = N * p`, a fixed count). Sec.
      4.3's example reads p differently ("1000 classes ... reduced by 1000 * 0.05 = 50", i.e. p
      times the current number of classes, which shrinks every step); the algorithm is followed.
    - After each merge the lookup table V takes the normalised mean features of the new classes
      (Algorithm 1, line 11: V "temporarily stores the features of each class"). BUC's fixed code,
      which this method otherwise builds on, restarts its memory from zeros (`buc`).
    - The paper runs 1 / p steps but says the number of steps falls as eps grows, i.e. merging
      stops when clusters run out and the best step is picked by validation. Here the schedule is
      fixed in advance: a merge step merges at most down to `min_clusters_fraction` * N clusters
      (0.05 by default: where the 1 / p steps would end without the first clustering) and steps
      past that floor only train.
    - Distance scale of the first clustering: DBSCAN (min_samples 1, so every pair within eps is
      linked, the paper's breadth-first grouping, and no sample is an outlier) runs on
      alpha d1 + beta d2 between samples, d1 the Euclidean distance of L2-normalised pooled
      features (0-2) and d2 in 0-1. d3 is left out there: among singletons it is the constant
      2 gamma. The switches that drop d1 or d2 from D drop them here too.
    - The depths (20, 10, 5) are read as the k-reciprocal encoding of Zhong et al. that the paper
      cites: k1 = 20 reciprocal neighbours, expanded by the 10-reciprocal sets of members that
      overlap by more than 2/3, then averaged over the 5 nearest neighbours (local query
      expansion); phi = exp(-d1) unnormalised, as Eq. 6 is written.
    - The individual-group distance between two clusters is that of their closest pair of members
      (the paper: "select the sample pairs of different classes with the smallest joint
      distance"), d3 taken at the cluster sizes of the step's start; ties broken by the lower pair
      of cluster ids (`methods.common.merging`).
    - The triplet term is batch-hard (farthest positive, closest negative in the batch; Eq. 10
      names no mining) on the L2-normalised training embedding; Eq. 10-11 sum over samples, the
      loss here is the batch mean of both terms.
    - The first round (every image its own class) samples plain shuffled batches: PK sampling
      would only repeat each image 4 times. PK batches (4 instances) start after the first
      clustering; `iters` = 0 makes a step's epoch one PK pass over the clusters.
    - d3 (cluster sizes) is on, at gamma = 0.03, on every dataset, as the distance D of Sec. 3
      is written: the paper adds it "selectively" and says the balance term "needs to be adjusted"
      on general datasets without saying how. (Minimum-distance merging without a size term is
      known to chain clusters together; BUC adds its diversity term for the same reason.)
    - Image clustering trains at the dataset's own image size (the size the harness evaluates),
      with a square crop (aspect 3/4-4/3) and no flip on the digit sets.
    - STL-10: initialised from the last checkpoint of the same seed's finished CIFAR-10 cell of
      this method and profile in the same results folder (`init_checkpoint` = "auto"), or from the
      file `init_checkpoint` names; when none exists the run starts from the profile's backbone,
      and every epoch of the record's history says so (`init_from_checkpoint` = 0).
    - quick / ci profiles: on re-ID data the small ResNet from the profile's pretrained stand-in
      at the paper's backbone rate (0.1 x lr); on clustering sets a small ResNet from random
      weights at the full rate; a 128-d / 64-d embedding. quick: 10 first-round epochs of 30 batches of 64 (the
      lr drops x0.1 after epoch 8), then 7 steps (DBSCAN, then merges of 10 % of N down to a floor
      of 10 % of N) of one epoch of 30 PK batches of 16 x 4; ci: 1 + 2 epochs of 4 batches of 8,
      merges of 25 % of N, floor 20 % of N, and the paper's eps 0.1.
    - quick's first-round length and eps were chosen on a validation split, never on test data:
      `benchmark sweep --method similarity-guidance --dataset synthetic-reid --profile quick
      --trials 12 --jobs 2 --tune first_epochs,eps --no-prune` (seed 0; 20 % of the training
      identities held out). Best validation mAP 21.3 % at eps 0.379 / 10 epochs, next 21.1 % at
      eps 0.387 / 9; every trial with eps <= 0.26 scored 17.8-19.0 %. eps 0.38 on the 0-2 scale
      is far above the paper's 0.1: after a short first round a from-scratch network's features
      are much less tight than a pretrained ResNet-50's. The best eps lies near the top of the
      searched range (0.05-0.4). Rerun (same command) after the quick profile started from the
      pretrained stand-in: best 53.5 % at eps 0.387 / 9 epochs, next 52.2 % at eps 0.379 / 10,
      the same two points on top as before in swapped order, and every trial with eps <= 0.26
      at 46.6-51.3 %. 1.3 points on one seed's hold-out is within seed noise, so the setting
      stays.
    - On quick synthetic-reid, similarity guidance ends just below the direct-transfer floor (34.2
      +- 1.1 % mAP against 35.1 % over seeds 0-2), from its mechanism: its first round trains every
      image as its own class for 10 epochs, which pushes a person's images apart as BUC's stage 0
      does (see `buc`; on seed 0's hold-out, mAP falls from 53.2 % after epoch 1 to 49.9 % after
      epoch 9). The first DBSCAN then gives about 490 classes for 1,944 images and the merges end
      near 190, but one epoch per merge step only wins back what the first round took (52.0 % at the
      last epoch). It also trains on 80 % of the training images: the rest is the hold-out that
      selects its model.
    - d3 keeps the paper's gamma 0.03 on `digits`: a validation sweep of weight_d3 (8 trials,
      `--tune weight_d3`, 0.001-0.028) scored 0.788-0.822 ACC with no trend, so nothing argued
      for another value.
    """

    # its own merge and training step are not written for torchrun yet (BUC's are)
    supports_distributed = False
    key = "similarity-guidance"
    paper = Paper(
        title="Unsupervised Visual Feature Learning Based on Similarity Guidance",
        authors=(
            "Xiaoqiang Chen, Zhihao Jin, Qicong Wang, Wenming Yang, Qingmin Liao, Hongying Meng"
        ),
        venue="journal article (the seed text does not name the venue)",
        year=2021,  # the year its own Table 6 gives it
        seed_file="001_0df80499ac7e015b.txt",
    )
    tasks = ("reid", "clustering")
    uses_camera_ids = False
    # Sec. 4.4: the STL-10 model starts from one trained on CIFAR-10 (here: this method's CIFAR-10
    # paper-profile cell, found by `init_checkpoint = "auto"`)
    paper_inits: ClassVar[dict[str, str]] = {"stl10": "checkpoint:cifar10/similarity-guidance/paper"}
    defaults: ClassVar[dict[str, Any]] = {
        # Algorithm 1 and Sec. 4.3-4.4
        "merge_fraction": 0.05,
        "merge_steps": 20,
        "min_clusters_fraction": 0.05,
        "first_epochs": 20,
        "step_epochs": 4,
        "first_clustering": "dbscan",
        "eps": 0.1,
        "distance": "d1+d2+d3",
        "weight_d1": 0.5,
        "weight_d2": 0.5,
        "weight_d3": 0.03,
        "k1": 20,
        "k_half": 10,
        "k2": 5,
        "loss": "joint",
        "triplet_proportion": 0.1,
        "margin": 0.2,
        "batch_size": 64,
        "num_instances": 4,
        "iters": 0,
        "init_checkpoint": "",
        "model_selection": "validation",
        "validation_fraction": 0.2,
        # BUC's (not stated in the paper)
        "lr": 0.1,
        "lr_step": 16,
        "gamma": 0.1,
        "step_lr": 0.01,
        "backbone_lr_mult": 0.1,
        "sgd_momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "temperature": 0.1,
        "memory_momentum": 0.5,
        "embedding_dim": 2048,
        "dropout": 0.5,
        "pooling": "avg",
        "last_stride": 2,
        "flip": True,
        "crop_scale": 0.64,
    }
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "digits": {"flip": False},
        "mnist": {"flip": False},
        "stl10": {"init_checkpoint": "auto"},
    }
    profile_overrides: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {
            "merge_fraction": 0.1, "merge_steps": 7, "min_clusters_fraction": 0.1,
            "first_epochs": 10, "step_epochs": 1, "lr_step": 8,
            "embedding_dim": 128, "batch_size": 64, "iters": 30, "eps": 0.38,
        },
        # digits: the backbone starts from random weights (the stand-in is a re-ID source), so it
        # learns at the full rate
        "quick:digits": {"backbone_lr_mult": 1.0},
        "ci:digits": {"backbone_lr_mult": 1.0},
        "ci": {
            "merge_fraction": 0.25, "merge_steps": 2, "min_clusters_fraction": 0.2,
            "first_epochs": 1, "step_epochs": 1, "embedding_dim": 64,
            "batch_size": 8, "iters": 4, "eps": 0.1,
        },
    }

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "eps": trial.suggest_float("eps", 0.05, 0.4),
            "first_epochs": trial.suggest_int("first_epochs", 2, 20),
            "weight_d2": trial.suggest_float("weight_d2", 0.0, 1.0),
            "weight_d3": trial.suggest_float("weight_d3", 1e-3, 0.1, log=True),
            "triplet_proportion": trial.suggest_float("triplet_proportion", 0.0, 0.5),
            "margin": trial.suggest_float("margin", 0.1, 0.5),
        }

    # -- configuration ---------------------------------------------------------------------------
    def _check_config(self, config: Mapping[str, Any], n: int) -> None:
        def fail(message: str) -> None:
            raise ConfigError(f"{self.key}: {message}")

        if config["first_clustering"] not in FIRST_CLUSTERINGS:
            fail(f"first_clustering must be one of {FIRST_CLUSTERINGS}, "
                 f"got {config['first_clustering']!r}")
        if config["loss"] not in LOSSES:
            fail(f"loss must be one of {LOSSES}, got {config['loss']!r}")
        try:
            terms = parse_terms(str(config["distance"]))
        except ValueError as exc:
            fail(str(exc))
        if not terms & {"d1", "d2"}:
            fail(f"distance {config['distance']!r} needs d1 or d2 (d3 alone ranks sizes only)")
        if not 0.0 < float(config["eps"]) < 1.0:
            fail(f"eps must lie in (0, 1), got {config['eps']}")
        if not 0.0 < float(config["min_clusters_fraction"]) < 1.0:
            fail(f"min_clusters_fraction must lie in (0, 1), got {config['min_clusters_fraction']}")
        if not 0.0 <= float(config["triplet_proportion"]) <= 1.0:
            fail(f"triplet_proportion must lie in [0, 1], got {config['triplet_proportion']}")
        k = int(config["num_instances"])
        if k < 1 or int(config["batch_size"]) % k:
            fail(f"batch_size {config['batch_size']} must be a multiple of num_instances {k}")
        if int(config["iters"]) < 0:
            fail(f"iters must be >= 0 (0 = one pass), got {config['iters']}")
        if min(int(config[d]) for d in ("k1", "k_half", "k2")) < 1:
            fail("k1, k_half and k2 must be positive")
        if n < 2:
            fail(f"the training view holds {n} image(s); need at least 2")
        try:
            self._schedule(config)
            merges_per_step(n, float(config["merge_fraction"]))
        except ValueError as exc:
            fail(str(exc))

    # -- the harness loop's steps ----------------------------------------------------------------
    def setup(self, view: UnlabeledView, config: Mapping[str, Any], ctx: RunContext) -> None:
        super().setup(view, config, ctx)
        if ctx.task == "clustering":
            side = ctx.profile.clustering_size
            size = (side, side) if side else tuple(reversed(view[0].size))  # PIL: (W, H)
            self.eval_tf = test_transform(size)
            self.train_tf = square_train_transform(
                size, flip=bool(config["flip"]), crop_scale=float(config["crop_scale"])
            )
        path = find_init_checkpoint(str(config["init_checkpoint"]), ctx.checkpoint_dir)
        if path is not None:
            self.model.backbone.load_state_dict(backbone_state(path))
            ctx.report_init(path)
        self.init_from = path

    def train_epoch(self, epoch: int) -> dict[str, float]:
        metrics = super().train_epoch(epoch)
        metrics["init_from_checkpoint"] = float(self.init_from is not None)
        return metrics

    def _merge(self, stage: int) -> dict[str, float]:
        """Stage 1: the first clustering (or, switched off, an ordinary merge step); later stages:
        a merge step by the individual-group distance. Then the lookup table V takes the new
        classes' mean features (Algorithm 1, line 11; see Deviations) and the optimiser resets."""
        c = self.config
        features, embedded = self._features()
        before = int(self.labels.max()) + 1
        if stage == 1 and c["first_clustering"] == "dbscan":
            self.labels = self._first_clustering(features.numpy())
        else:
            self.labels = self._merge_step(features.numpy())
        self.memory = ClusterMemory.from_features(
            embedded, torch.from_numpy(self.labels), momentum=float(c["memory_momentum"]),
            update="instance",
        ).to(self.device)
        self.stage = stage
        self.optimizer = self._optimizer()
        return {"merges": float(before - (int(self.labels.max()) + 1))}

    def _weights(self) -> dict[str, float]:
        c, terms = self.config, parse_terms(str(self.config["distance"]))
        return {
            "alpha": float(c["weight_d1"]) if "d1" in terms else 0.0,
            "beta": float(c["weight_d2"]) if "d2" in terms else 0.0,
            "gamma": float(c["weight_d3"]) if "d3" in terms else 0.0,
        }

    def _depths(self) -> tuple[int, int, int]:
        return int(self.config["k1"]), int(self.config["k_half"]), int(self.config["k2"])

    def _first_clustering(self, features: np.ndarray) -> np.ndarray:
        w = self._weights()
        dist = SampleDistance(features, alpha=w["alpha"], beta=w["beta"], depths=self._depths())
        eps = float(self.config["eps"])
        return dbscan_pseudo_labels(dist.within(eps), eps=eps, min_samples=1)

    def _merge_step(self, features: np.ndarray) -> np.ndarray:
        c, n = self.config, len(self.labels)
        floor = max(1, math.ceil(float(c["min_clusters_fraction"]) * n))
        count = int(self.labels.max()) + 1
        todo = max(0, min(merges_per_step(n, float(c["merge_fraction"])), count - floor))
        if todo == 0:
            return self.labels
        dist = individual_group_distance(
            features, self.labels, **self._weights(), depths=self._depths(),
            terms=str(c["distance"]),
        )
        return merge_step(self.labels, dist, todo)

    def _train(self) -> dict[str, float]:
        if self.stage == 0:  # instance discrimination: BUC's plain batches, repelled loss only
            return super()._train()
        ctx, c = self.ctx, self.config
        targets_all = torch.from_numpy(self.labels).to(self.device)
        sampler = PKSampler(
            self.labels, batch_size=int(c["batch_size"]), num_instances=int(c["num_instances"]),
            generator=np.random.default_rng(ctx.rng.integers(2**63)),
            num_batches=int(c["iters"]) or None,
        )
        loader = training_loader(self.view, self.train_tf, ctx, self.device, batch_sampler=sampler)
        share = float(c["triplet_proportion"]) if c["loss"] == "joint" else 0.0
        self.model.train()
        totals = {"loss": 0.0, "loss_memory": 0.0, "loss_triplet": 0.0}
        steps = 0
        for images, index in loader:
            images = images.to(self.device, non_blocking=True)
            targets = targets_all[index.to(self.device)]
            out = self.model(images)
            kappa = repelled_loss(out, targets, self.memory.centroids, float(c["temperature"]))
            loss = (1.0 - share) * kappa
            omega = None
            if share > 0:
                omega = batch_hard_triplet_loss(out, targets, float(c["margin"]))
                loss = loss + share * omega
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.memory.update(out.detach(), targets)
            totals["loss"] += float(loss.detach())
            totals["loss_memory"] += float(kappa.detach())
            totals["loss_triplet"] += float(omega.detach()) if omega is not None else 0.0
            steps += 1
        out_metrics = {k: v / max(steps, 1) for k, v in totals.items()}
        out_metrics["iterations"] = float(steps)
        return out_metrics

    def encoder(self) -> nn.Module:
        return self.model.backbone
