"""The `fgu` adapter and its distinctive pieces against hand-computed cases: the three merge criteria
of Table 3 pick the right pair, PEDAL (Eq. 6) and the attracted loss (Eq. 3) equal values worked out
by hand and by a brute-force loop, the patch memory follows W <- normalise((W + x) / 2), and a run
follows C = N - t * n, passes the chosen linkage to the merge, repeats for a seed and resumes
bit-identically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import methods.common.merging as merging_module
from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import ConfigError, RunContext, run_epochs
from benchmark.engine.method_registry import get_method
from benchmark.engine.profiles import get_profile
from methods.common.attraction import attracted_loss
from methods.common.merging import cluster_distances, merge_step
from methods.common.pedal import PatchMemory, pedal_loss, stripe_features
from methods.fgu import FGU

N = 24
TINY = {"batch_size": 8, "merge_fraction": 0.25, "merge_steps": 2, "first_epochs": 1,
        "step_epochs": 1, "embedding_dim": 16, "patch_dim": 8, "num_stripes": 2, "pedal_k": 3}


# -- merge criteria (Table 3) ---------------------------------------------------------------------
# 1-D features: A = {15, 3} (mean 9), B = {10, 6} (mean 8), C = {4}, D = {13}.
#   minimum:  A-C = |3 - 4| = 1 is the smallest (A-B 3, A-D 2, B-C 2, B-D 3, C-D 9)
#   maximum:  B-C = |10 - 4| = 6 is the smallest (A-B 9, A-C 11, A-D 10, B-D 7, C-D 9)
#   centroid: A-B = |9 - 8| = 1 is the smallest (A-C 5, A-D 4, B-C 4, B-D 5, C-D 9)
POINTS = np.array([[15.0], [3.0], [10.0], [6.0], [4.0], [13.0]])
GROUPS = np.array([0, 0, 1, 1, 2, 3])
EXPECTED = {
    "min": ([[0, 3, 1, 2], [3, 0, 2, 3], [1, 2, 0, 9], [2, 3, 9, 0]], [0, 0, 1, 1, 0, 2]),
    "max": ([[0, 9, 11, 10], [9, 0, 6, 7], [11, 6, 0, 9], [10, 7, 9, 0]], [0, 0, 1, 1, 1, 2]),
    "centroid": ([[0, 1, 5, 4], [1, 0, 4, 5], [5, 4, 0, 9], [4, 5, 9, 0]], [0, 0, 0, 0, 1, 2]),
}


@pytest.mark.parametrize("linkage", sorted(EXPECTED))
def test_each_merge_criterion_picks_its_pair(linkage: str) -> None:
    matrix, merged = EXPECTED[linkage]
    dist = cluster_distances(POINTS, GROUPS, linkage)
    np.testing.assert_allclose(dist, np.array(matrix, dtype=float))
    assert merge_step(GROUPS, dist, 1).tolist() == merged


# -- PEDAL (Eq. 6) --------------------------------------------------------------------------------
def test_pedal_hand_computed_case() -> None:
    # x = (1, 0); memory slots w0 = x itself (own slot, excluded), w1 = (0, 1), w2 = (-1, 0),
    # w3 = (0.6, 0.8): squared distances 2, 4, 0.8. s = 2 -> weights e^-2, e^-4, e^-0.8; k = 1
    # keeps w3: L = -log(e^-0.8 / (e^-0.8 + e^-2 + e^-4)) = log(1 + e^-1.2 + e^-3.2).
    x = torch.tensor([[[1.0, 0.0]]])
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]])
    loss = pedal_loss(x, memory, torch.tensor([0]), k=1, scale=2.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.2) + math.exp(-3.2)), rel=1e-6)
    # k = N - 1: every other slot is a positive, the ratio is 1
    assert pedal_loss(x, memory, torch.tensor([0]), k=3, scale=2.0).item() == pytest.approx(
        0.0, abs=1e-7
    )
    # k larger than the other slots is capped at N - 1
    assert pedal_loss(x, memory, torch.tensor([0]), k=50, scale=2.0).item() == pytest.approx(
        0.0, abs=1e-7
    )


def _pedal_brute_force(x, memory, indices, k, s) -> float:
    """Eq. 6 with plain loops: per stripe u and image i, sort the other slots by distance."""
    b, u_count, _ = x.shape
    per_stripe = []
    for u in range(u_count):
        total = 0.0
        for i in range(b):
            d2 = [(float(((x[i, u] - memory[u, j]) ** 2).sum()), j)
                  for j in range(memory.shape[1]) if j != int(indices[i])]
            d2.sort()
            num = sum(math.exp(-s / 2 * d) for d, _ in d2[:k])
            den = sum(math.exp(-s / 2 * d) for d, _ in d2)
            total += -math.log(num / den)
        per_stripe.append(total / b)
    return sum(per_stripe) / u_count


def test_pedal_matches_a_brute_force_loop_and_gives_gradients_to_patches_only() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(3, 2, 4, generator=gen, dtype=torch.float64), dim=2)
    memory = torch.nn.functional.normalize(
        torch.randn(2, 7, 4, generator=gen, dtype=torch.float64), dim=2
    )
    indices = torch.tensor([5, 0, 2])
    x.requires_grad_(True)
    memory.requires_grad_(True)
    loss = pedal_loss(x, memory, indices, k=2, scale=5.0)
    assert loss.item() == pytest.approx(_pedal_brute_force(x.detach(), memory.detach(), indices,
                                                           2, 5.0), rel=1e-10)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert memory.grad is None


def test_patch_memory_averages_and_renormalises_only_the_batch_slots() -> None:
    # U = 2 stripes, N = 3 images, D = 2; image 1 receives x = (0, 1) on stripe 0 and (1, 0) on
    # stripe 1. Stripe 0's slot (1, 0) becomes normalise((0.5, 0.5)) = (1/sqrt2, 1/sqrt2); stripe
    # 1's slot (1, 0) stays (1, 0).
    rows = torch.tensor([[[1.0, 0.0]] * 3, [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    memory = PatchMemory(rows, momentum=0.5)
    memory.update(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([1]))
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[[1.0, 0.0], [r, r], [1.0, 0.0]],
                             [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(memory.features, expected)


def test_stripes_are_row_band_means() -> None:
    # (1, 1, 4, 2) map, rows 0..3 hold 1, 2, 3, 4 (both columns): two stripes -> 1.5 and 3.5
    fmap = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat_interleave(2).reshape(1, 1, 4, 2)
    torch.testing.assert_close(stripe_features(fmap, 2), torch.tensor([[[1.5], [3.5]]]))


def test_attracted_loss_hand_computed() -> None:
    # v1 = (1, 0) to c0 = (0, 1): 1/2 * 2 = 1; v2 = (0, 1) to c1 = (0, 0.5): 1/2 * 0.25 = 0.125
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    centres = torch.tensor([[0.0, 1.0], [0.0, 0.5]])
    loss = attracted_loss(v, torch.tensor([0, 1]), centres)
    assert loss.item() == pytest.approx((1.0 + 0.125) / 2)


# -- the adapter ----------------------------------------------------------------------------------
def tiny_view(seed: int = 0) -> UnlabeledView:
    """24 images 32x16: 6 'people' (top/bottom colours) x 4 noisy shots."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(6, 2, 3))
    images = np.empty((N, 32, 16, 3), dtype=np.uint8)
    for i in range(N):
        img = np.empty((32, 16, 3))
        img[:16], img[16:] = colours[i % 6, 0], colours[i % 6, 1]
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
    adapter = FGU(**{**TINY, **params})
    config = adapter.resolve_config("tiny", "ci")
    reported: dict[int, np.ndarray] = {}
    encoder = run_epochs(adapter, tiny_view(), config, context(tmp, seed, reported, callback),
                         after_checkpoint=[callback] if callback else ())
    return encoder, reported


