"""Similarity guidance (paper 001): the terms of the individual-group distance (Eq. 3-8) on a
6-point example worked out by hand, d2 against a brute-force implementation of its definition, the
batch-hard triplet loss against torch's triplet loss on hand-picked triplets, and the adapter on a
tiny view: cluster counts follow the merge rule, same seed same encoder, resume is bit-identical,
the STL-10 initialisation is found or reported missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import ConfigError, RunContext, run_epochs
from benchmark.engine.method_registry import get_method
from benchmark.engine.profiles import get_profile
from methods.common.group_distance import (
    SampleDistance,
    euclidean_term,
    individual_group_distance,
    neighbourhood_term,
    parse_terms,
    size_term,
)
from methods.common.merging import select_merges
from methods.common.triplet import batch_hard_triplet_loss
from methods.similarity_guidance import (
    SimilarityGuidance,
    backbone_state,
    find_init_checkpoint,
)

# -- the 6-point example ---------------------------------------------------------------------------
# Unit vectors at these angles (degrees). Euclidean distance = chord = 2 sin(angle difference / 2).
ANGLES = [0, 10, 30, 100, 115, 205]
# Angle differences: 0-1 10, 0-2 30, 1-2 20, 3-4 15, 2-3 70, 2-4 85, 4-5 90, 3-5 105, 0-5 155, ...
# With depths (k1, k_half, k2) = (3, 2, k2), N(i, 3) = i + its two nearest:
#   N(0) = {0,1,2}, N(1) = {1,0,2}, N(2) = {2,1,0}, N(3) = {3,4,2}, N(4) = {4,3,2}, N(5) = {5,4,3}
#   3-reciprocal sets: R(0) = R(1) = R(2) = {0,1,2}; R(3) = R(4) = {3,4} (2 does not list 3 or 4);
#   R(5) = {5} (neither 3 nor 4 lists 5).
#   2-reciprocal sets: {0,1}, {0,1}, {2}, {3,4}, {3,4}, {5}; each overlaps its R by more than 2/3
#   of its size, and adds nothing new: R* = R.
R_STAR = [{0, 1, 2}, {0, 1, 2}, {0, 1, 2}, {3, 4}, {3, 4}, {5}]
# N(i, 2) for the local query expansion with k2 = 2:
NN2 = [[0, 1], [1, 0], [2, 1], [3, 4], [4, 3], [5, 4]]


def six_points() -> np.ndarray:
    rad = np.deg2rad(ANGLES)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def chord(i: int, j: int) -> float:
    diff = abs(ANGLES[i] - ANGLES[j]) % 360
    return 2 * math.sin(math.radians(min(diff, 360 - diff)) / 2)


def phi_by_hand(k2: int) -> list[list[float]]:
    """Eq. 6 on the sets above, then the mean over N(i, k2)."""
    phi = [[math.exp(-chord(i, j)) if j in R_STAR[i] else 0.0 for j in range(6)] for i in range(6)]
    if k2 == 1:
        return phi
    return [[sum(phi[q][j] for q in NN2[i]) / 2 for j in range(6)] for i in range(6)]


def d2_by_hand(phi: list[list[float]]) -> np.ndarray:
    """Eq. 5."""
    out = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            low = sum(min(a, b) for a, b in zip(phi[i], phi[j]))
            high = sum(max(a, b) for a, b in zip(phi[i], phi[j]))
            out[i, j] = 1 - low / high
    return out


def test_d1_is_the_euclidean_distance() -> None:
    got = euclidean_term(six_points())
    expected = np.array([[chord(i, j) for j in range(6)] for i in range(6)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0, 1] == pytest.approx(2 * math.sin(math.radians(5)), abs=1e-6)  # 0.174311


@pytest.mark.parametrize("k2", [1, 2])
def test_d2_matches_the_hand_worked_neighbourhoods(k2: int) -> None:
    got = neighbourhood_term(six_points(), depths=(3, 2, k2))
    np.testing.assert_allclose(got, d2_by_hand(phi_by_hand(k2)), atol=1e-6)
    if k2 == 1:
        # phi_0 = (1, e^-0.1743, e^-0.5176, 0, 0, 0), phi_1 = (e^-0.1743, 1, e^-0.3473, 0, 0, 0):
        # d2 = 1 - (0.840034 + 0.840034 + 0.595922) / (1 + 1 + 0.706617) = 0.159102
        assert got[0, 1] == pytest.approx(0.159102, abs=1e-5)
        assert got[3, 4] == pytest.approx(1 - math.exp(-2 * math.sin(math.radians(7.5))), abs=1e-6)
        assert got[0, 3] == 1.0 and got[4, 5] == 1.0  # no shared neighbour
    else:
        # phi'_4 = (phi_4 + phi_3) / 2 = (0, 0, 0, 0.885131, 0.885131, 0),
        # phi'_5 = (phi_5 + phi_4) / 2 = (0, 0, 0, 0.385131, 0.5, 0.5):
        # d2 = 1 - (0.385131 + 0.5) / (0.885131 + 0.885131 + 0.5) = 0.610117
        assert got[4, 5] == pytest.approx(0.610117, abs=1e-5)
    np.testing.assert_allclose(np.diag(got), 0.0, atol=1e-12)


def test_d3_is_the_sum_of_cluster_sizes() -> None:
    got = size_term(np.array([0, 0, 0, 1, 1, 2]))
    np.testing.assert_array_equal(got, [[0, 5, 4], [5, 0, 3], [4, 3, 0]])


def test_D_between_clusters_and_the_balance_term_changes_the_merge() -> None:
    x, labels = six_points(), np.array([0, 0, 0, 1, 1, 2])
    # Across groups no neighbour is shared (d2 = 1); the closest pairs are 2-3 (70 deg), 0-5
    # (155 deg), 4-5 (90 deg).
    ab = 0.5 * 2 * math.sin(math.radians(35)) + 0.5 + 0.03 * 5
    ac = 0.5 * 2 * math.sin(math.radians(77.5)) + 0.5 + 0.03 * 4
    bc = 0.5 * 2 * math.sin(math.radians(45)) + 0.5 + 0.03 * 3
    got = individual_group_distance(x, labels, depths=(3, 2, 1))
    np.testing.assert_allclose(got, [[0, ab, ac], [ab, 0, bc], [ac, bc, 0]], atol=1e-6)
    assert select_merges(got, 1).tolist() == [[0, 1]]
    # A heavier balance term prefers joining the small clusters: B-C instead of A-B.
    heavy = individual_group_distance(x, labels, gamma=0.2, depths=(3, 2, 1))
    assert select_merges(heavy, 1).tolist() == [[1, 2]]
    # Terms switched off (Table 4): d1 alone is the minimum distance, d3 alone the sizes.
    only_d1 = individual_group_distance(x, labels, depths=(3, 2, 1), terms="d1")
    assert only_d1[1, 2] == pytest.approx(0.5 * math.sqrt(2), abs=1e-6)
    np.testing.assert_allclose(
        individual_group_distance(x, labels, gamma=1.0, terms="d3"), size_term(labels)
    )


def brute_force_d2(x: np.ndarray, k1: int, kh: int, k2: int) -> np.ndarray:
    """Eq. 4-6 and the expansions written out with dense sorts and Python sets."""
    n = len(x)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    order = np.argsort(-(x.astype(np.float64) @ x.T.astype(np.float64)), axis=1, kind="stable")

    def recip(i: int, k: int) -> set[int]:
        return {int(j) for j in order[i, :k] if i in order[j, :k]}

    phi = np.zeros((n, n))
    for i in range(n):
        core = recip(i, k1)
        full = set(core)
        for q in core:
            half = recip(q, kh)
            if len(half & core) > 2 / 3 * len(half):
                full |= half
        for j in full:
            phi[i, j] = math.exp(-d[i, j])
    phi = np.stack([phi[order[i, :k2]].mean(0) for i in range(n)])
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = 1 - np.minimum(phi[i], phi[j]).sum() / np.maximum(phi[i], phi[j]).sum()
    return out


def test_d2_equals_a_brute_force_implementation_of_its_definition() -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(5, 8))
    x = (centres[rng.integers(0, 5, 60)] + 0.6 * rng.normal(size=(60, 8))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(neighbourhood_term(x, (10, 5, 3)), brute_force_d2(x, 10, 5, 3),
                               atol=1e-9)


def test_first_clustering_links_every_pair_within_eps() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = SampleDistance(x, alpha=0.5, beta=0.5, depths=(6, 3, 2))
    dense = 0.5 * euclidean_term(x) + 0.5 * brute_force_d2(x, 6, 3, 2)
    eps = float(np.quantile(dense[dense > 0], 0.03))
    _, expected = connected_components(dense <= eps, directed=False)
    adapter = SimilarityGuidance(k1=6, k_half=3, k2=2, eps=eps)
    adapter.config = adapter.resolve_config("market1501", "ci")
    got = adapter._first_clustering(x)
    assert 2 < got.max() + 1 < 40
    assert np.array_equal(got[:, None] == got[None, :], expected[:, None] == expected[None, :])
    np.testing.assert_allclose(dist.within(eps).toarray(), np.where(dense <= eps, dense, 0),
                               atol=1e-9)


def test_parse_terms() -> None:
    assert parse_terms("d1+d2+d3") == {"d1", "d2", "d3"} and parse_terms("d1") == {"d1"}
    for bad in ("", "d4", "d1+", "d1 d2"):
        with pytest.raises(ValueError):
            parse_terms(bad)


# -- batch-hard triplet loss -----------------------------------------------------------------------
def test_batch_hard_triplet_equals_torch_on_the_hardest_triplets() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # label 4: no positive, left out
    xn = F.normalize(x, dim=1)
    anchors, positives, negatives = [], [], []
    for a in range(12):
        pos = [p for p in range(12) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(12) if labels[q] != labels[a]]
        if not pos:
            continue
        anchors.append(a)
        positives.append(max(pos, key=lambda p: float((xn[a] - xn[p]).norm())))
        negatives.append(min(neg, key=lambda q: float((xn[a] - xn[q]).norm())))
    expected = F.triplet_margin_loss(xn[anchors], xn[positives], xn[negatives], margin=0.2, eps=0)
    got = batch_hard_triplet_loss(x, labels, 0.2)
    assert float(got) == pytest.approx(float(expected), abs=1e-9)
    assert float(batch_hard_triplet_loss(x, torch.zeros(12, dtype=torch.long), 0.2)) == 0.0


# -- the adapter -----------------------------------------------------------------------------------
N = 24
TINY = {"batch_size": 8, "merge_fraction": 0.25, "merge_steps": 2, "first_epochs": 1,
        "step_epochs": 1, "embedding_dim": 16, "iters": 3, "k1": 6, "k_half": 3, "k2": 2,
        "min_clusters_fraction": 0.1}


def tiny_view(seed: int = 0) -> UnlabeledView:
    """24 images 32x16: 6 'people' (top/bottom colours) x 4 noisy shots."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(6, 2, 3))
    images = np.empty((N, 32, 16, 3), dtype=np.uint8)
    for i in range(N):
        img = np.empty((32, 16, 3))
        img[:16], img[16:] = colours[i % 6, 0], colours[i % 6, 1]
        images[i] = np.clip(img + rng.normal(0, 20, size=img.shape), 0, 255).astype(np.uint8)
    return UnlabeledView(pixels=images, kind="reid")


