"""The U-SSL adapter (`ussl`, `ussl-star`) and its components, each against an independent
computation: the factorised per-sample gradient cosine and distance against autograd per-sample
gradients, the gradient reversal layer against the plain gradient, CPAM gates in [0, 1], deformable
convolution with zero offsets against a plain convolution, L_GS value and gradient at hand-picked
d_st, the non-local block against a hand-written softmax attention, surrogate-class pieces against
hand-made inputs; then the adapter trains on a tiny view, repeats bit-identically for a seed,
resumes bit-identically, and each ablation switch runs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.data.unlabeled import UnlabeledView
from benchmark.engine.contract import ConfigError, MetricSink, RunContext, run_epochs
from benchmark.engine.method_registry import get_method
from benchmark.engine.profiles import get_profile
from methods.common.gradient_reversal import GradientReversal, grad_reverse
from methods.common.nonlocal_block import NonLocalBlock
from methods.ussl import USSL, USSLStar
from methods.ussl.inter import DeformableAlign, InterSimilarity
from methods.ussl.intra import (
    ChannelPartAttention,
    IntraSimilarity,
    adversarial_loss,
    proximal_penalty,
)
from methods.ussl.similarity import (
    adopt_labels,
    best_partners,
    gradient_cosine,
    gradient_cosine_matrix,
    gradient_factors,
    gradient_separation_loss,
    gradient_sq_distance,
    mutual_pairs,
    pair_labels,
    similarity_logits,
)
from methods.ussl.surrogate import (
    PAPER_CLASS_RATIO,
    compact_labels,
    nearest_class,
    num_surrogate_classes,
    patch_grid,
    random_affine,
    random_colour_jitter,
    transformed_means,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- the gradient-guided similarity ---------------------------------------------------------------
def _autograd_per_sample(x, weight, centroids, labels, scale):
    """dL_C/dW for each sample separately, by autograd: the reference the factorisation must meet."""
    grads = []
    for i in range(x.shape[0]):
        w = weight.detach().clone().requires_grad_(True)
        logits = similarity_logits(x[i:i + 1], w, centroids, scale)
        loss = F.cross_entropy(logits, labels[i:i + 1])
        (g,) = torch.autograd.grad(loss, w)
        grads.append(g.flatten())
    return torch.stack(grads)


def test_factorised_gradient_cosine_and_distance_equal_autograd_per_sample():
    gen = torch.Generator().manual_seed(0)
    n, d, c, scale = 7, 5, 4, 3.0
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(d, d, generator=gen, dtype=torch.float64)
    centroids = torch.randn(c, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=gen)
    g = _autograd_per_sample(x, weight, centroids, labels, scale)

    logits = similarity_logits(x, weight, centroids, scale)
    a, r = gradient_factors(x, logits, labels, centroids, scale)
    outer = torch.einsum("ni,nj->nij", a, r).flatten(1)
    assert torch.allclose(outer, g, atol=1e-12)  # the per-sample gradient is a r^T

    brute = F.normalize(g, dim=1) @ F.normalize(g, dim=1).T
    assert torch.allclose(gradient_cosine_matrix(a, r), brute, atol=1e-12)
    s, t = torch.arange(n), torch.roll(torch.arange(n), 1)
    assert torch.allclose(gradient_cosine(a[s], r[s], a[t], r[t]), brute[s, t], atol=1e-12)
    sq = ((g[s] - g[t]) ** 2).sum(1)
    assert torch.allclose(gradient_sq_distance(a[s], r[s], a[t], r[t]), sq, atol=1e-10)


def test_factorised_gradient_cosine_is_differentiable_like_the_brute_force():
    """L_GS trains the network through d_st: the factorised form's gradient with respect to the
    features equals that of the cosine of explicitly formed outer products."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    centroids = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 4])

    def both(x):
        logits = similarity_logits(x, weight, centroids, 2.0)
        a, r = gradient_factors(x, logits, labels, centroids, 2.0)
        g = torch.einsum("ni,nj->nij", a, r).flatten(1)
        brute = F.normalize(g, dim=1) @ F.normalize(g, dim=1).T
        return gradient_cosine_matrix(a, r).sum(), brute.sum()

    fact, brute = both(x)
    (g1,) = torch.autograd.grad(fact, x, retain_graph=True)
    (g2,) = torch.autograd.grad(brute, x)
    assert torch.allclose(g1, g2, atol=1e-10)