def embed(encoder: torch.nn.Module) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(123)))


def test_registered_with_paper_defaults_and_deviations() -> None:
    assert get_method("fgu") is FGU
    market = FGU().resolve_config("market1501", "paper")
    duke = FGU().resolve_config("dukemtmc-reid", "paper")
    assert market["pedal_scale"] == 15 and duke["pedal_scale"] == 5
    assert market["temperature"] == 0.1 and market["memory_momentum"] == 0.5
    assert market["attract_weight"] == 0.5 and market["pedal_weight"] == 0.8
    assert market["pedal_k"] == 15 and market["merge_fraction"] == 0.05
    assert market["linkage"] == "min" and market["last_stride"] == 1
    assert market["batch_size"] == 32 and market["lr"] == 1e-4 and market["lr_step"] == 50
    assert FGU().num_epochs(market) == 60
    assert any("stripes U is not stated" in d for d in FGU.deviations())
    with pytest.raises(ConfigError, match="linkage"):
        FGU(linkage="median").setup(tiny_view(), FGU(linkage="median").resolve_config(
            "tiny", "ci"), context(Path("/nonexistent"), 0, {}))


def test_fit_counts_follow_n_minus_t_n_and_merging_only_joins(tmp_path: Path) -> None:
    encoder, reported = fit(tmp_path)
    out = embed(encoder)
    # fused test feature: 128-d pooled (resnet-tiny) + U = 2 stripes x 8-d, each half of norm 1
    assert encoder.feature_dim == 128 + 2 * 8
    assert out.shape == (5, encoder.feature_dim) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :128].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out[:, 128:].norm(dim=1), torch.ones(5))
    # N = 24, n = floor(24 * 0.25) = 6: stages hold 24, 18, 12 clusters
    assert sorted(reported) == [0, 1, 2]
    assert [int(reported[e].max()) + 1 for e in range(3)] == [24, 18, 12]
    assert reported[0].tolist() == list(range(N))
    for earlier, later in ((0, 1), (1, 2)):
        for c in np.unique(reported[earlier]):
            assert len(np.unique(reported[later][reported[earlier] == c])) == 1


