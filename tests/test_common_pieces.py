"""Shared training parts (methods/common): memories, losses, PK sampler, backbones, transforms,
feature extraction, each checked against a hand computation or a direct formula."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from methods.common import transforms
from methods.common.backbones import (
    BackboneWeightsError,
    BNNeckEncoder,
    GeneralizedMeanPooling,
    build_backbone,
    forked_torch_rng,
)
from methods.common.features import extract_features
from methods.common.losses import cluster_nce, repelled_loss
from methods.common.memory import ClusterMemory, InstanceMemory, cluster_means
from methods.common.samplers import PKSampler


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one intra-op thread avoids spinning pool threads on a crowded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


# -- memories -------------------------------------------------------------------------------------
def test_cluster_memory_momentum_update_by_hand():
    # Centroids e1, e2; two features of class 0 then one of class 1, momentum 0.1.
    mem = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.1)
    feats = torch.tensor([[0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])  # unnormalised on purpose
    mem.update(feats, torch.tensor([0, 0, 1]))
    # class 0, first feature (0, 1): 0.1 * (1, 0) + 0.9 * (0, 1) = (0.1, 0.9) -> normalised
    c0 = _unit(0.1, 0.9)
    # then (1, 0): 0.1 * c0 + 0.9 * (1, 0)
    c0 = _unit(0.1 * c0[0] + 0.9, 0.1 * c0[1])
    # class 1: 0.1 * (0, 1) + 0.9 * (1, 1) / sqrt 2
    s = 0.9 / math.sqrt(2)
    c1 = _unit(s, 0.1 + s)
    expected = torch.tensor([c0, c1])
    assert torch.allclose(mem.centroids, expected, atol=1e-6)


def test_cluster_memory_matches_sequential_loop():
    g = torch.Generator().manual_seed(0)
    init = torch.randn(5, 8, generator=g)
    feats = torch.randn(40, 8, generator=g)
    labels = torch.randint(0, 5, (40,), generator=g)
    mem = ClusterMemory(init, momentum=0.3)
    mem.update(feats, labels)
    # Reference: the per-instance loop of the definition, in batch order.
    ref = F.normalize(init.double(), dim=1)
    for f, y in zip(F.normalize(feats.double(), dim=1), labels.tolist()):
        ref[y] = 0.3 * ref[y] + 0.7 * f
        ref[y] = ref[y] / ref[y].norm()
    assert torch.allclose(mem.centroids.double(), ref, atol=1e-6)


def test_cluster_memory_hard_update_uses_least_similar_feature():
    mem = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.5, update="hard")
    close, far = [0.9, 0.1], [0.1, 0.9]  # both class 0; `far` has the lower similarity to e1
    mem.update(torch.tensor([close, far]), torch.tensor([0, 0]))
    f = _unit(*far)
    assert torch.allclose(mem.centroids[0], torch.tensor(_unit(0.5 + 0.5 * f[0], 0.5 * f[1])),
                          atol=1e-6)
    assert torch.equal(mem.centroids[1], torch.tensor([0.0, 1.0]))  # untouched


def test_cluster_memory_from_features_is_normalised_cluster_mean():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, -1, 1])
    mem = ClusterMemory.from_features(feats, labels)
    assert torch.allclose(mem.centroids, torch.tensor([_unit(0.5, 0.5), [1.0, 0.0]]))
    with pytest.raises(ValueError, match="without gaps"):
        cluster_means(feats, torch.tensor([0, 0, 2, 2]))


def test_instance_memory_halfway_update():
    mem = InstanceMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # momentum 0.5
    mem.update(torch.tensor([[0.0, 4.0]]), torch.tensor([0]))
    # v <- normalise((v + f) / 2) with f normalised: ((1, 0) + (0, 1)) / 2
    assert torch.allclose(mem.features[0], torch.tensor(_unit(1.0, 1.0)))
    assert torch.equal(mem.features[1], torch.tensor([0.0, 1.0]))
    cents = mem.cluster_centroids(torch.tensor([0, 1, 1]))
    assert torch.allclose(cents[1], F.normalize(torch.tensor([_unit(1, 1)[0], 1 + _unit(1, 1)[1]]),
                                                dim=0))


# -- losses ---------------------------------------------------------------------------------------
def _nce_reference(feats: np.ndarray, labels: np.ndarray, bank: np.ndarray, tau: float,
                   weights: np.ndarray | None = None) -> float:
    """-log softmax of cosine similarity / tau at the label, averaged (weighted as torch does)."""
    q = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    total, norm = 0.0, 0.0
    for qi, y in zip(q, labels):
        logits = [float(qi @ c) / tau for c in bank]
        log_z = math.log(sum(math.exp(v) for v in logits))
        w = 1.0 if weights is None else float(weights[y])
        total += w * (log_z - logits[y])
        norm += w
    return total / norm


def test_cluster_nce_matches_direct_formula():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 4))
    bank = rng.normal(size=(3, 4))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    labels = np.array([0, 2, 1, 1, 0, 2])
    got = cluster_nce(torch.tensor(feats), torch.tensor(labels), torch.tensor(bank), 0.05)
    assert got.item() == pytest.approx(_nce_reference(feats, labels, bank, 0.05), rel=1e-9)


def test_cluster_nce_gradient_reaches_features_only():
    feats = torch.randn(4, 3, requires_grad=True)
    bank = F.normalize(torch.randn(2, 3), dim=1).requires_grad_(True)
    cluster_nce(feats, torch.tensor([0, 1, 1, 0]), bank, 0.1).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert bank.grad is None


def test_repelled_loss_with_class_weights_matches_formula():
    rng = np.random.default_rng(1)
    feats, bank = rng.normal(size=(5, 4)), rng.normal(size=(4, 4))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    labels, weights = np.array([3, 0, 0, 2, 1]), np.array([1.0, 2.0, 0.5, 3.0])
    got = repelled_loss(torch.tensor(feats), torch.tensor(labels), torch.tensor(bank), 0.1,
                        class_weights=torch.tensor(weights))
    assert got.item() == pytest.approx(_nce_reference(feats, labels, bank, 0.1, weights), rel=1e-9)


def test_losses_reject_outlier_labels():
    with pytest.raises(ValueError, match="outliers"):
        cluster_nce(torch.randn(2, 3), torch.tensor([0, -1]), torch.randn(2, 3), 0.05)


# -- PK sampler -----------------------------------------------------------------------------------
# Class sizes 1, 2, 3, 5, 8, 13 and 7 outliers, in a scrambled order.
_SIZES = {0: 1, 1: 2, 2: 3, 3: 5, 4: 8, 5: 13, -1: 7}
_LABELS = np.random.default_rng(3).permutation(np.repeat(list(_SIZES), list(_SIZES.values())))


def test_pk_sampler_batches_hold_p_classes_times_k():
    sampler = PKSampler(_LABELS, batch_size=8, num_instances=4, generator=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # 6 classes, P = 2
    seen = set()
    for batch in batches:
        labels = _LABELS[batch]
        assert len(batch) == 8 and (labels >= 0).all()
        assert sorted(Counter(labels.tolist()).values()) == [4, 4]
        seen |= set(labels.tolist())
        for c in set(labels.tolist()):
            members = set(np.flatnonzero(_LABELS == c).tolist())
            chosen = [i for i in batch if _LABELS[i] == c]
            if len(members) >= 4:
                assert len(set(chosen)) == 4  # no repeat when the class is big enough
            else:
                assert set(chosen) == members  # small classes cycle through all their images
    assert seen == {0, 1, 2, 3, 4, 5}  # one pass visits every class once


def test_pk_sampler_is_deterministic_per_seed_and_counts_batches():
    def draw(seed):
        return list(PKSampler(_LABELS, batch_size=8, num_instances=4, generator=seed,
                              num_batches=7))
    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
    assert len(draw(5)) == 7


def test_pk_sampler_with_fewer_classes_than_p_uses_all_classes():
    labels = np.array([0, 0, 1, 1, 1, -1])
    batches = list(PKSampler(labels, batch_size=64, num_instances=4, generator=0, num_batches=3))
    assert len(batches) == 3
    assert all(sorted(Counter(labels[b].tolist()).values()) == [4, 4] for b in batches)


def test_pk_sampler_prefers_other_cameras_when_given():
    labels = np.array([0] * 6 + [1] * 3)
    camids = np.array([0, 0, 0, 1, 1, 2, 0, 0, 0])
    for batch in PKSampler(labels, batch_size=8, num_instances=4, generator=1, camids=camids,
                           num_batches=20):
        for c in (0, 1):
            chosen = [i for i in batch if labels[i] == c]
            anchor, rest = chosen[0], chosen[1:]
            if c == 0:  # class 0 spans cameras: the others come from a camera != the anchor's
                assert all(camids[i] != camids[anchor] for i in rest)
            else:  # class 1 has one camera: the rest of the class, never the anchor itself
                assert anchor not in rest and set(rest) <= {6, 7, 8}


def test_pk_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="outlier"):
        PKSampler(np.full(5, -1), batch_size=4, num_instances=2, generator=0)
    with pytest.raises(ValueError, match="multiple"):
        PKSampler(np.zeros(5, int), batch_size=6, num_instances=4, generator=0)


# -- backbones ------------------------------------------------------------------------------------
def test_resnet50_without_weights_names_where_it_looked(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(BackboneWeightsError) as err:
            build_backbone("resnet50", pretrained=True)
        assert str(tmp_path / "hub" / "checkpoints") in str(err.value)
        assert "--weights" in str(err.value)
        missing = tmp_path / "nope.pth"
        with pytest.raises(BackboneWeightsError, match=str(missing)):
            build_backbone("resnet50", pretrained=True, weights=missing)
        corrupt = tmp_path / "corrupt.pth"
        corrupt.write_bytes(b"not a checkpoint")
        with pytest.raises(BackboneWeightsError, match="cannot read weights file .*corrupt.pth"):
            build_backbone("resnet50", pretrained=True, weights=corrupt)
        with pytest.raises(ValueError, match="unknown backbone"):
            build_backbone("vgg", pretrained=False)
    finally:
        torch.hub.set_dir(previous)


def test_resnet50_reads_a_local_weights_file(tmp_path):
    import torchvision

    with forked_torch_rng(0):
        reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50-local.pth"
    torch.save(reference.state_dict(), path)
    model = build_backbone("resnet50", pretrained=True, weights=path).eval()
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference.eval()(x), atol=1e-5)
    assert model.feature_dim == 2048


@pytest.mark.parametrize("shape", [(3, 3, 8, 8), (4, 3, 64, 32)])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_resnet_tiny_embeds_small_and_reid_sized_batches(shape, last_stride):
    model = build_backbone("resnet-tiny", pretrained=False, last_stride=last_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == (shape[0], model.feature_dim) and torch.isfinite(out).all()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_backbone_init_is_seeded_by_fork():
    with forked_torch_rng(7):
        a = build_backbone("resnet-tiny", pretrained=False)
    torch.rand(3)  # the outer stream must not matter
    with forked_torch_rng(7):
        b = build_backbone("resnet-tiny", pretrained=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                  b.state_dict().values()))


def test_gem_with_p_one_is_average_pooling():
    x = torch.rand(2, 5, 4, 3)
    assert torch.allclose(GeneralizedMeanPooling(p=1.0)(x), x.mean(dim=(2, 3), keepdim=True))


def test_bn_neck_normalises_only_at_eval():
    enc = BNNeckEncoder(build_backbone("resnet-tiny", pretrained=False))
    x = torch.randn(6, 3, 32, 16)
    enc.train()
    assert not torch.allclose(enc(x).norm(dim=1), torch.ones(6))
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x).norm(dim=1), torch.ones(6), atol=1e-5)
    assert not enc.neck.bias.requires_grad


# -- transforms and features ----------------------------------------------------------------------
def test_test_transform_resizes_and_normalises_with_imagenet_stats():
    img = Image.new("RGB", (20, 10), (255, 128, 0))
    out = transforms.test_transform((8, 4))(img)
    assert out.shape == (3, 8, 4)
    expected = [(255 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)


def test_train_transform_keeps_size_and_is_seeded():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 20, 3), dtype=np.uint8))
    tf = transforms.train_transform((32, 16), pad=4, erasing=1.0, color_jitter=0.2)
    with forked_torch_rng(3):
        a = tf(img)
    with forked_torch_rng(3):
        b = tf(img)
    assert a.shape == (3, 32, 16) and torch.equal(a, b)


def test_extract_features_keeps_order_normalises_and_restores_mode():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)) for _ in range(7)]
    tf = transforms.test_transform((16, 8))
    model = build_backbone("resnet-tiny", pretrained=False)
    model.train()
    feats = extract_features(model, images, tf, batch_size=3, device="cpu")
    assert model.training
    model.eval()
    with torch.no_grad():
        direct = F.normalize(model(torch.stack([tf(i) for i in images])), dim=1)
    assert feats.shape == (7, 128) and feats.dtype == torch.float32
    assert torch.allclose(feats, direct, atol=1e-5)
    raw = extract_features(model, images, tf, batch_size=4, device="cpu", normalize=False)
    assert torch.allclose(F.normalize(raw, dim=1), feats, atol=1e-5)
