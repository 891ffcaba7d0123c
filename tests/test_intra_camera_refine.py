"""The `intra-camera-refine` adapter (seed paper 004) and its shared pieces.

Hand-computed cases: harmonic-centrality scores (Eq. 1) and the information nodes on a 5-point
example, the refinement of Eq. 2 on a constructed cluster (exact at p = 1 and p = 0, Bernoulli at
p = 0.5), each decay schedule at chosen epochs, the per-camera cluster-count rule. Then the adapter
on a tiny two-camera view: the epoch layout across the two stages, what is reported per stage, the
baseline switch, and a run killed inside a camera or at the stage boundary that resumes to the bit.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import ConfigError, RunContext, run_epochs
from benchmark.engine.method_registry import get_method
from benchmark.engine.profiles import get_profile
from methods.common.centrality import harmonic_centrality, information_nodes
from methods.common.schedules import decay_factor
from methods.intra_camera_refine import (
    IntraCameraRefine,
    intra_cluster_count,
    refine_clusters,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is as fast and far faster on a crowded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- Eq. 1: harmonic centrality ------------------------------------------------------------------
POINTS = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])  # 1-D, so every distance is |a - b|


def test_harmonic_centrality_on_five_points_by_hand():
    # pairwise distances: 1 3 7 15 | 2 6 14 | 4 12 | 8 -> sum 72 over 10 pairs, mean 7.2
    # two nearest neighbours: 0:(1,3) 1:(1,2) 3:(2,3) 7:(4,6) 15:(8,12) -> mean of these 4.2
    m = 7.2
    expected_all = [1 / (1 + m) + 1 / (3 + m), 1 / (1 + m) + 1 / (2 + m),
                    1 / (2 + m) + 1 / (3 + m), 1 / (4 + m) + 1 / (6 + m),
                    1 / (8 + m) + 1 / (12 + m)]
    m = 4.2
    expected_knn = [1 / (1 + m) + 1 / (3 + m), 1 / (1 + m) + 1 / (2 + m),
                    1 / (2 + m) + 1 / (3 + m), 1 / (4 + m) + 1 / (6 + m),
                    1 / (8 + m) + 1 / (12 + m)]
    assert harmonic_centrality(POINTS, 2, offset="all") == pytest.approx(expected_all, rel=1e-6)
    assert harmonic_centrality(POINTS, 2, offset="knn") == pytest.approx(expected_knn, rel=1e-6)
    # row blocks of 2 (the diagonal falls in a different column of every block) change nothing
    assert harmonic_centrality(POINTS, 2, block_rows=2) == pytest.approx(expected_all, rel=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        harmonic_centrality(POINTS, 5)  # only 4 other points


def test_information_nodes_are_above_the_mean_score_highest_first():
    scores = harmonic_centrality(POINTS, 2)
    # scores ~ 0.2200, 0.2306, 0.2067, 0.1650, 0.1179; mean ~ 0.1880
    assert information_nodes(scores).tolist() == [1, 0, 2]
    # per group {0, 1} (mean 0.2253) and {2, 3, 4} (mean 0.1632)
    assert information_nodes(scores, np.array([0, 0, 1, 1, 1])).tolist() == [1, 2, 3]
    assert information_nodes(np.ones(4)).size == 0  # nobody above an equal mean
    assert information_nodes(np.array([1.0, 2.0, 2.0])).tolist() == [1, 2]  # ties: lower index


# -- Eq. 2: refinement ---------------------------------------------------------------------------
GLOBAL = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
CAMS = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
LOCAL = np.array([10, 10, 11, 12, 20, 21, 20, 11, 10, 13])


def test_refinement_discards_same_camera_members_outside_the_local_cluster():
    rng = np.random.default_rng(0)
    # node 0 (camera 0, local 10) drops 2, 3, 7 (camera 0, other local clusters), keeps the
    # camera-1 members 4, 5, 6; node 2 was dropped, so it does not refine; node 4 (camera 1,
    # local 20) drops 5; node 8 (cluster 1, local 10) drops 9.
    refined = refine_clusters(GLOBAL, CAMS, LOCAL, np.array([0, 2, 4, 8]), 1.0, rng)
    assert refined.tolist() == [0, 0, -1, -1, 0, -1, 0, -1, 1, -1]
    # processed the other way round, node 2 (local 11) goes first and keeps 7 instead
    refined = refine_clusters(GLOBAL, CAMS, LOCAL, np.array([2, 0, 4, 8]), 1.0, rng)
    assert refined.tolist() == [-1, -1, 0, -1, 0, -1, 0, 0, 1, -1]
    assert refine_clusters(GLOBAL, CAMS, LOCAL, np.array([0, 4]), 0.0, rng).tolist() == \
        GLOBAL.tolist()
    assert refine_clusters(GLOBAL, CAMS, LOCAL, np.array([], dtype=int), 1.0, rng).tolist() == \
        GLOBAL.tolist()


def test_refinement_discards_each_doubtful_member_with_probability_p():
    n = 4001
    global_labels = np.zeros(n, dtype=np.int64)
    cams = np.r_[0, np.zeros(2000, int), np.ones(2000, int)]
    local = np.r_[0, np.ones(2000, int), np.full(2000, 5)]  # none shares node 0's local cluster
    refined = refine_clusters(global_labels, cams, local, np.array([0]), 0.5,
                              np.random.default_rng(1))
    dropped = refined[1:2001] < 0
    assert abs(dropped.mean() - 0.5) < 0.05  # 2000 Bernoulli(0.5): sd 0.011
    assert refined[0] == 0 and (refined[2001:] == 0).all()  # the node and other cameras stay
    # a second node of the same local cluster doubts the same members: no second draw
    local[1] = 0
    refined = refine_clusters(global_labels, cams, local, np.array([0, 1]), 0.5,
                              np.random.default_rng(1))
    assert abs((refined[2:2001] < 0).mean() - 0.5) < 0.05  # not 1 - 0.5 ** 2 = 0.75


# -- decay schedules, cluster counts -------------------------------------------------------------
def test_decay_schedules_at_chosen_epochs():
    total = 4
    values = {kind: [decay_factor(kind, t, total) for t in range(total)]
              for kind in ("none", "linear", "exponential", "cosine")}
    assert values["none"] == [1.0, 1.0, 1.0, 1.0]
    assert values["linear"] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert values["exponential"] == pytest.approx(
        [1.0, math.exp(-1.25), math.exp(-2.5), math.exp(-3.75)])
    half_sqrt2 = math.sqrt(2) / 2
    assert values["cosine"] == pytest.approx([1.0, (1 + half_sqrt2) / 2, 0.5, (1 - half_sqrt2) / 2])
    assert decay_factor("cosine", 25, 50) == pytest.approx(0.5)  # halfway through the paper's 50
    assert decay_factor("exponential", 1, 2, rate=2.0) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="unknown decay"):
        decay_factor("step", 0, 4)
    with pytest.raises(ValueError, match="outside"):
        decay_factor("linear", 4, 4)


def test_per_camera_cluster_counts():
    assert intra_cluster_count(2156, 600, 5.0) == 600  # Market-1501: fixed
    assert intra_cluster_count(400, 0, 5.0) == 80  # MSMT17's rule: images / 5
    assert intra_cluster_count(404, 0, 5.0) == 80  # floored
    assert intra_cluster_count(24, 600, 5.0) == 24  # never more clusters than images
    assert intra_cluster_count(3, 0, 5.0) == 1  # never fewer than one


# -- the adapter ---------------------------------------------------------------------------------
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 220, 40), (200, 40, 200),
           (40, 210, 210)]
PER_ID = 8
TINY = {"k1": 8, "k2": 3, "neighbours": 4, "intra_images_per_cluster": 4.0, "inter_clusters": 8,
        "intra_batch_size": 8, "batch_size": 12, "intra_iters": 2, "iters": 2}


def tiny_view(seed: int = 0) -> UnlabeledView:
    """6 colour-coded identities x 8 images over two cameras; camera 1 darkens its images."""
    rng = np.random.default_rng(seed)
    encoded, cams = [], []
    for ident, colour in enumerate(COLOURS):
        second = COLOURS[(ident + 2) % len(COLOURS)]
        for j in range(PER_ID):
            cam = j % 2
            img = np.empty((32, 16, 3))
            img[:16], img[16:] = colour, second
            img = img * (0.7 if cam else 1.0) * rng.uniform(0.9, 1.1) + rng.normal(0, 12, img.shape)
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
            encoded.append(buf.getvalue())
            cams.append(cam)
    order = rng.permutation(len(encoded))
    return UnlabeledView(encoded=[encoded[i] for i in order], camids=np.array(cams)[order],
                         num_cameras=2, kind="reid")


class Killed(RuntimeError):
    pass


def fit(tmp: Path, seed: int = 0, kill_after: int | None = None, **params):
    adapter = IntraCameraRefine(**{**TINY, **params})
    config = adapter.resolve_config("tiny", "ci")
    reported: dict[int, np.ndarray] = {}
    history: dict[int, dict] = {}

    def callback(epoch: int, encoder: torch.nn.Module) -> None:
        if epoch == kill_after:  # its checkpoint is written, then the process "dies"
            raise Killed

    ctx = RunContext(
        device=torch.device("cpu"), seed=seed, profile=get_profile("ci"), dataset="tiny",
        task="reid", checkpoint_dir=tmp, rng=np.random.default_rng(seed),
        torch_generator=torch.Generator().manual_seed(seed),
        pseudo_label_hook=lambda epoch, labels: reported.__setitem__(epoch, labels.copy()),
    )
    ctx.sink.log_epoch = lambda epoch, metrics: history.__setitem__(epoch, dict(metrics))
    encoder = run_epochs(adapter, tiny_view(), config, ctx,
                         after_checkpoint=[callback] if callback else ())
    return adapter, encoder, reported, history


def test_two_stages_in_one_epoch_loop(tmp_path: Path):
    adapter, encoder, reported, history = fit(tmp_path, intra_epochs=2)
    cams = tiny_view().camids
    # 2 cameras x 2 epochs, then the ci profile's 2 stage-2 epochs
    assert adapter.num_epochs(adapter.config) == 6 and sorted(reported) == list(range(6))
    for epoch in range(4):  # stage 1: only the current camera's images carry a label
        camera = epoch // 2
        assert history[epoch]["stage"] == 1 and history[epoch]["camera"] == camera
        assert ((reported[epoch] >= 0) == (cams == camera)).all()
        assert history[epoch]["num_clusters"] == 24 // 4  # floor(24 images / 4)
    # the final clusters of each camera are kept, numbered through, never across cameras
    local = adapter.local_labels
    assert (local >= 0).all() and local.max() + 1 == 12
    assert all(len(np.unique(cams[local == c])) == 1 for c in np.unique(local))
    for epoch, camera in ((1, 0), (3, 1)):
        mine = cams == camera
        _, a = np.unique(reported[epoch][mine], return_inverse=True)
        _, b = np.unique(local[mine], return_inverse=True)
        assert np.array_equal(a, b)  # the camera's last clustering is what was kept
    # stage 2: the cosine decay of p = 1 over 2 epochs, refined global labels
    assert [history[e]["discard_prob"] for e in (4, 5)] == pytest.approx([1.0, 0.5])
    for epoch in (4, 5):
        labels = reported[epoch]
        assert history[epoch]["stage"] == 2 and history[epoch]["global_clusters"] == 8
        assert history[epoch]["discarded_fraction"] == pytest.approx(np.mean(labels < 0))
        kept = np.unique(labels[labels >= 0])
        assert kept.tolist() == list(range(8))  # no cluster emptied, ids without gaps
    out = encoder.eval()(torch.randn(3, 3, 32, 16))
    assert out.shape == (3, 128) and torch.isfinite(out).all()


def test_baseline_switch_skips_stage_one(tmp_path: Path):
    adapter, _, reported, history = fit(tmp_path, refine=False)
    assert adapter.num_epochs(adapter.config) == 2 and sorted(reported) == [0, 1]
    for epoch in (0, 1):
        assert (reported[epoch] >= 0).all() and reported[epoch].max() + 1 == 8
        assert history[epoch]["stage"] == 2 and "discard_prob" not in history[epoch]


@pytest.mark.parametrize("kill_after", [0, 3])  # inside camera 0; the last stage-1 epoch
def test_resume_ends_bit_identical(tmp_path: Path, kill_after: int):
    _, whole, labels_whole, _ = fit(tmp_path / "whole", seed=3, intra_epochs=2)
    with pytest.raises(Killed):
        fit(tmp_path / "resumed", seed=3, kill_after=kill_after, intra_epochs=2)
    state = torch.load(sorted((tmp_path / "resumed").glob("epoch-*.pt"))[-1], weights_only=True)
    assert bool(state["method"]["camera"]) == (kill_after == 0)  # a camera mid-way is saved
    assert (state["method"]["local_labels"] >= 0).sum() == (0 if kill_after == 0 else 48)
    torch.manual_seed(7)  # a fresh process: different global state
    _, resumed, labels_resumed, _ = fit(tmp_path / "resumed", seed=3, intra_epochs=2)
    assert sorted(labels_resumed) == list(range(kill_after + 1, 6))  # only the rest ran
    for epoch, labels in labels_resumed.items():
        assert np.array_equal(labels, labels_whole[epoch]), epoch
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_declarations_and_config_checks(tmp_path: Path):
    assert get_method("intra-camera-refine") is IntraCameraRefine
    assert IntraCameraRefine.uses_camera_ids
    market = IntraCameraRefine().resolve_config("market1501", "paper")
    msmt = IntraCameraRefine().resolve_config("msmt17", "paper")
    assert (market["intra_clusters"], market["inter_clusters"]) == (600, 800)
    assert (msmt["intra_clusters"], msmt["intra_images_per_cluster"], msmt["inter_clusters"]) == \
        (0, 5.0, 1200)
    assert (market["intra_epochs"], market["inter_epochs"], market["neighbours"],
            market["decay"], market["discard_prob"]) == (20, 50, 15, "cosine", 1.0)
    assert IntraCameraRefine().resolve_config("synthetic-reid", "quick")["inter_clusters"] == 220
    assert len(IntraCameraRefine.deviations()) >= 10
    with pytest.raises(ConfigError, match="ward"):
        fit(tmp_path / "a", linkage="ward")
    with pytest.raises(ConfigError, match="decay"):
        fit(tmp_path / "b", decay="step")