def test_gradient_separation_loss_value_and_gradient_at_chosen_points():
    d = torch.tensor([0.25, 0.75, -0.25, 1.0], dtype=torch.float64, requires_grad=True)
    loss = gradient_separation_loss(d, alpha=2.0, delta=0.25)
    # 1 - (d - 0.25)^2 for alpha = 2: 1, 0.75, 0.75, 0.4375 -> mean 0.734375
    assert loss.item() == pytest.approx(0.734375, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, d)
    # d/dd of the mean: -alpha (d - delta) / 4 = -(2 / 4)(0, 0.5, -0.5, 0.75)
    assert torch.allclose(grad, torch.tensor([0.0, -0.25, 0.25, -0.375], dtype=torch.float64))
    with pytest.raises(ValueError):
        gradient_separation_loss(d, alpha=0.0)


def test_pseudo_pairs_are_mutual_cross_camera_partners_above_delta():
    # hand-made factors: images 0/1 and 2/3 have identical gradients; cameras 0, 1, 0, 1
    a = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    r = torch.tensor([[1.0, 0], [1.0, 0], [0.6, 0.8], [0.6, 0.8]])
    partner, score = best_partners(a, r, np.array([0, 1, 0, 1]))
    assert partner.tolist() == [1, 0, 3, 2] and np.allclose(score, 1.0)
    # same camera never pairs: with cameras 0, 0, 1, 1 the partner must come from the other pair
    partner2, score2 = best_partners(a, r, np.array([0, 0, 1, 1]))
    assert set(partner2[:2]) <= {2, 3} and set(partner2[2:]) <= {0, 1}
    assert np.allclose(score2, 0.0)
    assert mutual_pairs(partner, score, 0.25).tolist() == [[0, 1], [2, 3]]
    assert mutual_pairs(partner2, score2, 0.25).size == 0
    assert mutual_pairs(np.array([1, 2, 1]), np.ones(3), 0.25).tolist() == [[1, 2]]
    # the less confident image takes the other's label; labels are renumbered 0..C'-1
    new = adopt_labels(np.array([5, 7, 7, 9]), np.array([[0, 1], [2, 3]]),
                       np.array([0.9, 0.1, 0.2, 0.8]))
    assert new.tolist() == [0, 0, 1, 1]
    # "pairs" labelling: each pseudo pair one class, every other image its own
    assert pair_labels(5, np.array([[3, 1]])).tolist() == [0, 1, 2, 1, 3]
    assert pair_labels(3, np.zeros((0, 2))).tolist() == [0, 1, 2]


# -- reusable layers -------------------------------------------------------------------------------
def test_gradient_reversal_flips_and_scales_gradients():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4)
    (plain,) = torch.autograd.grad((x * w).sum(), x)
    (rev,) = torch.autograd.grad((grad_reverse(x, 0.5) * w).sum(), x)
    assert torch.equal(grad_reverse(x, 0.5), x)
    assert torch.allclose(rev, -0.5 * plain)
    (mod,) = torch.autograd.grad((GradientReversal()(x) * w).sum(), x)
    assert torch.allclose(mod, -plain)
    with pytest.raises(ValueError):
        GradientReversal(-1.0)


def test_nonlocal_block_matches_a_hand_written_softmax_attention():
    torch.manual_seed(0)
    block = NonLocalBlock(6, 3, zero_init=False)
    z = torch.randn(2, 6, 3, 4)
    flat = z.flatten(2)  # (B, C, N)

    def conv(layer, v):
        return torch.einsum("oc,bcn->bon", layer.weight[:, :, 0, 0], v) + layer.bias[None, :, None]

    theta, phi, value = conv(block.theta, flat), conv(block.phi, flat), conv(block.value, flat)
    u = torch.exp(torch.einsum("bcj,bci->bji", theta, phi))
    y = torch.einsum("bji,bci->bcj", u / u.sum(-1, keepdim=True), value)
    expected = flat + conv(block.out, y)
    assert torch.allclose(block(z).flatten(2), expected, atol=1e-5)
    assert torch.equal(NonLocalBlock(6)(z), z)  # zero-initialised output: the identity