def fit(tmp: Path, seed: int = 0, callback=None, **params) -> tuple[torch.nn.Module, dict]:
    adapter = SimilarityGuidance(**{**TINY, **params})
    config = adapter.resolve_config("tiny", "ci")
    reported: dict[int, np.ndarray] = {}
    ctx = RunContext(
        device=torch.device("cpu"), seed=seed, profile=get_profile("ci"), dataset="tiny",
        task="reid", checkpoint_dir=tmp, rng=np.random.default_rng(seed),
        torch_generator=torch.Generator().manual_seed(seed),
        pseudo_label_hook=lambda epoch, labels: reported.__setitem__(epoch, labels.copy()),
    )
    encoder = run_epochs(adapter, tiny_view(), config, ctx,
                         after_checkpoint=[callback] if callback else ())
    return encoder, reported


def embed(encoder: torch.nn.Module) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_registered_with_paper_defaults() -> None:
    assert get_method("similarity-guidance") is SimilarityGuidance
    assert SimilarityGuidance.tasks == ("reid", "clustering")
    paper = SimilarityGuidance().resolve_config("market1501", "paper")
    assert (paper["merge_fraction"], paper["eps"], paper["margin"]) == (0.05, 0.1, 0.2)
    assert (paper["weight_d1"], paper["weight_d2"], paper["weight_d3"]) == (0.5, 0.5, 0.03)
    assert (paper["k1"], paper["k_half"], paper["k2"]) == (20, 10, 5)
    assert paper["triplet_proportion"] == 0.1 and paper["distance"] == "d1+d2+d3"
    assert (paper["batch_size"], paper["num_instances"]) == (64, 4)
    assert SimilarityGuidance().num_epochs(paper) == 20 + 20 * 4
    assert SimilarityGuidance().resolve_config("stl10", "paper")["init_checkpoint"] == "auto"
    assert any("validation" in d for d in SimilarityGuidance.deviations())


