"""The pretrained stand-in for ImageNet (`methods.common.standin`): deterministic, cached by its
recipe, learned only from its own source population, and named by content in every record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import methods.common.standin as standin
from benchmark.data import registry, synthetic_reid
from benchmark.engine.profiles import get_profile
from benchmark.engine.runner import run_cell
from methods.common.backbones import build_backbone, load_trunk, standin_path


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def small_recipe():
    return standin.recipe_for_tests()


def test_same_recipe_same_bytes_in_two_caches(small_recipe, tmp_path, monkeypatch):
    paths = []
    for name in ("a", "b"):
        monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path / name))
        paths.append(standin.standin_weights(small_recipe))
    assert paths[0] != paths[1]
    assert _sha(paths[0]) == _sha(paths[1])
    other = standin.recipe_for_tests(train_seed=1)  # another recipe: another folder, other weights
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path / "a"))
    assert _sha(standin.standin_weights(other)) != _sha(paths[0])
    assert standin.standin_dir(other) != standin.standin_dir(small_recipe)
    meta = json.loads((paths[0].parent / standin.RECIPE_FILE).read_text())
    assert meta["digest"] == small_recipe.digest()


def test_built_once_then_read_from_the_cache(small_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path))
    first = standin.standin_weights(small_recipe)
    monkeypatch.setattr(standin, "build_standin",
                        lambda *a, **k: pytest.fail("built again despite the cache"))
    assert standin.standin_weights(small_recipe) == first


def test_training_reads_only_its_own_source_never_the_target(small_recipe, tmp_path, monkeypatch,
                                                             synthetic_reid_generated):
    """The images the stand-in learns from lie in its source folder, share no bytes with any image
    of the registered target (train, query or gallery), and the builder never locates or loads a
    registered dataset."""
    target = synthetic_reid_generated
    target_digests = {_sha(p) for split in (target.train, target.query, target.gallery)
                      for p in split.paths}
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("the stand-in builder asked for a registered dataset")

    monkeypatch.setattr(registry, "load_dataset", refuse)
    monkeypatch.setattr(registry, "locate_dataset", refuse)
    monkeypatch.setattr(synthetic_reid, "locate_synthetic_reid", refuse)
    seen: list[Path] = []
    real_train = standin._train

    def spy(model, head, images, labels, recipe, *rest):
        seen.extend(Path(p) for p in images.paths)
        return real_train(model, head, images, labels, recipe, *rest)

    monkeypatch.setattr(standin, "_train", spy)
    standin.standin_weights(small_recipe)
    source = standin.source_dir(small_recipe)
    assert seen and all(source in p.parents for p in seen)
    assert not target_digests & {_sha(p) for p in seen}
    assert small_recipe.source_seed != synthetic_reid.REGISTERED_SEED


def test_the_registered_seed_is_refused_as_a_source(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path))
    bad = standin.recipe_for_tests(source_seed=synthetic_reid.REGISTERED_SEED)
    with pytest.raises(ValueError, match="registered synthetic-reid seed"):
        standin.standin_weights(bad)


def test_source_population_is_dressed_in_other_colours():
    """The garment palettes' hues are turned: no chromatic palette entry of the source is one of
    the target's (achromatic entries have no hue to turn)."""
    turned = synthetic_reid.garment_palettes(0.5)
    kept = synthetic_reid.garment_palettes(0.0)
    for a, b in zip(turned, kept):
        chroma = b.max(axis=1) - b.min(axis=1)
        moved = np.abs(a - b).max(axis=1)
        assert (moved[chroma > 0.1] > 0.1).all()
        np.testing.assert_allclose(a[chroma < 0.02], b[chroma < 0.02], atol=0.02)  # greys stay grey


def test_records_name_the_standin_and_random_init_stays_available(tmp_path,
                                                                  synthetic_reid_generated):
    on = run_cell("direct-transfer", "synthetic-reid", 0, "ci", tmp_path / "a", "cpu",
                  tracking=False, log=None)
    off = run_cell("direct-transfer", "synthetic-reid", 0, "ci", tmp_path / "b", "cpu",
                   tracking=False, log=None, init="random")
    assert on["status"] == off["status"] == "finished"
    path = standin_path(get_profile("ci"), "reid")
    assert on["init"]["key"] == "standin:ci"
    assert on["init"]["sha256"] == _sha(path) and on["init"]["file"] == str(path)
    assert off["init"]["key"] == "random" and off["init_option"] == "random"
    assert on["metrics"]["mAP"] != off["metrics"]["mAP"]
    # a clustering set keeps random init: the stand-in is a person re-ID source
    digits = run_cell("direct-transfer", "digits", 0, "ci", tmp_path / "c", "cpu",
                      tracking=False, log=None)
    assert digits["init"]["key"] == "random"
    with pytest.raises(ValueError, match="init must be one of"):
        run_cell("direct-transfer", "digits", 0, "ci", tmp_path / "d", init="imagenet")


def test_loaded_trunk_is_the_file(tmp_path):
    path = standin_path(get_profile("ci"), "reid")
    model = build_backbone("resnet-tiny", pretrained=False, last_stride=1)
    load_trunk(model, path)
    saved = torch.load(path, weights_only=True)
    for key, value in model.trunk.state_dict().items():
        assert torch.equal(value, saved[f"trunk.{key}"])
