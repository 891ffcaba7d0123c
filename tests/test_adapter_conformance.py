"""Every registered adapter honours the contract (DESIGN.md, "Methods: the adapter contract").

Declarations (paper, tasks, paper defaults, search space), and `fit` on a tiny synthetic view returns
an encoder that embeds images to (B, D). Labels never reach it: fit's signature has no label
argument, nothing reachable from its arguments equals the labels, and scrambling the labels the
harness holds back changes the harness's diagnostics but not one bit of the encoder's output.
"""

from __future__ import annotations

import inspect
import io

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from benchmark.data.unlabeled import HiddenLabels, UnlabeledView, with_labels
from benchmark.engine.contract import MethodAdapter
from benchmark.engine.method_registry import get_method, method_names
from benchmark.engine.profiles import PROFILES, get_profile
from benchmark.engine.runner import HistorySink, fit_cell, make_context
from benchmark.engine.seeding import seed_everything
from engine_probes import arrays_and_strings, reachable

DATASET_OF_TASK = {"reid": "market1501", "clustering": "cifar10"}
IDS, PER_ID = 6, 8


def tiny_reid(seed: int = 0, *, camera_ids: bool = False) -> tuple[UnlabeledView, HiddenLabels]:
    """6 colour-coded identities x 8 images (32x16 PNG), two cameras, in a shuffled order."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(IDS, 2, 3))
    encoded, labels, camids = [], [], []
    for pid in range(IDS):
        for j in range(PER_ID):
            img = np.empty((32, 16, 3), dtype=np.int16)
            img[:16], img[16:] = palette[pid, 0], palette[pid, 1]
            img += rng.integers(-12, 13, size=img.shape)
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
            encoded.append(buf.getvalue())
            labels.append(pid + 1)
            camids.append(j % 2)
    order = rng.permutation(len(encoded))
    labels_arr, cams = np.array(labels)[order], np.array(camids)[order]
    view = UnlabeledView(encoded=[encoded[i] for i in order], camids=cams if camera_ids else None,
                         num_cameras=2, kind="reid")
    return view, HiddenLabels(labels=labels_arr, camids=cams, order=order)


def tiny_clustering(seed: int = 0) -> tuple[UnlabeledView, HiddenLabels]:
    """4 classes x 10 grey 8x8 images (a bright quadrant per class, plus noise)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(4):
        for _ in range(10):
            img = rng.integers(0, 40, size=(8, 8, 1))
            r, q = divmod(c, 2)
            img[4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 200
            images.append(img.astype(np.uint8))
            labels.append(c)
    order = rng.permutation(len(images))
    view = UnlabeledView(pixels=np.stack(images)[order], kind="clustering")
    return view, HiddenLabels(labels=np.array(labels)[order], camids=None, order=order)


def _view_for(cls: type[MethodAdapter], task: str) -> tuple[UnlabeledView, HiddenLabels]:
    view, hidden = tiny_clustering() if task == "clustering" else tiny_reid(
        camera_ids=cls.uses_camera_ids)
    if cls.uses_labels:  # as the runner's build_view does, for the declared exception only
        view = with_labels(view, hidden.labels)
    return view, hidden


def _fast_params(cls: type[MethodAdapter], dataset: str) -> dict:
    config = cls().resolve_config(dataset, "ci")
    return {"epochs": 1} if "epochs" in config else {}


def _fit(cls, task, hidden_override=None, tmp=None):
    dataset = DATASET_OF_TASK[task]
    view, hidden = _view_for(cls, task)
    if hidden_override is not None:
        hidden = hidden_override(hidden)
        if cls.uses_labels:  # the labels it is given are the scrambled ones
            view = with_labels(view, hidden.labels)
    adapter = cls(**_fast_params(cls, dataset))
    config = adapter.resolve_config(dataset, "ci")
    seed_everything(0)
    ctx = make_context(device=torch.device("cpu"), seed=0, profile=get_profile("ci"),
                       dataset=dataset, task=task, checkpoint_dir=tmp, sink=HistorySink(log=None))
    return view, hidden, adapter, config, ctx, fit_cell(adapter, view, hidden, config, ctx)


def _embed(encoder: torch.nn.Module, view: UnlabeledView, task: str) -> torch.Tensor:
    from methods.common.transforms import test_transform

    size = tuple(get_profile("ci").reid_size) if task == "reid" else np.asarray(view[0]).shape[:2]
    transform = test_transform(tuple(size))
    batch = torch.stack([transform(view[i]) for i in range(5)])
    encoder.eval()
    with torch.no_grad():
        return encoder(batch)


CASES = [(name, task) for name in method_names() for task in get_method(name).tasks]


def test_some_adapters_are_registered():
    assert method_names(), "no method adapter registered"


@pytest.mark.parametrize("name", method_names())
def test_declarations(name):
    cls = get_method(name)
    assert cls.key == name
    assert cls.paper is not None and cls.paper.title and cls.paper.venue
    assert cls.tasks and set(cls.tasks) <= {"reid", "clustering"}
    assert isinstance(cls.uses_camera_ids, bool)
    assert isinstance(cls.defaults, dict)
    assert all(isinstance(d, str) and d for d in cls.deviations())
    for task in cls.tasks:
        for profile in PROFILES:
            config = cls().resolve_config(DATASET_OF_TASK[task], profile)  # within bounds
            assert set(cls.defaults) <= set(config)
            assert set(cls.bounds) <= set(config), "a bound names a parameter that does not exist"
    params = inspect.signature(cls.fit).parameters
    assert list(params) == ["self", "view", "config", "ctx"], "fit takes view, config, ctx only"


@pytest.mark.parametrize("name", method_names())
def test_search_space_returns_config_overrides(name):
    cls = get_method(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    space = cls.search_space(trial)
    assert isinstance(space, dict)
    task = cls.tasks[0]
    config = cls(**space).resolve_config(DATASET_OF_TASK[task], "paper")  # every key is known
    for key, value in space.items():
        assert config[key] == value
    fixed = optuna.trial.FixedTrial(dict(trial.params))
    assert cls.search_space(fixed) == space


@pytest.mark.parametrize(("name", "task"), CASES)
def test_fit_embeds_and_never_sees_labels(name, task, tmp_path):
    cls = get_method(name)
    view, hidden, adapter, config, ctx, trained = _fit(cls, task, tmp=tmp_path / "a")
    feats = _embed(trained.encoder, view, task)
    assert feats.ndim == 2 and feats.shape[0] == 5 and feats.shape[1] >= 1
    assert torch.isfinite(feats).all()

    # nothing reachable from fit's arguments equals the labels (or the camera ids, unless declared);
    # an adapter that declares uses_labels is the one that does reach them
    arrays, strings = arrays_and_strings(reachable(adapter, view, config, ctx))
    if cls.uses_labels:
        assert any(arr.size == len(view) and np.array_equal(arr.ravel(), hidden.labels)
                   for arr in arrays)
    for arr in arrays if not cls.uses_labels else []:
        if arr.size == len(view):
            flat = arr.ravel()
            assert not np.array_equal(flat, hidden.labels)
            assert not np.array_equal(np.sort(flat), np.sort(hidden.labels))
            if not cls.uses_camera_ids and hidden.camids is not None:
                assert not np.array_equal(flat, hidden.camids)

    # scrambled hidden labels: same encoder, to the bit
    def scramble(h: HiddenLabels) -> HiddenLabels:
        perm = np.random.default_rng(1).permutation(len(h.labels))
        return HiddenLabels(labels=h.labels[perm], camids=h.camids, order=h.order)

    _, scrambled_hidden, *_, again = _fit(cls, task, scramble, tmp=tmp_path / "b")
    assert not np.array_equal(scrambled_hidden.labels, hidden.labels)
    if cls.uses_labels:  # given the scrambled labels, it learns something else
        assert not torch.equal(_embed(again.encoder, view, task), feats)
        return
    assert torch.equal(_embed(again.encoder, view, task), feats)
    # the harness's diagnostics did see the labels (when the method reports pseudo labels)
    for before, after in zip(trained.history, again.history):
        assert {k: v for k, v in before.items() if k != "pseudo_labels"} == {
            k: v for k, v in after.items() if k != "pseudo_labels"
        }
