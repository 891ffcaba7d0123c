"""GCL + SCL: the graph correlation module, the selective memory update, and the adapter.

Reference values are computed independently of the code under test: by hand (orthonormal nodes,
whose relations are the identity matrix; two-dimensional momentum updates), with numpy
re-derivations of Eq. 1-4 (BatchNorm written out from its statistics), and by brute force
(sorting each class's similarities in plain Python). The adapter is run on a tiny colour-coded
view (ci scale) for the harness-facing properties: it trains, its switches change what runs, it
is seeded and resumable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_cluster_contrast import _context, _tiny_view

from benchmark.engine.contract import ConfigError
from methods.common.selective_memory import (
    least_similar,
    random_pick,
    select_queries,
    selective_update_,
)
from methods.gcl_scl import GCLSCL, GraphCorrelation, doubled_bank, refine_in_graphs

TINY = {"k1": 10, "k2": 3, "batch_size": 12, "iters": 3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- the GCL module (Eq. 1-4) ---------------------------------------------------------------------
def test_orthonormal_nodes_refine_by_hand():
    """W = I and BN at its initial statistics keep each unit node's direction, so the relations of
    four orthonormal nodes are the identity matrix: m_ii = e^5 / (e^5 + 3), m_ij = 1 / (e^5 + 3)."""
    gcl = GraphCorrelation(4, temperature=5.0, init="identity").eval()
    nodes = torch.eye(4)[[2, 0, 3, 1]]
    refined, m = gcl(nodes)
    e5 = math.exp(5.0)
    expected_m = np.full((4, 4), 1.0 / (e5 + 3.0))
    np.fill_diagonal(expected_m, e5 / (e5 + 3.0))
    assert np.allclose(m.detach().numpy(), expected_m, atol=1e-6)
    assert np.allclose(m.sum(1).detach().numpy(), 1.0, atol=1e-6)
    expected_refined = expected_m @ nodes.numpy()  # v~_i = sum_j m_ij v_j
    assert np.allclose(refined.detach().numpy(), expected_refined, atol=1e-6)


def _bn(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray):
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_gcl(v, w_t, w_p, stats_t, stats_p, temperature):
    """Eq. 1-3 re-derived in numpy: theta/phi = L2norm(BN(W v)), softmax_j(T theta_i . phi_j)."""
    theta = _unit(_bn(v @ w_t.T, *stats_t))
    phi = _unit(_bn(v @ w_p.T, *stats_p))
    logits = temperature * theta @ phi.T
    m = np.exp(logits - logits.max(1, keepdims=True))
    m /= m.sum(1, keepdims=True)
    return m, m @ v


def _random_gcl(dim: int, temperature: float, seed: int):
    rng = np.random.default_rng(seed)
    gcl = GraphCorrelation(dim, temperature=temperature, init="random")
    stats = []
    for branch in (gcl.theta, gcl.phi):
        w = rng.normal(size=(dim, dim))
        mean, var = rng.normal(size=dim), rng.uniform(0.5, 2.0, size=dim)
        gamma, beta = rng.uniform(0.5, 1.5, size=dim), rng.normal(scale=0.1, size=dim)
        with torch.no_grad():
            branch[0].weight.copy_(torch.from_numpy(w))
            branch[1].running_mean.copy_(torch.from_numpy(mean))
            branch[1].running_var.copy_(torch.from_numpy(var))
            branch[1].weight.copy_(torch.from_numpy(gamma))
            branch[1].bias.copy_(torch.from_numpy(beta))
        stats.append((w, (mean, var, gamma, beta)))
    return gcl.double(), stats


def test_four_node_graph_matches_a_numpy_derivation_and_rows_sum_to_one():
    gcl, ((w_t, s_t), (w_p, s_p)) = _random_gcl(3, 5.0, seed=0)
    gcl.eval()
    v = _unit(np.random.default_rng(1).normal(size=(4, 3)))
    expected_m, expected_refined = _numpy_gcl(v, w_t, w_p, s_t, s_p, 5.0)
    refined, m = gcl(torch.from_numpy(v))
    assert np.allclose(m.detach().numpy(), expected_m, atol=1e-10)
    assert np.allclose(m.detach().numpy().sum(1), 1.0, atol=1e-12)
    assert (m.detach().numpy() > 0).all()
    assert np.allclose(refined.detach().numpy(), expected_refined, atol=1e-10)


def test_cluster_refinement_cuts_graphs_in_order_and_concatenates():
    """Six nodes with graph size 4: nodes 0-3 form one graph, 4-5 another; [v, v~] normalised."""
    gcl, ((w_t, s_t), (w_p, s_p)) = _random_gcl(3, 5.0, seed=2)
    gcl.train()  # refinement must switch to eval mode (running statistics) and back
    v = _unit(np.random.default_rng(3).normal(size=(6, 3)))
    m1, r1 = _numpy_gcl(v[:4], w_t, w_p, s_t, s_p, 5.0)
    m2, r2 = _numpy_gcl(v[4:], w_t, w_p, s_t, s_p, 5.0)
    expected = _unit(np.concatenate([v, np.concatenate([r1, r2])], axis=1))
    relation_aware, self_weight = refine_in_graphs(gcl, torch.from_numpy(v), 4)
    assert gcl.training
    assert relation_aware.shape == (6, 6)
    assert np.allclose(relation_aware.numpy(), expected, atol=1e-10)
    assert np.allclose(self_weight.numpy(), np.r_[np.diag(m1), np.diag(m2)], atol=1e-10)


def test_noise_suppression_graph_uses_batch_statistics_in_training():
    """Eq. 5 over a mini-batch: in training mode BN normalises with the batch's own mean and
    (biased) variance."""
    gcl, ((w_t, (_, _, g_t, b_t)), (w_p, (_, _, g_p, b_p))) = _random_gcl(3, 5.0, seed=4)
    gcl.train()
    v = _unit(np.random.default_rng(5).normal(size=(8, 3)))

    def batch_stats(w, gamma, beta):
        z = v @ w.T
        return z.mean(0), z.var(0), gamma, beta

    expected_m, expected_refined = _numpy_gcl(
        v, w_t, w_p, batch_stats(w_t, g_t, b_t), batch_stats(w_p, g_p, b_p), 5.0
    )
    refined, m = gcl(torch.from_numpy(v))
    assert np.allclose(m.detach().numpy(), expected_m, atol=1e-9)
    assert np.allclose(refined.detach().numpy(), expected_refined, atol=1e-9)


def test_doubled_bank_scores_the_concatenation_against_the_same_centroid():
    c = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    x_ref = torch.randn(3, 4, dtype=torch.float64)
    bank = doubled_bank(c)
    assert torch.allclose(bank.norm(dim=1), torch.ones(5, dtype=torch.float64))
    cos = F.normalize(torch.cat([x, x_ref], 1), dim=1) @ bank.T
    by_hand = ((x + x_ref) @ c.T) / (torch.cat([x, x_ref], 1).norm(dim=1, keepdim=True)
                                     * math.sqrt(2))
    assert torch.allclose(cos, by_hand)


# -- selective memory update (Eq. 6) --------------------------------------------------------------
def _angles(deg):
    rad = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return torch.from_numpy(np.stack([np.cos(rad), np.sin(rad)], axis=1))


def test_topk_picks_the_k_least_similar_per_class_by_hand():
    centroids = _angles([0.0, 90.0])
    # class 0 queries at 10, 80, 40, 60 degrees from its centroid; class 1 at 5 and 50 from 90
    feats = _angles([10, 95, 80, 40, 140, 60])
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    assert least_similar(feats, labels, centroids, 2).tolist() == [2, 4, 5, 1]
    assert least_similar(feats, labels, centroids, 1).tolist() == [2, 4]
    # a class with fewer than k members gives all of them, still rank-major
    assert least_similar(feats, labels, centroids, 3).tolist() == [2, 4, 5, 1, 3]
    # scaled features: selection uses cosine similarity
    assert least_similar(feats * torch.tensor([[1.0], [9], [0.1], [3], [2], [5]]).double(),
                         labels, centroids, 2).tolist() == [2, 4, 5, 1]


@pytest.mark.parametrize("seed", range(5))
def test_topk_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_classes, dim, k = 5, 6, int(rng.integers(1, 5))
    labels = rng.integers(0, num_classes, size=40)
    feats = rng.normal(size=(40, dim))
    centroids = _unit(rng.normal(size=(num_classes, dim)))
    chosen = least_similar(torch.from_numpy(feats), torch.from_numpy(labels),
                           torch.from_numpy(centroids), k).tolist()
    expected_by_rank: list[list[int]] = [[] for _ in range(k)]
    for cls in sorted(set(labels.tolist())):
        members = [i for i in range(40) if labels[i] == cls]
        sims = {i: float(_unit(feats[i]) @ centroids[cls]) for i in members}
        for rank, i in enumerate(sorted(members, key=lambda j: sims[j])[:k]):
            expected_by_rank[rank].append(i)
    assert chosen == [i for rank in expected_by_rank for i in rank]


def test_eq6_updates_in_rank_order_by_hand():
    """Two queries of class 0, at 90 (rank 1) and 30 degrees (rank 2), momentum 0.5:
    c <- norm(0.5 c + 0.5 q1), then c <- norm(0.5 c + 0.5 q2); class 1 is not touched."""
    centroids = _angles([0.0, 180.0])
    feats = _angles([30.0, 90.0, 10.0])
    labels = torch.tensor([0, 0, 0])
    chosen = least_similar(feats, labels, centroids, 2)
    assert chosen.tolist() == [1, 0]
    selective_update_(centroids, feats, labels, chosen, momentum=0.5)
    c = np.array([1.0, 0.0])
    for q in (np.array([0.0, 1.0]), np.array([math.cos(math.pi / 6), 0.5])):
        c = _unit(0.5 * c + 0.5 * q)
    assert np.allclose(centroids[0].numpy(), c, atol=1e-12)
    assert np.allclose(centroids[1].numpy(), [-1.0, 0.0], atol=1e-12)


def test_average_policy_moves_once_with_the_class_mean():
    centroids = _angles([0.0, 90.0])
    feats = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    chosen = select_queries("average", feats, labels, centroids, 2, np.random.default_rng(0))
    assert chosen.tolist() == [0, 1, 2]
    selective_update_(centroids, feats, labels, chosen, momentum=0.2, average=True)
    mean0 = np.array([0.5, 0.5])  # mean of the normalised (0, 1) and (1, 0)
    assert np.allclose(centroids[0].numpy(), _unit(0.2 * np.array([1.0, 0]) + 0.8 * mean0))
    assert np.allclose(centroids[1].numpy(), [0.0, 1.0])


def test_random_policy_draws_k_distinct_members_per_class_reproducibly():
    labels = torch.tensor([3, 1, 3, 3, 1, 0, 3])
    picks = [random_pick(labels, 2, np.random.default_rng(s)).tolist() for s in range(20)]
    for pick in picks:
        first, second = pick[:3], pick[3:]
        assert [int(labels[i]) for i in first] == [0, 1, 3]  # rank 1 of each class, by label
        assert [int(labels[i]) for i in second] == [1, 3]  # class 0 has one member only
        assert len(set(pick)) == len(pick)
    assert len({tuple(p) for p in picks}) > 1  # it is random...
    assert random_pick(labels, 2, np.random.default_rng(7)).tolist() == picks[7]  # ...and seeded
    with pytest.raises(ValueError, match="policy"):
        select_queries("median", torch.zeros(7, 2), labels, torch.zeros(4, 2), 1,
                       np.random.default_rng(0))


# -- the adapter ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def view():
    return _tiny_view()


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(123))


def _fit(view, tmp_path: Path, seed: int, name: str, **params):
    adapter = GCLSCL(**{**TINY, **params})
    config = adapter.resolve_config("synthetic-reid", "ci")
    reported: list[tuple[int, np.ndarray]] = []
    ctx = _context(tmp_path, seed, name,
                   pseudo_label_hook=lambda epoch, labels: reported.append((epoch, labels)))
    encoder = adapter.fit(view, config, ctx)
    return adapter, encoder, ctx.sink.history, reported


def _embed(encoder, probe):
    encoder.eval()
    with torch.no_grad():
        return encoder(probe)


def _is_identity(gcl: GraphCorrelation) -> bool:
    eye = torch.eye(gcl.theta[0].weight.shape[0])
    return bool(torch.equal(gcl.theta[0].weight, eye) and torch.equal(gcl.phi[0].weight, eye))


def test_full_model_refines_from_the_second_clustering_and_trains_gcl(view, probe, tmp_path):
    adapter, encoder, history, reported = _fit(view, tmp_path, 0, "full")
    assert _embed(encoder, probe).shape == (5, 128)
    assert [e for e, _ in reported] == [0, 1]
    assert history[0]["cluster_refinement"] == 0.0 and "gcl_self_attention" not in history[0]
    assert history[1]["cluster_refinement"] == 1.0
    assert 1 / 16 <= history[1]["gcl_self_attention"] <= 1.0
    for epoch, labels in reported:
        assert labels.shape == (len(view),)
        assert history[epoch]["num_clusters"] == labels.max() + 1 >= 2
        assert history[epoch]["iterations"] == TINY["iters"]
        assert np.isfinite(history[epoch]["loss_refined"])
        assert history[epoch]["loss"] == pytest.approx(
            history[epoch]["loss_x"] + 0.5 * history[epoch]["loss_refined"]
        )
    assert not _is_identity(adapter.gcl)  # noise suppression trained the shared GCL weights


def test_baseline_switches_leave_gcl_untouched(view, tmp_path):
    adapter, _, history, _ = _fit(view, tmp_path, 0, "base", scl=False, cr=False, ns=False)
    assert _is_identity(adapter.gcl)
    assert all(h["cluster_refinement"] == 0.0 and "loss_refined" not in h for h in history.values())
    assert all(h["loss"] == h["loss_x"] for h in history.values())


def test_same_seed_is_bit_identical_and_resume_ends_like_a_full_run(view, probe, tmp_path):
    params = {"memory_policy": "random", "topk": 1}
    _, a, hist_a, _ = _fit(view, tmp_path, 0, "a", **params)
    torch.rand(10)
    _, b, hist_b, _ = _fit(view, tmp_path, 0, "b", **params)
    assert torch.equal(_embed(a, probe), _embed(b, probe)) and hist_a == hist_b
    _, c, _, _ = _fit(view, tmp_path, 1, "c", **params)
    assert not torch.equal(_embed(a, probe), _embed(c, probe))

    _fit(view, tmp_path, 0, "resumed", epochs=1, **params)
    state = torch.load(tmp_path / "resumed" / "epoch-0000.pt", weights_only=True)
    assert {"model", "gcl", "optimizer", "scheduler"} <= set(state["method"])
    _, resumed, hist_resumed, reported = _fit(view, tmp_path, 0, "resumed", **params)
    assert [e for e, _ in reported] == [1]
    assert torch.equal(_embed(a, probe), _embed(resumed, probe)) and hist_resumed == hist_a


@pytest.mark.parametrize(
    ("params", "message"),
    [({"cr": True, "ns": False}, "cr needs ns"),
     ({"scl": False, "memory_policy": "random"}, "needs scl"),
     ({"memory_policy": "hardest"}, "memory_policy"),
     ({"scl_loss": "some"}, "scl_loss")],
)
def test_invalid_switch_combinations_are_refused(view, tmp_path, params, message):
    with pytest.raises(ConfigError, match=message):
        _fit(view, tmp_path, 0, "bad", **params)


def test_paper_defaults_and_declarations():
    market = GCLSCL().resolve_config("market1501", "paper")
    assert (market["graph_size"], market["gcl_temperature"], market["k1"], market["eps"],
            market["min_samples"]) == (16, 5.0, 30, 0.6, 4)
    assert (market["batch_size"] // market["num_instances"], market["num_instances"]) == (16, 8)
    assert (market["lr"], market["step_size"], market["gamma"], market["epochs"]) == (
        3.5e-4, 20, 0.1, 60)
    assert (market["topk"], market["temperature"], market["refined_weight"]) == (2, 0.05, 0.5)
    assert market["scl"] and market["cr"] and market["ns"] and market["memory_policy"] == "topk"
    quick = GCLSCL().resolve_config("synthetic-reid", "quick")
    from methods.cluster_contrast import ClusterContrast

    cc_quick = ClusterContrast().resolve_config("synthetic-reid", "quick")
    for key in ("epochs", "iters", "batch_size", "num_instances", "lr", "step_size", "eps"):
        assert quick[key] == cc_quick[key]  # the same scale as the baseline it is compared with
    deviations = GCLSCL.deviations()
    assert len(deviations) >= 8
    assert any("index order" in d for d in deviations)
    assert any("0.2" in d and "0.1" in d for d in deviations)
    assert not GCLSCL.uses_camera_ids and GCLSCL.paper.seed_file == "003_ed6bbd13637c441c.txt"