# -- intra-similarity ------------------------------------------------------------------------------
def test_cpam_gates_lie_in_unit_interval_and_reweight_channels():
    torch.manual_seed(0)
    cpam = ChannelPartAttention(8, hidden=4)
    with torch.no_grad():
        cpam.fc2.bias.fill_(40.0)  # saturate: gates at the top of their range still stay <= 1
    u = torch.randn(3, 8, 5, 2) * 50
    gates = cpam.gates(u)
    assert gates.shape == (3, 8) and bool((gates >= 0).all()) and bool((gates <= 1).all())
    cpam2 = ChannelPartAttention(8, hidden=4)
    g2 = cpam2.gates(u)
    assert bool((g2 > 0).all()) and bool((g2 < 1).all())
    assert torch.allclose(cpam2(u), u * g2[:, :, None, None])


def test_adversarial_loss_is_the_pairwise_sum_and_reverses_into_the_features():
    torch.manual_seed(0)
    intra = IntraSimilarity(channels=6, parts=3, sa_dim=5, adv_dim=4, hidden=4)
    sa = torch.randn(3, 2, 5, requires_grad=True)
    loss = adversarial_loss(intra.adversary, sa)
    out = intra.adversary[1:](sa.reshape(6, 5)).reshape(3, 2, 4)  # A without the reversal layer
    brute = sum(((out[j] - out[k]) ** 2).sum(1) for j in range(3) for k in range(3)).mean()
    assert torch.allclose(loss, brute)
    (g_sa,) = torch.autograd.grad(loss, sa, retain_graph=True)
    (g_plain,) = torch.autograd.grad(brute, sa)
    assert torch.allclose(g_sa, -g_plain, atol=1e-6)  # features ascend L_Adv, A descends it
    attended, sa2 = intra(torch.randn(2, 6, 4, 2))
    assert attended.shape == (2, 6, 4, 2) and sa2.shape == (3, 2, 5)
    p = [torch.ones(2, requires_grad=True)]
    assert proximal_penalty(p, [torch.zeros(2)], beta=3.0).item() == pytest.approx(3.0)


# -- inter-similarity ------------------------------------------------------------------------------
def test_deform_conv_with_zero_offsets_is_a_plain_convolution():
    torch.manual_seed(0)
    align = DeformableAlign(channels=4, kernel=3, scales=(2, 4, 8), inner=6)
    x, ref = torch.randn(2, 4, 6, 3), torch.randn(2, 4, 6, 3)
    offsets = align.offsets(x, ref)
    assert offsets.shape == (2, 18, 6, 3) and not offsets.any()  # zero-initialised head
    expected = F.conv2d(ref, align.weight, align.bias, padding=1)
    assert torch.allclose(align(x, ref), expected, atol=1e-5)
    # a non-zero offset moves the sampling: the result then differs from the plain convolution
    with torch.no_grad():
        align.offsets.head.bias.fill_(1.0)
    assert not torch.allclose(align(x, ref), expected, atol=1e-3)


@pytest.mark.parametrize("use_nonlocal", [True, False])
def test_inter_similarity_classifier_resets_to_the_class_count(use_nonlocal):
    inter = InterSimilarity(4, 3, scales=(2, 4, 8), inner=6, use_nonlocal=use_nonlocal)
    x = torch.randn(2, 4, 4, 2)
    assert inter(x, x).shape == (2, 3)
    inter.reset_classifier(7)
    assert inter(x, x).shape == (2, 7)
    with pytest.raises(ValueError):
        inter.reset_classifier(5, torch.randn(5, 8))
    inter = InterSimilarity(4, 3, scales=(2, 4, 8), inner=6, use_nonlocal=use_nonlocal, cosine=True)
    prototypes = torch.randn(5, 8)
    inter.reset_classifier(5, prototypes)
    assert torch.equal(inter.classifier.weight, prototypes)
    z = torch.randn(3, 8)
    expected = 10.0 * F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).T
    assert torch.allclose(inter.classifier(z), expected, atol=1e-5)


# -- surrogate classes -----------------------------------------------------------------------------
def test_patch_grid_tiles_the_image():
    img = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)
    p = patch_grid(img, 2)
    assert p.shape == (2, 4, 3, 2, 1)
    assert torch.equal(p[1, 2, :, :, 0], img[1, :, 2:4, 0])  # bottom-left patch
    with pytest.raises(ValueError):
        patch_grid(img, 3)


