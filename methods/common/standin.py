"""The pretrained stand-in for ImageNet in the `quick` and `ci` profiles.

Why: every paper starts its ResNet-50 from ImageNet weights, so its first pseudo labels already
group images by appearance. A randomly initialised network's first pseudo labels are noise, a regime
no paper studies, and on CPU there is neither a ResNet-50 nor ImageNet. The stand-in plays ImageNet's
part at the small profiles' scale: the profile's small backbone learned *with labels* on a **source**
domain that is not the target, then handed to every unsupervised method as its starting point.

What keeps it honest:
- The source is a synthetic-reid population generated from a seed of its own (`SOURCE_SEED`, never the
  registered dataset's seed), with the garment palettes' hues turned half a circle: no identity,
  camera, scene or palette draw is shared with the `synthetic-reid` target. The builder reads only the
  source folder it generated; it never locates or loads a registered dataset.
- It is learned on the source's identities, which is what ImageNet is for the papers: a labelled
  task that is not the target's.
- The recipe is short on purpose: ImageNet features are generic, not converged on any re-ID task,
  and a stand-in trained to convergence on a population drawn by the same generator would already be
  a re-ID model of the target's kind, leaving the unsupervised methods nothing to adapt. How short
  is measured on the source alone (the recipe's docstring).
- It is built deterministically (one CPU thread, seeded generators) on first use and cached under
  `$BENCHMARK_CACHE_DIR/standin/` in a folder named by the recipe's hash; the weights file is named in
  every record by its sha256 (`init.key = "standin:<profile>"`). A second process waiting for the
  same stand-in blocks on a file lock instead of training it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from benchmark.data.synthetic_reid import GENERATOR_VERSION, REGISTERED_SEED, SynthConfig, \
    write_synthetic_reid
from benchmark.paths import cache_dir

STANDIN_VERSION = 1  # bump when the builder's code changes what a recipe produces
SOURCE_SEED = 7_340_033  # the source population's generator seed; never REGISTERED_SEED
WEIGHTS_FILE = "weights.pt"
RECIPE_FILE = "recipe.json"


def _source_config() -> dict[str, Any]:
    return asdict(SynthConfig(garment_hue_shift=0.5))


@dataclass(frozen=True)
class StandinRecipe:
    """How a stand-in is made: the source population, the network, the input size and the schedule.

    Identity classification (cross-entropy with label smoothing) plus a batch-hard triplet loss, Adam,
    P x K batches: the supervised re-ID recipe of the field (Luo et al., "Bag of Tricks"), so the
    stand-in learns what a labelled re-ID source would teach. `epochs` is deliberately short (see
    the module docstring), measured on the source's own held-out identities (its query / gallery
    split, never the target's): at 64x32, 12 epochs reach about 32 % mAP there, half of the 65 %
    that 40 epochs reach, i.e. features that group people by appearance without being a converged
    re-ID model. ci keeps the same rule at its scale.
    """

    backbone: str = "resnet-tiny"
    size: tuple[int, int] = (64, 32)
    source_seed: int = SOURCE_SEED
    source: Mapping[str, Any] = field(default_factory=_source_config)
    epochs: int = 12
    batch_size: int = 64
    num_instances: int = 4
    lr: float = 3.5e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    margin: float = 0.3
    pad: int = 3
    train_seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["source"] = dict(self.source)
        return d

    def digest(self) -> str:
        """sha256 of everything that decides the weights: the recipe, the generator's version and
        the builder's."""
        text = json.dumps({"recipe": self.as_dict(), "generator_version": GENERATOR_VERSION,
                           "standin_version": STANDIN_VERSION}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def synth_config(self) -> SynthConfig:
        src = dict(self.source)
        for key, value in src.items():  # JSON round trips turn tuples into lists
            if isinstance(value, list):
                src[key] = tuple(value)
        return SynthConfig(**src)


# The stand-in of each profile that has one (profiles name it by key, `Profile.standin`).
RECIPES: dict[str, StandinRecipe] = {
    "quick": StandinRecipe(),
    # ci: a smaller source at the ci input size and a shorter schedule, so that a CI machine builds
    # it in seconds; same population rules.
    "ci": StandinRecipe(
        size=(32, 16),
        source=asdict(SynthConfig(garment_hue_shift=0.5, train_ids=100, train_tracklets=350,
                                  train_images=1000, test_ids=20, test_tracklets=40,
                                  query_images=40, gallery_images=80, distractors=0, junk=0)),
        epochs=6,
    ),
}


def get_recipe(name: str) -> StandinRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown stand-in {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def standin_dir(recipe: StandinRecipe) -> Path:
    h, w = recipe.size
    return cache_dir() / "standin" / f"{recipe.backbone}-{h}x{w}-{recipe.digest()[:16]}"


def source_dir(recipe: StandinRecipe) -> Path:
    cfg_digest = hashlib.sha256(json.dumps(recipe.as_dict()["source"], sort_keys=True)
                                .encode()).hexdigest()[:12]
    return (cache_dir() / "standin" / "source"
            / f"seed{recipe.source_seed}-v{GENERATOR_VERSION}-{cfg_digest}")


def standin_weights(recipe: StandinRecipe | str) -> Path:
    """The stand-in's weights file, built first if the cache does not hold it (under a lock)."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    folder = standin_dir(recipe)
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        return weights
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same stand-in: wait
        if not weights.is_file():
            build_standin(recipe, folder)
    return weights


def build_standin(recipe: StandinRecipe, folder: Path) -> None:
    """Train the stand-in and write `weights.pt` and `recipe.json` into `folder` atomically."""
    from methods.common.backbones import build_backbone, forked_torch_rng
    from methods.common.features import TransformedImages
    from methods.common.samplers import PKSampler
    from methods.common.transforms import train_transform
    from methods.common.triplet import batch_hard_triplet_loss
    from benchmark.data.market1501 import load_market_style
    from benchmark.engine.evaluate import PathImages

    if recipe.source_seed == REGISTERED_SEED:
        raise ValueError("a stand-in's source must not use the registered synthetic-reid seed")
    src = write_synthetic_reid(source_dir(recipe), seed=recipe.source_seed,
                               config=recipe.synth_config())
    train = load_market_style(src, "standin-source").train
    _, labels = np.unique(train.pids, return_inverse=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums, so the same bytes, on any machine
    try:
        with forked_torch_rng(recipe.train_seed):
            model = build_backbone(recipe.backbone, pretrained=False)
            head = nn.Sequential(nn.BatchNorm1d(model.feature_dim),
                                 nn.Linear(model.feature_dim, int(labels.max()) + 1, bias=False))
            _train(model, head, PathImages(train.paths), labels, recipe,
                   TransformedImages, PKSampler, train_transform, batch_hard_triplet_loss)
    finally:
        torch.set_num_threads(threads)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        os.chmod(tmp, 0o755)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   tmp / WEIGHTS_FILE)
        (tmp / RECIPE_FILE).write_text(json.dumps(
            {"recipe": recipe.as_dict(), "digest": recipe.digest(),
             "generator_version": GENERATOR_VERSION, "standin_version": STANDIN_VERSION,
             "source_folder": str(src), "source_images": len(train.paths),
             "source_identities": int(labels.max()) + 1, "torch": torch.__version__},
            indent=2, sort_keys=True) + "\n")
        os.replace(tmp, folder)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _train(model, head, images, labels, recipe, TransformedImages, PKSampler, train_transform,
           triplet) -> None:
    data = TransformedImages(images, train_transform(recipe.size, pad=recipe.pad), with_index=True)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, int(recipe.epochs * 0.7))], 0.1)
    target = torch.as_tensor(labels)
    rng = np.random.default_rng(recipe.train_seed)
    model.train()
    head.train()
    for _ in range(recipe.epochs):
        sampler = PKSampler(labels, batch_size=recipe.batch_size,
                            num_instances=recipe.num_instances, generator=rng)
        for x, idx in DataLoader(data, batch_sampler=sampler, num_workers=0):
            y = target[idx]
            f = model(x)
            loss = (F.cross_entropy(head(f), y, label_smoothing=recipe.label_smoothing)
                    + triplet(f, y, margin=recipe.margin))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


def recipe_for_tests(**changes: Any) -> StandinRecipe:
    """A small recipe (tiny source, one epoch) for tests that build stand-ins in seconds."""
    small = asdict(SynthConfig(garment_hue_shift=0.5, train_ids=20, train_tracklets=40,
                               train_images=120, test_ids=4, test_tracklets=8, query_images=8,
                               gallery_images=16, distractors=0, junk=0))
    return replace(RECIPES["ci"], source=small, epochs=1, batch_size=16, **changes)
