"""Object share of the network input in training crops and val images (`ddn inspect`)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.object_scale import describe, object_scale, training_crop_shares
from pipeline.shards import subset_classes
from tests.test_readers import make_prepared


def _inside(mask: np.ndarray, box) -> int:
    h, w = mask.shape
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    x0, y0, x1, y1 = (float(v) for v in box)
    inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    return int((mask & inside).sum())


def test_shares_match_direct_pixel_counting(tmp_path):
    prep = make_prepared(tmp_path / "p", strong=(2, 2), val=3, boxes_per_subset=4)
    labels = {i: np.array(Image.open(prep.src / f"{i}.png")) for i in prep.strong_ids}
    expected = []
    for image_id, bitmask, box in prep.crops:
        fg = np.isin(labels[image_id], subset_classes(prep.labels[image_id], bitmask))
        expected.append(_inside(fg, box) / ((box[2] - box[0]) * (box[3] - box[1])))
    shares, origins = training_crop_shares(prep.root, sample=10_000)
    np.testing.assert_allclose(np.sort(shares), np.sort(expected), rtol=1e-6)
    assert len(origins) == len(expected)

    val = []
    for image_id in prep.val_ids:
        lm = np.array(Image.open(prep.src / f"{image_id}.png"))
        val += [(lm == c).sum() / max(lm.shape) ** 2 for c in np.unique(lm) if c not in (0, 255)]
    scale = object_scale(prep.root, sample=10_000)
    assert scale["val_objects"] == describe(np.asarray(val))
    assert scale["training_crops"]["count"] == len(expected)
    assert set(scale["training_crops"]["by_origin"]) == {"proposal"}  # the fixture's origin 0


def test_sampling_is_seeded_and_bounded(tmp_path):
    prep = make_prepared(tmp_path / "p", strong=(3,), boxes_per_subset=10)
    a, _ = training_crop_shares(prep.root, sample=7, seed=1)
    b, _ = training_crop_shares(prep.root, sample=7, seed=1)
    c, _ = training_crop_shares(prep.root, sample=7, seed=2)
    assert len(a) == 7 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_describe_counts_small_objects():
    d = describe(np.array([0.01, 0.02, 0.3, 0.5]))
    assert d["count"] == 4 and d["below_5pct"] == 0.5 and d["p50"] == 0.16
    assert describe(np.zeros(0)) == {"count": 0}