def test_transformations_keep_shape_and_range_and_identity_params_are_identity():
    gen = torch.Generator().manual_seed(0)
    patches = torch.rand(5, 3, 8, 4, generator=gen)
    same = random_affine(patches, gen, max_translate=0.0, scale=(1.0, 1.0), max_rotation=0.0,
                         flip=False)
    assert torch.allclose(same, patches, atol=1e-5)
    warped = random_colour_jitter(random_affine(patches, gen), gen, 0.4)
    assert warped.shape == patches.shape and warped.min() >= 0 and warped.max() <= 1
    assert torch.equal(random_colour_jitter(patches, gen, 0.0), patches)
    means = transformed_means(patches, 3, torch.Generator().manual_seed(1))
    assert means.shape == (5, 3 * 8 * 4)
    again = transformed_means(patches, 3, torch.Generator().manual_seed(1))
    assert torch.equal(means, again)


def test_class_count_and_nearest_class():
    assert num_surrogate_classes(12936 * 4, PAPER_CLASS_RATIO) == 8000
    assert num_surrogate_classes(10, 0.01) == 2 and num_surrogate_classes(3, 5.0) == 3
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # image 0's patches sit near centroid 1; image 1's straddle centroids 0 and 2 (mean nearer 2)
    means = torch.tensor([[[9.0, 1.0], [11.0, -1.0]], [[0.0, 9.0], [1.0, 4.0]]])
    assert nearest_class(means, centroids).tolist() == [1, 2]
    assert compact_labels(np.array([4, 9, 4, 2])).tolist() == [1, 2, 1, 0]


# -- the adapter -----------------------------------------------------------------------------------
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 220, 40), (200, 40, 200),
           (40, 210, 210)]
TINY = {"batch_size": 12, "iters": 3, "epochs": 2, "pretrain_epochs": 1}


def tiny_view(seed: int = 0) -> UnlabeledView:
    """6 colour-coded identities x 6 images (32x16), three cameras that shift brightness."""
    rng = np.random.default_rng(seed)
    encoded, cams = [], []
    for ident, colour in enumerate(COLOURS):
        second = COLOURS[(ident + 2) % len(COLOURS)]
        for j in range(6):
            img = np.empty((32, 16, 3))
            img[:16], img[16:] = colour, second
            img = img * (0.8 + 0.1 * (j % 3)) + rng.normal(0, 12, img.shape)
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
            encoded.append(buf.getvalue())
            cams.append(j % 3)
    order = rng.permutation(len(encoded))
    return UnlabeledView(encoded=[encoded[i] for i in order], camids=np.array(cams)[order],
                         num_cameras=3, kind="reid")


class Sink(MetricSink):
    def __init__(self) -> None:
        self.history: dict[int, dict[str, float]] = {}

    def log_epoch(self, epoch, metrics):
        self.history[epoch] = dict(metrics)

    def state(self):
        return {"history": {str(k): v for k, v in self.history.items()}}

    def load_state(self, state):
        self.history = {int(k): dict(v) for k, v in state.get("history", {}).items()}


class Killed(RuntimeError):
    pass


def fit(tmp: Path, seed: int = 0, cls=USSL, callback=None, view=None, **params):
    adapter = cls(**{**TINY, **params})
    config = adapter.resolve_config("synthetic-reid", "ci")
    reported: dict[int, np.ndarray] = {}
    ctx = RunContext(
        device=torch.device("cpu"), seed=seed, profile=get_profile("ci"), dataset="synthetic-reid",
        task="reid", checkpoint_dir=tmp, rng=np.random.default_rng(seed),
        torch_generator=torch.Generator().manual_seed(seed), sink=Sink(),
        pseudo_label_hook=lambda e, labels: reported.__setitem__(e, labels.copy()),
    )
    encoder = run_epochs(adapter, view if view is not None else tiny_view(), config, ctx,
                         after_checkpoint=[callback] if callback else ())
    return encoder, ctx.sink.history, reported


def embed(encoder):
    encoder.eval()
    with torch.no_grad():
        return encoder(torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(7)))


