"""The inference procedure: one segmenter batch of K+1 rows, sizes, normalisation, arg-max."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddn import inference
from ddn.inference import combine_maps, segment
from ddn.models import Classifier, DecoupledSegmenter, normalize, saliency, seed_subsets
from pipeline.readers import pad_to_square_and_resize

C = 3
SIZE = 64


def tiny_models(score_bias: list[float]) -> tuple[Classifier, DecoupledSegmenter]:
    """Random tiny models; the score bias decides which classes get picked."""
    torch.manual_seed(0)
    cls = Classifier(C, "vgg16_bn", 0.125, input_size=SIZE)
    with torch.no_grad():
        cls.head.score.bias.copy_(torch.tensor(score_bias))
    return cls.eval(), contrasted_segmenter(cls)


def contrasted_segmenter(cls: Classifier) -> DecoupledSegmenter:
    """A random segmenter whose maps differ per class and per pixel.

    At its N(0, 0.01) init every foreground map is 0.5 and the saliency, far below BN's
    default statistics, has no effect: arg-max would only break ties. He-init weights
    and BN statistics measured on real rows (as train-seg re-estimates them) fix both.
    """
    seg = DecoupledSegmenter(cls.encoder.out_channels, 0.125, cls.pool5_size)
    for m in seg.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    torch.nn.init.normal_(seg.segmenter.classify.weight, std=1.0)
    x = normalize(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8))
    with torch.no_grad():
        out = cls(x)
    subsets = torch.eye(C)[torch.tensor([0, 1, 2, 0])]
    sal = saliency(cls, out.pool5, subsets)
    seg.train()
    with torch.no_grad():
        seg(out, sal)
    return seg.eval()


@pytest.fixture(scope="module")
def models() -> tuple[Classifier, DecoupledSegmenter]:
    return tiny_models([6.0, -6.0, 6.0])  # classes 1 and 3 picked


def images(*shapes: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def count_calls(module: torch.nn.Module) -> tuple[list[int], object]:
    batches: list[int] = []
    handle = module.register_forward_hook(lambda m, i, o: batches.append(_batch(i)))
    return batches, handle


def _batch(inputs) -> int:
    x = inputs[0]
    return x.shape[0] if isinstance(x, torch.Tensor) else x.pool5.shape[0]


def test_k_plus_one_rows_in_one_segmenter_batch(models):
    cls, seg = models
    cls_calls, h1 = count_calls(cls)
    seg_calls, h2 = count_calls(seg)
    try:
        preds = segment(cls, seg, images((40, 60), (50, 50), (70, 30)))
    finally:
        h1.remove()
        h2.remove()
    assert cls_calls == [3]  # one classifier forward for the three images
    assert seg_calls == [3 * (2 + 1)]  # one segmenter forward: K+1 = 3 rows per image
    for p in preds:
        assert p.labels == [1, 3]
        assert p.probs.shape == (C,) and p.probs[0] > 0.5 > p.probs[1]
        assert set(np.unique(p.pred).tolist()) <= {0, 1, 3}


def test_no_label_picked_is_all_background():
    cls, seg = tiny_models([-8.0, -8.0, -8.0])
    seg_calls, handle = count_calls(seg)
    try:
        preds = segment(cls, seg, images((33, 47), (20, 20)), keep_maps=True)
    finally:
        handle.remove()
    assert seg_calls == []  # the segmenter is not run at all
    for p, shape in zip(preds, [(33, 47), (20, 20)], strict=True):
        assert p.labels == [] and p.pred.shape == shape and not p.pred.any()
        assert p.foreground is None


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (65, 64)])
def test_output_size_equals_input_size(models, shape):
    cls, seg = models
    (p,) = segment(cls, seg, images(shape), keep_maps=True)
    assert p.pred.shape == shape and p.pred.dtype == np.uint8
    assert p.foreground.shape == (2, *shape)
    assert p.background.shape == shape
    assert p.bridge.shape == (3, *shape)
    assert p.foreground.min() >= 0 and p.foreground.max() <= 1 + 1e-6  # softmax, resized


def reference_segment(cls, seg, image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """DESIGN.md's procedure spelt out: one segmenter pass per seed, a C+1 volume."""
    h, w = image.shape[:2]
    x = torch.from_numpy(pad_to_square_and_resize(image, SIZE)).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = cls(normalize(x))
    picked = torch.nonzero(torch.sigmoid(out.logits[0]) > threshold).flatten().tolist()
    if not picked:
        return np.zeros((h, w), np.uint8)
    volume = torch.zeros(C + 1, SIZE, SIZE)
    for row, subset in enumerate(seed_subsets(picked, C)):
        sal = saliency(cls, out.pool5, subset[None])
        with torch.no_grad():
            prob = seg(out, sal).softmax(1)[0]
        if row < len(picked):
            volume[picked[row] + 1] = prob[1]  # M_f(g^l)
        else:
            volume[0] = prob[0]  # M_b(g*)
    volume /= volume.sum(0, keepdim=True)
    side = max(h, w)
    # bilinear; antialiased when shrinking, as MATLAB's imresize in the reference code
    volume = F.interpolate(volume[None], (side, side), mode="bilinear", antialias=side < SIZE)[0]
    return volume[:, :h, :w].argmax(0).numpy().astype(np.uint8)


