"""WeakDataset and ValDataset: the classifier's images and the evaluation images, read from
the shards (the fixture and helpers are test_readers.py's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.readers import (
    ValDataset,
    WeakDataset,
    pad_to_square_and_resize,
    random_resized_crop_box,
)
from tests.test_readers import C, Prepared, as_numpy, assert_items_equal, make_prepared, read_rgb


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Prepared:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def test_pad_to_square_and_resize_pads_bottom_right():
    image = np.full((20, 40, 3), 200, np.uint8)
    out = pad_to_square_and_resize(image, 32)
    assert out.shape == (32, 32, 3)
    assert (out[:15] == 200).all() and (out[17:] == 0).all()
    tall = pad_to_square_and_resize(np.full((40, 10), 7, np.uint8), 80)
    assert tall.shape == (80, 80) and (tall[:, :18] == 7).all() and (tall[:, 22:] == 0).all()


def test_random_resized_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for h, w in ((40, 60), (100, 30), (10, 300)):
        for _ in range(50):
            top, left, ch, cw = random_resized_crop_box(rng, h, w)
            assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w
            assert ch > 0 and cw > 0


def test_weak_dataset_train_and_eval(prep):
    train = WeakDataset(prep.root, size=48, seed=4)
    assert len(train) == len(prep.weak_ids) and train.num_classes == C
    item = train[1]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8
    np.testing.assert_array_equal(item["labels"].numpy(), prep.labels["weak1"].astype(np.float32))
    assert_items_equal(as_numpy(WeakDataset(prep.root, size=48, seed=4)[1]), as_numpy(item))
    epoch0 = [train[i]["image"] for i in range(len(train))]
    train.set_epoch(1)
    assert any(not torch.equal(train[i]["image"], epoch0[i]) for i in range(len(train)))
    evaluation = WeakDataset(prep.root, size=48, train=False)
    for i, image_id in enumerate(prep.weak_ids):
        expected = pad_to_square_and_resize(read_rgb(prep.src / f"{image_id}.jpg"), 48)
        np.testing.assert_array_equal(evaluation[i]["image"].permute(1, 2, 0).numpy(), expected)
    for source, ids in (("val", prep.val_ids), ("strong", prep.strong_ids)):
        ds = WeakDataset(prep.root, size=48, train=False, source=source)
        assert len(ds) == len(ids)
        np.testing.assert_array_equal(ds[-1]["labels"].numpy(), prep.labels[ids[-1]])


def _has_zero_edge(image: np.ndarray) -> bool:
    # (3, H, W): a whole zero row at the bottom or a zero column at either side (flips).
    return bool((image[:, -1] == 0).all() or (image[:, :, 0] == 0).all()
                or (image[:, :, -1] == 0).all())  # fmt: skip


def test_weak_dataset_trains_on_padded_squares_as_inference_sees_them(prep):
    shapes = [WeakDataset(prep.root, train=False)._decode(0, i, False)[0].shape
              for i in range(len(prep.weak_ids))]  # fmt: skip
    assert any(h != w for h, w, _ in shapes), "the fixture needs non-square images"
    padded, plain = WeakDataset(prep.root, size=48), WeakDataset(prep.root, 48, pad_square=False)
    seen_pad = seen_plain = 0
    for epoch in range(6):
        padded.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(len(padded)):
            seen_pad += _has_zero_edge(padded[i]["image"].numpy())
            seen_plain += _has_zero_edge(plain[i]["image"].numpy())
    assert seen_pad > 0 and seen_plain == 0


def test_val_dataset_returns_originals(prep):
    ds = ValDataset(prep.root)
    assert len(ds) == len(prep.val_ids)
    for i, image_id in enumerate(prep.val_ids):
        item = ds[i]
        assert item["id"] == image_id
        np.testing.assert_array_equal(item["image"], read_rgb(prep.src / f"{image_id}.jpg"))
        np.testing.assert_array_equal(
            item["mask"], np.array(Image.open(prep.src / f"{image_id}.png"))
        )
        np.testing.assert_array_equal(item["labels"], prep.labels[image_id].astype(np.float32))