def test_declarations_and_paper_defaults():
    assert get_method("ussl") is USSL and get_method("ussl-star") is USSLStar
    assert USSL.uses_camera_ids and USSL.nondeterministic_cuda_ops == (
        "torchvision.ops.deform_conv2d backward",)
    paper = USSL().resolve_config("market1501", "paper")
    assert (paper["lr"], paper["lr_step"], paper["epochs"]) == (0.05, 40, 300)
    assert paper["batch_size"] == 64
    assert (paper["lambda1"], paper["lambda2"]) == (0.015, 2.5)
    assert (paper["alpha"], paper["delta"]) == (2.0, 0.25)
    assert (paper["feature_dim"], paper["surrogate_k"], paper["sgd_momentum"]) == (512, 64, 0.9)
    assert paper["weight_decay"] == 5e-4 and paper["offset_scales"] == [2, 4, 8]
    assert not paper["star"] and USSLStar().resolve_config("market1501", "paper")["star"]
    deviations = USSL.deviations()
    assert len(deviations) >= 10 and any("test split" in d for d in deviations)
    assert set(deviations) < set(USSLStar.deviations())

    class Trial:
        def suggest_float(self, name, low, high, log=False):
            assert low < high
            return low

        def suggest_categorical(self, name, choices):
            assert len(choices) > 1
            return choices[0]

    space = USSL.search_space(Trial())
    assert space and set(space) <= set(USSL.defaults)


def test_fit_trains_through_both_stages_and_reports_pseudo_labels(tmp_path):
    encoder, history, reported = fit(tmp_path)
    out = embed(encoder)
    assert out.shape == (5, 64) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    assert sorted(history) == [0, 1] and sorted(reported) == [0, 1]
    assert history[0]["stage"] == 1.0 and history[1]["stage"] == 2.0
    assert "loss_adv" not in history[0] and "loss_s" not in history[0]
    for key in ("loss_c", "loss_gs", "loss_adv", "loss_s"):
        assert np.isfinite(history[1][key]), key
    for epoch, labels in reported.items():
        assert labels.shape == (36,) and labels.min() == 0
        assert history[epoch]["num_classes"] == labels.max() + 1
    star, _, _ = fit(tmp_path / "star", cls=USSLStar)
    assert embed(star).shape == (5, 16 + 32 + 64 + 64)


def test_same_seed_is_bit_identical_other_seed_is_not(tmp_path):
    a, hist_a, labels_a = fit(tmp_path / "a", seed=0)
    torch.manual_seed(123)
    np.random.seed(123)
    b, hist_b, labels_b = fit(tmp_path / "b", seed=0)
    c, _, _ = fit(tmp_path / "c", seed=1)
    assert torch.equal(embed(a), embed(b)) and hist_a == hist_b
    assert all(np.array_equal(labels_a[e], labels_b[e]) for e in labels_a)
    assert not torch.equal(embed(a), embed(c))


def test_resume_after_a_crash_ends_bit_identical(tmp_path):
    whole, hist_whole, _ = fit(tmp_path / "whole", seed=3, epochs=3)

    def crash(epoch, encoder):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(tmp_path / "resumed", seed=3, epochs=3, callback=crash)
    torch.manual_seed(5)
    resumed, hist_resumed, reported = fit(tmp_path / "resumed", seed=3, epochs=3)
    assert sorted(reported) == [2]
    assert hist_whole == hist_resumed
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("switch", [
    {"gradient_separation": False}, {"gs_form": "cosine"}, {"gs_weight": 0.01}, {"intra": False},
    {"lambda1": 0.0}, {"inter": False}, {"nonlocal_offsets": False}, {"relabel": False},
    {"label_mode": "adopt"}, {"prototype_init": True},
])
def test_ablation_switches_train(tmp_path, switch):
    encoder, history, _ = fit(tmp_path, epochs=2, iters=2, **switch)
    assert torch.isfinite(embed(encoder)).all()
    if switch.get("gradient_separation") is False:
        assert "loss_gs" not in history[1]
    if switch.get("inter") is False:
        assert "loss_s" not in history[1]
    if switch.get("intra") is False:
        assert "loss_adv" not in history[1]


def test_bad_configs_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="gs_form"):
        fit(tmp_path, gs_form="huber")
    with pytest.raises(ConfigError, match="label_mode"):
        fit(tmp_path, label_mode="kmeans")
    with pytest.raises(ConfigError, match="even"):
        fit(tmp_path, batch_size=7)
    view = tiny_view()
    no_cams = UnlabeledView(encoded=[view._encoded[i] for i in range(len(view))], kind="reid")
    with pytest.raises(ConfigError, match="camera ids"):
        fit(tmp_path, view=no_cams)