def test_matches_the_reference_procedure(models):
    cls, seg = models
    ims = images((37, 53), (80, 72))  # maps shrunk (53 < 64) and enlarged (80 > 64)
    preds = segment(cls, seg, ims)
    for image, p in zip(ims, preds, strict=True):
        expected = reference_segment(cls, seg, image)
        assert (p.pred == expected).mean() > 0.999


def test_batched_equals_one_at_a_time(models, monkeypatch):
    cls, seg = models
    ims = images((40, 60), (50, 50), (70, 30), seed=3)
    # Different K per image, one with none: the row bookkeeping is what is tested.
    plans = [[[0, 2], [], [1]], [[0, 2]], [[]], [[1]]]
    monkeypatch.setattr(inference, "pick_labels", lambda probs, threshold: plans.pop(0))
    batched = segment(cls, seg, ims, keep_maps=True)
    singles = [segment(cls, seg, [im], keep_maps=True)[0] for im in ims]
    assert [p.labels for p in batched] == [[1, 3], [], [2]]
    assert not batched[1].pred.any()
    for b, s in zip(batched, singles, strict=True):
        assert b.labels == s.labels
        np.testing.assert_allclose(b.probs, s.probs, rtol=1e-5, atol=1e-6)
        assert (b.pred == s.pred).mean() > 0.999
        if b.labels:
            np.testing.assert_allclose(b.foreground, s.foreground, atol=1e-4)
            np.testing.assert_allclose(b.bridge, s.bridge, rtol=1e-4, atol=1e-4)


def test_normalisation_comes_before_the_resize():
    # Two network pixels, resized to a 3-wide image: the middle pixel is their average.
    # Left: bg 0.1, fg 0.2 -> normalised 1/3, 2/3. Right: bg 0.9, fg 0.7 -> 0.5625, 0.4375.
    # Raw average: bg 0.5 > fg 0.45; normalised average: fg 0.552 > bg 0.448.
    fg = torch.tensor([[[0.2, 0.7], [0.2, 0.7]]])
    bg = torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    pred = combine_maps(fg, bg, [5], height=1, width=3)
    assert pred.tolist() == [[5, 5, 0]]


def test_compact_volume_equals_the_full_c_plus_1_volume():
    g = torch.Generator().manual_seed(0)
    labels = [2, 5, 6]
    fg, bg = torch.rand(3, 10, 10, generator=g), torch.rand(10, 10, generator=g)
    full = torch.zeros(8, 10, 10)  # background + 7 classes, unpicked ones 0
    full[0], full[labels] = bg, fg
    full /= full.sum(0, keepdim=True)
    full = F.interpolate(full[None], size=(23, 23), mode="bilinear")[0, :, :17, :23]
    pred = combine_maps(fg, bg, labels, height=17, width=23)
    assert pred.dtype == torch.uint8
    assert torch.equal(pred.long(), full.argmax(0))
    with pytest.raises(ValueError, match="ascending"):
        combine_maps(fg, bg, [5, 2, 6], 17, 23)


def test_needs_eval_mode_and_rgb_uint8(models):
    cls, seg = models
    assert segment(cls, seg, []) == []
    with pytest.raises(ValueError, match="RGB uint8"):
        segment(cls, seg, [np.zeros((10, 10), np.uint8)])
    seg.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            segment(cls, seg, images((10, 10)))
    finally:
        seg.eval()


def test_given_labels_replace_the_classifiers_pick(models) -> None:
    cls, seg = models  # the classifier picks classes 1 and 3
    imgs = images((40, 56), (64, 64))
    picked = segment(cls, seg, imgs)
    same = segment(cls, seg, imgs, labels=[[3, 1], [1, 3, 3]])  # any order, repeats
    for a, b in zip(picked, same, strict=True):
        assert a.labels == b.labels == [1, 3]
        np.testing.assert_array_equal(a.pred, b.pred)
    given = segment(cls, seg, imgs, labels=[[2], []], threshold=1.0)
    assert [p.labels for p in given] == [[2], []]
    assert set(np.unique(given[0].pred)) <= {0, 2} and 2 in given[0].pred
    assert not given[1].pred.any()  # no label: all background, as with no pick
    np.testing.assert_array_equal(given[0].probs, picked[0].probs)  # still the classifier's


@pytest.mark.parametrize(
    ("labels", "message"),
    [([[1]], "labels: 1 lists for 2 images"), ([[1], [4]], "labels: class 4 is not in 1..3"),
     ([[0], [1]], "labels: class 0 is not in 1..3")],
)  # fmt: skip
def test_given_labels_are_checked(models, labels, message) -> None:
    cls, seg = models
    with pytest.raises(inference.UserError, match=message):
        segment(cls, seg, images((32, 32), (32, 32)), labels=labels)
