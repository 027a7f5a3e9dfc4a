"""Saliency: one batched backward equals the per-class definition, in float64."""

from __future__ import annotations

import pytest
import torch

from ddn.models import Classifier, saliency, seed_subsets

NUM_CLASSES = 5


@pytest.fixture(scope="module", params=[320, 288, 96], ids=["map4x4", "map3x3", "map1x1"])
def cls(request) -> Classifier:
    """A tiny float64 classifier; at 320 px the score map is 4x4, so the max matters."""
    torch.manual_seed(0)
    return Classifier(NUM_CLASSES, "vgg16", 1 / 16, input_size=request.param).double().eval()


def random_pool5(cls: Classifier, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = cls.pool5_size
    shape = (batch, cls.encoder.out_channels, side, side)
    return torch.randn(shape, generator=g, dtype=torch.float64).relu()


def random_subsets(batch: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    subsets = (torch.rand(batch, NUM_CLASSES, generator=g) < 0.5).double()
    subsets[0] = 0  # an empty subset
    subsets[1] = 1  # every class
    return subsets


def per_class_loop(cls: Classifier, pool5: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
    """The definition, one backward per class through the whole score map."""
    leaf = pool5.clone().requires_grad_(True)
    max_scores = cls.head_scores(leaf).amax(dim=(2, 3))
    seeds = torch.sigmoid(max_scores.detach()) * subsets
    total = torch.zeros_like(pool5)
    for c in range(NUM_CLASSES):
        (g,) = torch.autograd.grad(max_scores[:, c], leaf, seeds[:, c], retain_graph=True)
        total += g
    return total


def objective(cls, pool5, seeds) -> torch.Tensor:
    with torch.no_grad():
        return (seeds * cls.head_scores(pool5).amax(dim=(2, 3))).sum()


def test_equals_per_class_loop(cls):
    pool5, subsets = random_pool5(cls, 6), random_subsets(6)
    sal = saliency(cls, pool5, subsets)
    ref = per_class_loop(cls, pool5, subsets)
    assert sal.shape == pool5.shape and sal.dtype == torch.float64
    assert ref.abs().max() > 1e-4  # a real signal, not two zeros
    assert torch.allclose(sal, ref, rtol=1e-9, atol=1e-14)
    assert not sal[0].any()  # the empty subset


def test_finite_differences(cls):
    pool5, subsets = random_pool5(cls, 3), random_subsets(3)
    with torch.no_grad():
        seeds = torch.sigmoid(cls.head_scores(pool5).amax(dim=(2, 3))) * subsets
    sal = saliency(cls, pool5, subsets)
    eps = 1e-6
    g = torch.Generator().manual_seed(3)
    for _ in range(3):  # directional derivatives cover every coordinate at once
        v = torch.randn(pool5.shape, generator=g, dtype=torch.float64)
        fd = (objective(cls, pool5 + eps * v, seeds) - objective(cls, pool5 - eps * v, seeds)) / (
            2 * eps
        )
        assert (sal * v).sum().item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)
    flat = sal[1].flatten()
    for i in flat.abs().topk(5).indices.tolist():  # and single coordinates
        bump = torch.zeros_like(pool5)
        bump[1].view(-1)[i] = eps
        fd = (objective(cls, pool5 + bump, seeds) - objective(cls, pool5 - bump, seeds)) / (2 * eps)
        assert flat[i].item() == pytest.approx(fd.item(), rel=1e-6)


def test_k_plus_one_seeds_in_one_batch(cls):
    pool5 = random_pool5(cls, 1)
    subsets = seed_subsets([0, 2, 3], NUM_CLASSES).double()
    assert subsets.tolist() == [
        [1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [1, 0, 1, 1, 0],
    ]
    rows = pool5.expand(4, -1, -1, -1)
    batched = saliency(cls, rows, subsets)
    with torch.no_grad():
        scores = cls.head_scores(pool5).repeat_interleave(4, dim=0)
    reused = saliency(cls, rows, subsets, scores=scores)
    for i in range(4):
        alone = saliency(cls, pool5, subsets[i : i + 1])
        assert torch.allclose(batched[i : i + 1], alone, rtol=1e-9, atol=1e-14)
        assert torch.allclose(reused[i : i + 1], alone, rtol=1e-9, atol=1e-14)
    # the all-picked map is the sum of the singleton maps (the gradient is linear in seeds)
    assert torch.allclose(batched[3], batched[:3].sum(0), rtol=1e-9, atol=1e-14)


def test_frozen_classifier_and_detached_result():
    torch.manual_seed(0)
    cls = Classifier(NUM_CLASSES, "vgg16_bn", 1 / 16, input_size=64)
    assert all(p.requires_grad for p in cls.parameters())
    out = cls(torch.randn(3, 3, 64, 64))  # pool5 carries a graph into the encoder
    with torch.no_grad():  # how train-seg calls it
        sal = saliency(cls, out.pool5, torch.ones(3, NUM_CLASSES), scores=out.scores)
    assert sal.abs().sum() > 0
    assert not sal.requires_grad
    assert all(p.grad is None for p in cls.parameters())


def test_bf16_autocast_close_to_float32():
    torch.manual_seed(0)
    # a 1x1 score map: bf16 rounding cannot move a class's max to another position
    cls = Classifier(NUM_CLASSES, "vgg16", 1 / 16, input_size=96).eval()
    pool5 = torch.randn(4, cls.encoder.out_channels, 3, 3).relu()
    subsets = torch.eye(NUM_CLASSES)[:4]
    ref = saliency(cls, pool5, subsets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = saliency(cls, pool5, subsets)
    assert low.dtype == torch.float32  # pool5's dtype
    cosine = torch.nn.functional.cosine_similarity(low.flatten(), ref.flatten(), dim=0)
    assert cosine > 0.98  # bf16 keeps ~3 digits through three layers


def test_bf16_pool5_outside_autocast():
    cls = Classifier(NUM_CLASSES, "vgg16", 1 / 16, input_size=96).eval()
    pool5 = torch.randn(2, cls.encoder.out_channels, 3, 3).relu()
    ref = saliency(cls, pool5, torch.ones(2, NUM_CLASSES))
    low = saliency(cls, pool5.bfloat16(), torch.ones(2, NUM_CLASSES))
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_subset_shape_checked():
    cls = Classifier(NUM_CLASSES, "vgg16", 1 / 16, input_size=64)
    with pytest.raises(ValueError, match="subsets"):
        saliency(cls, torch.zeros(2, 32, 2, 2), torch.ones(2, NUM_CLASSES + 1))
    with pytest.raises(ValueError, match="do not belong"):
        saliency(cls, torch.zeros(2, 32, 3, 3), torch.ones(2, NUM_CLASSES), torch.zeros(2, 5, 1, 1))
