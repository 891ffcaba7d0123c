"""The Cluster Contrast adapter and the two no-training baselines on a tiny generated view.

The view: 6 colour-coded identities x 8 noisy images, so that even an untrained network's features
group them and DBSCAN has clusters to train on. Checks: an encoder (B, D) comes back, the same seed
gives bit-identical encoders and epoch metrics on CPU, another seed does not, and a run resumed from
its epoch checkpoint ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import MetricSink, RunContext
from benchmark.engine.profiles import get_profile
from methods.cluster_contrast import ClusterContrast
from methods.direct_transfer import DirectTransfer
from methods.raw_pixels import RawPixels

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 220, 40), (200, 40, 200),
           (40, 210, 210)]
PER_ID = 8
# Small enough for 48 images; everything else is the ci profile's scaling of the paper defaults.
TINY = {"k1": 10, "k2": 3, "batch_size": 12, "iters": 3}


def _tiny_view(seed: int = 0) -> UnlabeledView:
    rng = np.random.default_rng(seed)
    encoded = []
    for ident, colour in enumerate(COLOURS):
        second = COLOURS[(ident + 2) % len(COLOURS)]
        for _ in range(PER_ID):
            img = np.empty((32, 16, 3), dtype=np.float64)
            img[:16], img[16:] = colour, second
            img = img * rng.uniform(0.8, 1.1) + rng.normal(0, 12, img.shape)
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
            encoded.append(buf.getvalue())
    order = rng.permutation(len(encoded))
    return UnlabeledView(encoded=[encoded[i] for i in order], kind="reid")


class RecordingSink(MetricSink):
    def __init__(self) -> None:
        self.history: dict[int, dict[str, float]] = {}

    def log_epoch(self, epoch, metrics):
        self.history[epoch] = dict(metrics)

    def state(self):
        return {"history": {str(k): v for k, v in self.history.items()}}

    def load_state(self, state):
        self.history = {int(k): dict(v) for k, v in state.get("history", {}).items()}


def _context(tmp_path: Path, seed: int, name: str, **kwargs) -> RunContext:
    return RunContext(
        device=torch.device("cpu"), seed=seed, profile=get_profile("ci"), dataset="synthetic-reid",
        task="reid", checkpoint_dir=tmp_path / name, rng=np.random.default_rng(seed),
        torch_generator=torch.Generator().manual_seed(seed), sink=RecordingSink(), **kwargs,
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is as fast alone and far faster on a crowded machine
    (idle threads of the pool spin while waiting for descheduled ones). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def view() -> UnlabeledView:
    return _tiny_view()


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(123))


def _fit(view, tmp_path, seed, name, **params):
    adapter = ClusterContrast(**{**TINY, **params})
    config = adapter.resolve_config("synthetic-reid", "ci")
    reported: list[tuple[int, np.ndarray]] = []
    ctx = _context(tmp_path, seed, name,
                   pseudo_label_hook=lambda epoch, labels: reported.append((epoch, labels)))
    encoder = adapter.fit(view, config, ctx)
    return encoder, ctx.sink.history, reported


def _embed(encoder, probe):
    encoder.eval()
    with torch.no_grad():
        return encoder(probe)


def test_fit_returns_an_encoder_and_trains_on_pseudo_labels(view, probe, tmp_path):
    encoder, history, reported = _fit(view, tmp_path, 0, "run")
    out = _embed(encoder, probe)
    assert out.shape == (5, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    assert sorted(history) == [0, 1] and [e for e, _ in reported] == [0, 1]
    for epoch, labels in reported:
        assert labels.shape == (len(view),) and labels.min() >= -1
        assert history[epoch]["num_clusters"] == labels.max() + 1 >= 2
        assert history[epoch]["iterations"] == TINY["iters"]
        assert np.isfinite(history[epoch]["loss"])


def test_same_seed_is_bit_identical_and_another_seed_is_not(view, probe, tmp_path):
    a, hist_a, labels_a = _fit(view, tmp_path, 0, "a")
    torch.rand(10)  # disturb the global stream: the run must depend on its context only
    b, hist_b, labels_b = _fit(view, tmp_path, 0, "b")
    c, _, _ = _fit(view, tmp_path, 1, "c")
    assert torch.equal(_embed(a, probe), _embed(b, probe))
    assert hist_a == hist_b
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(labels_a, labels_b))
    assert not torch.equal(_embed(a, probe), _embed(c, probe))


def test_resumed_run_ends_like_an_uninterrupted_one(view, probe, tmp_path):
    full, hist_full, _ = _fit(view, tmp_path, 3, "full")
    _fit(view, tmp_path, 3, "resumed", epochs=1)  # "killed" after its first epoch checkpoint
    checkpoints = sorted((tmp_path / "resumed").glob("epoch-*.pt"))
    assert [p.name for p in checkpoints] == ["epoch-0000.pt"]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler"} <= set(state["method"])
    resumed, hist_resumed, reported = _fit(view, tmp_path, 3, "resumed")
    assert [e for e, _ in reported] == [1]  # only the missing epoch ran
    assert torch.equal(_embed(full, probe), _embed(resumed, probe))
    assert hist_full == hist_resumed


def test_hard_memory_update_variant_trains(view, probe, tmp_path):
    encoder, history, _ = _fit(view, tmp_path, 0, "hard", memory_update="hard", epochs=1)
    assert np.isfinite(history[0]["loss"]) and _embed(encoder, probe).shape == (5, 128)
    with pytest.raises(ValueError, match="memory_update"):
        _fit(view, tmp_path, 0, "bad", memory_update="median")


def test_declarations_paper_defaults_and_search_space():
    adapter = ClusterContrast()
    market = adapter.resolve_config("market1501", "paper")
    msmt = adapter.resolve_config("msmt17", "paper")
    assert (market["eps"], market["iters"], msmt["eps"], msmt["iters"]) == (0.6, 200, 0.6, 400)
    assert (market["batch_size"], market["num_instances"], market["temperature"],
            market["momentum"], market["lr"], market["epochs"]) == (256, 16, 0.05, 0.1, 3.5e-4, 50)
    assert market["pooling"] == "avg"
    for profile in ("quick", "ci"):
        cfg = adapter.resolve_config("synthetic-reid", profile)
        assert cfg["batch_size"] % cfg["num_instances"] == 0 and cfg["epochs"] < 50

    class Trial:  # the part of optuna.Trial the search space uses
        def suggest_float(self, name, low, high, log=False):
            assert low < high
            return low

    space = ClusterContrast.search_space(Trial())
    assert set(space) == {"eps", "temperature", "momentum", "lr"} and set(space) <= set(market)
    assert len(ClusterContrast.deviations()) >= 5
    assert not ClusterContrast.uses_camera_ids


def test_direct_transfer_is_seeded_and_raw_pixels_undo_normalisation(tmp_path):
    from methods.common import transforms

    view = _tiny_view()
    a = DirectTransfer().fit(view, {"pooling": "avg", "last_stride": 2}, _context(tmp_path, 0, "a"))
    b = DirectTransfer().fit(view, {"pooling": "avg", "last_stride": 2}, _context(tmp_path, 0, "b"))
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and a(x).shape == (2, a.feature_dim)
    pixels = RawPixels().fit(view, {}, _context(tmp_path, 0, "c"))
    image = view[0]
    tensor = transforms.test_transform((32, 16))(image)
    raw = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        assert torch.allclose(pixels(tensor[None]), raw.reshape(1, -1), atol=1e-5)
    assert len(DirectTransfer.deviations()) >= 1 and len(RawPixels.deviations()) >= 1