def test_the_chosen_linkage_reaches_the_merge(tmp_path: Path, monkeypatch) -> None:
    seen = []
    real = merging_module.cluster_distances  # fgu merges through linkage_merge_step there

    def spy(features, labels, linkage="min", **kwargs):
        seen.append(linkage)
        return real(features, labels, linkage, **kwargs)

    monkeypatch.setattr(merging_module, "cluster_distances", spy)
    fit(tmp_path / "c", linkage="centroid", merge_steps=1, iters=1)
    fit(tmp_path / "m", linkage="max", merge_steps=1, iters=1)
    assert seen == ["centroid", "max"]


def test_same_seed_same_outputs_other_seed_different(tmp_path: Path) -> None:
    enc_a, labels_a = fit(tmp_path / "a", seed=0, iters=1)
    torch.manual_seed(999)  # global RNG state must not matter: everything is drawn from the run's
    np.random.seed(999)
    enc_b, labels_b = fit(tmp_path / "b", seed=0, iters=1)
    enc_c, _ = fit(tmp_path / "c", seed=1, iters=1)
    assert torch.equal(embed(enc_a), embed(enc_b))
    assert all(np.array_equal(labels_a[e], labels_b[e]) for e in labels_a)
    assert not torch.equal(embed(enc_a), embed(enc_c))


class Killed(RuntimeError):
    pass


def test_resume_after_a_crash_ends_bit_identical(tmp_path: Path) -> None:
    whole, labels_whole = fit(tmp_path / "whole", seed=3)

    def crash_after_first_merge(epoch: int, encoder: torch.nn.Module) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(tmp_path / "resumed", seed=3, callback=crash_after_first_merge)
    torch.manual_seed(7)
    resumed, labels_resumed = fit(tmp_path / "resumed", seed=3)
    assert sorted(labels_resumed) == [2]
    assert np.array_equal(labels_resumed[2], labels_whole[2])
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_global_test_feature_is_the_pooled_backbone_output() -> None:
    from methods.common.backbones import build_backbone
    from methods.fgu import FGUNetwork, FusedEncoder

    torch.manual_seed(0)
    net = FGUNetwork(build_backbone("resnet-tiny", pretrained=False, last_stride=1), 16, 0.5, 2, 8)
    net.eval()
    x = torch.randn(3, 3, 32, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert FusedEncoder(net, local=False).feature_dim == 128
        assert torch.equal(FusedEncoder(net, local=False)(x), net.backbone(x))