def test_counts_follow_N_minus_t_n_and_merging_only_joins(tmp_path: Path) -> None:
    encoder, reported = fit(tmp_path / "none", first_clustering="none", merge_steps=3)
    assert embed(encoder).shape == (5, encoder.feature_dim)
    # N = 24, n = floor(24 * 0.25) = 6: 24, 18, 12, 6 clusters
    assert [int(reported[e].max()) + 1 for e in range(4)] == [24, 18, 12, 6]
    for earlier in range(3):
        for c in np.unique(reported[earlier]):
            assert len(np.unique(reported[earlier + 1][reported[earlier] == c])) == 1
    # With the first clustering: stage 1 comes from DBSCAN, then C1 - 6 down to the floor of
    # ceil(0.1 * 24) = 3 clusters.
    _, reported = fit(tmp_path / "dbscan", eps=0.3, merge_steps=3)
    counts = [int(reported[e].max()) + 1 for e in range(4)]
    assert counts[0] == N and counts[1] < N
    assert counts[2] == max(counts[1] - 6, 3) and counts[3] == max(counts[2] - 6, 3)


class Killed(RuntimeError):
    pass


def test_same_seed_same_encoder_and_resume_is_bit_identical(tmp_path: Path) -> None:
    whole, labels_whole = fit(tmp_path / "whole", seed=3)
    torch.manual_seed(999)  # the global RNG state must not matter
    again, _ = fit(tmp_path / "again", seed=3)
    assert torch.equal(embed(whole), embed(again))

    def crash(epoch: int, encoder: torch.nn.Module) -> None:
        if epoch == 1:  # after the first clustering's epoch is checkpointed
            raise Killed

    with pytest.raises(Killed):
        fit(tmp_path / "resumed", seed=3, callback=crash)
    resumed, labels_resumed = fit(tmp_path / "resumed", seed=3)
    assert sorted(labels_resumed) == [2]
    assert np.array_equal(labels_resumed[2], labels_whole[2])
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_bad_switches_are_config_errors(tmp_path: Path) -> None:
    for bad in ({"distance": "d3"}, {"distance": "d5"}, {"loss": "focal"},
                {"first_clustering": "kmeans"}, {"eps": 1.5}, {"batch_size": 6}):
        with pytest.raises(ConfigError):
            fit(tmp_path, **bad)


