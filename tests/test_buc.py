"""The `buc` adapter on a tiny unlabeled view: it trains through its merge stages, returns an
encoder, follows the N - t * n count rule, repeats exactly for a seed, and resumes bit-identically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import ConfigError, RunContext, run_epochs
from benchmark.engine.method_registry import get_method
from benchmark.engine.profiles import get_profile
from methods.buc import BUC

N = 24
TINY = {"batch_size": 8, "merge_fraction": 0.25, "merge_steps": 2, "first_epochs": 1,
        "step_epochs": 1, "embedding_dim": 16}


def tiny_view(seed: int = 0) -> UnlabeledView:
    """24 images 32x16: 6 'people' (top/bottom colours) x 4 noisy shots."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(6, 2, 3))
    images = np.empty((N, 32, 16, 3), dtype=np.uint8)
    for i in range(N):
        person = colours[i % 6]
        img = np.empty((32, 16, 3))
        img[:16], img[16:] = person[0], person[1]
        img += rng.normal(0, 20, size=img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return UnlabeledView(pixels=images, kind="reid")


def context(tmp: Path, seed: int, reported: dict[int, np.ndarray], callback=None) -> RunContext:
    return RunContext(
        device=torch.device("cpu"), seed=seed, profile=get_profile("ci"), dataset="tiny",
        task="reid", checkpoint_dir=tmp, rng=np.random.default_rng(seed),
        torch_generator=torch.Generator().manual_seed(seed),
        pseudo_label_hook=lambda epoch, labels: reported.__setitem__(epoch, labels.copy()),
    )


def fit(tmp: Path, seed: int = 0, callback=None, **params) -> tuple[torch.nn.Module, dict]:
    adapter = BUC(**{**TINY, **params})
    config = adapter.resolve_config("tiny", "ci")
    reported: dict[int, np.ndarray] = {}
    encoder = run_epochs(adapter, tiny_view(), config, context(tmp, seed, reported, callback),
                         after_checkpoint=[callback] if callback else ())
    return encoder, reported


def probe_batch() -> torch.Tensor:
    return torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(123))


def embed(encoder: torch.nn.Module) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(probe_batch())


def test_registered_with_paper_defaults_and_deviations() -> None:
    assert get_method("buc") is BUC
    paper = BUC().resolve_config("market1501", "paper")
    assert paper["merge_fraction"] == 0.05 and paper["size_penalty"] == 0.005
    assert paper["temperature"] == 0.1 and paper["batch_size"] == 16 and paper["dropout"] == 0.5
    assert paper["linkage"] == "min"
    assert BUC().num_epochs(paper) == 20 + 18 * 2
    assert any("test split" in d for d in BUC.deviations())


def test_fit_returns_an_encoder_and_counts_follow_the_merge_rule(tmp_path: Path) -> None:
    encoder, reported = fit(tmp_path)
    out = embed(encoder)
    assert out.shape == (5, encoder.feature_dim) and torch.isfinite(out).all()
    # N = 24, n = floor(24 * 0.25) = 6: stages hold 24, 18, 12 clusters
    assert sorted(reported) == [0, 1, 2]
    assert [int(reported[e].max()) + 1 for e in range(3)] == [24, 18, 12]
    assert reported[0].tolist() == list(range(N))
    for earlier, later in ((0, 1), (1, 2)):  # merging only joins: a cluster never splits
        for c in np.unique(reported[earlier]):
            assert len(np.unique(reported[later][reported[earlier] == c])) == 1


def test_same_seed_same_outputs_other_seed_different(tmp_path: Path) -> None:
    enc_a, labels_a = fit(tmp_path / "a", seed=0)
    torch.manual_seed(999)  # global RNG state must not matter: everything is drawn from the run's
    np.random.seed(999)
    enc_b, labels_b = fit(tmp_path / "b", seed=0)
    enc_c, _ = fit(tmp_path / "c", seed=1)
    assert torch.equal(embed(enc_a), embed(enc_b))
    for key, value in enc_a.state_dict().items():
        assert torch.equal(value, enc_b.state_dict()[key]), key
    assert all(np.array_equal(labels_a[e], labels_b[e]) for e in labels_a)
    assert not torch.equal(embed(enc_a), embed(enc_c))


class Killed(RuntimeError):
    pass


def test_resume_after_a_crash_ends_bit_identical(tmp_path: Path) -> None:
    whole, labels_whole = fit(tmp_path / "whole", seed=3)

    def crash_after_first_merge(epoch: int, encoder: torch.nn.Module) -> None:
        if epoch == 1:  # the checkpoint of epoch 1 is written, then the process "dies"
            raise Killed

    with pytest.raises(Killed):
        fit(tmp_path / "resumed", seed=3, callback=crash_after_first_merge)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("epoch-*.pt")) == [
        "epoch-0000.pt", "epoch-0001.pt"]  # the last two are kept
    torch.manual_seed(7)  # a fresh process: different global state
    resumed, labels_resumed = fit(tmp_path / "resumed", seed=3)
    assert sorted(labels_resumed) == [2]  # only the remaining epoch ran
    assert np.array_equal(labels_resumed[2], labels_whole[2])
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_too_many_merge_steps_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="would leave"):
        fit(tmp_path, merge_steps=4)  # 24 - 4 * 6 = 0 clusters
    with pytest.raises(ConfigError, match="linkage"):
        fit(tmp_path, linkage="ward")


def test_search_space_suggests_known_parameters() -> None:
    class Trial:
        def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
            assert low < high
            return low

    space = BUC.search_space(Trial())
    assert space and set(space) <= set(BUC.defaults)
    BUC(**space).resolve_config("market1501", "quick")  # accepted as parameters


@pytest.mark.parametrize("key", ["buc", "fgu"])
def test_memory_restarts_from_zeros_after_each_merge(tmp_path: Path, key: str) -> None:
    """The BUC authors' fixed code (and FGU, built on it) gives every new cluster an all-zero memory
    row after a merge; the first feature that reaches a row then becomes it (normalise((0 + x) / 2)).
    Initialising from the previous iteration's cluster means was the bug their README describes."""
    adapter = get_method(key)(**TINY)
    config = adapter.resolve_config("tiny", "ci")
    adapter.setup(tiny_view(), config, context(tmp_path, 0, {}))
    adapter.train_epoch(0)  # stage 0: the singleton rows fill up
    assert (adapter.memory.centroids.norm(dim=1) > 0.99).any()
    adapter._merge(1)
    clusters = int(adapter.labels.max()) + 1
    assert clusters < N and adapter.memory.centroids.shape[0] == clusters
    assert torch.count_nonzero(adapter.memory.centroids) == 0
    x = torch.randn(2, adapter.memory.centroids.shape[1], generator=torch.Generator().manual_seed(0))
    adapter.memory.update(x, torch.tensor([0, 1]))
    assert torch.allclose(adapter.memory.centroids[:2], torch.nn.functional.normalize(x, dim=1),
                          atol=1e-6)
    assert torch.count_nonzero(adapter.memory.centroids[2:]) == 0