def test_stl10_initialisation_is_found_or_reported_missing(tmp_path: Path) -> None:
    own = tmp_path / "out" / "stl10" / "similarity-guidance" / "quick" / "seed1" / "checkpoints"
    assert find_init_checkpoint("auto", own) is None  # no CIFAR-10 cell: start without one
    assert find_init_checkpoint("", own) is None
    cifar = tmp_path / "out" / "cifar10" / "similarity-guidance" / "quick" / "seed1"
    (cifar / "checkpoints").mkdir(parents=True)
    weights = {"backbone.trunk.w": torch.ones(2), "head.0.weight": torch.zeros(1)}
    torch.save({"epoch": 3, "method": {"model": weights}}, cifar / "checkpoints" / "epoch-0003.pt")
    assert find_init_checkpoint("auto", own) is None  # the CIFAR-10 cell has not finished
    (cifar / "record.json").write_text(json.dumps({"status": "finished"}))
    found = find_init_checkpoint("auto", own)
    assert found == cifar / "checkpoints" / "epoch-0003.pt"
    state = backbone_state(found)
    assert list(state) == ["trunk.w"] and torch.equal(state["trunk.w"], torch.ones(2))
    with pytest.raises(FileNotFoundError):
        find_init_checkpoint(str(tmp_path / "missing.pt"), own)
