"""The windowed (quasi-random) crop order: every crop once per epoch, a pure function of
(seed, epoch), and batches that draw from a bounded window of source images."""

from __future__ import annotations

import numpy as np
import pytest

from ddn.train.distributed import DistInfo, IndexStream, StepBatchSampler
from ddn.train.strong import crop_order
from pipeline.readers import CropDataset
from tests.trainutil import make_prepared


def crops_of(images: int, seed: int = 0, fewest: int = 5) -> np.ndarray:
    """Group ids of a crop table: image k has ``fewest``-40 crops, in table order."""
    sizes = np.random.default_rng(seed).integers(fewest, 40, images)
    return np.repeat(np.arange(images), sizes)


def test_without_groups_the_order_is_the_plain_seeded_permutation():
    stream = IndexStream(101, seed=3, stream=1)
    for epoch in (0, 4):
        expected = np.random.default_rng((3, 1, epoch)).permutation(101)
        assert np.array_equal(stream.permutation(epoch), expected)  # old runs resume the same


def test_windowed_epochs_cover_every_crop_once_and_repeat_exactly():
    groups = crops_of(50)
    a, b = (
        IndexStream(len(groups), 7, groups=groups, window=4),
        IndexStream(len(groups), 7, groups=groups, window=4),
    )
    for epoch in range(3):
        perm = a.permutation(epoch)
        assert sorted(perm.tolist()) == list(range(len(groups)))
        assert np.array_equal(perm, b.permutation(epoch))
    assert not np.array_equal(a.permutation(0), a.permutation(1))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_a_batch_draws_from_at_most_two_windows_of_images(window):
    # A window holds at least a batch of crops (real images have ~200), so a batch
    # spans one window or straddles two.
    groups = crops_of(60, seed=window, fewest=16)
    stream = IndexStream(len(groups), 0, groups=groups, window=window)
    order = groups[stream.permutation(0)]
    batch = 16
    most = max(len(set(order[i : i + batch])) for i in range(len(order) - batch))
    assert most <= 2 * window
    # Windows change the order, not just relabel it: the plain shuffle mixes far more.
    plain = groups[IndexStream(len(groups), 0).permutation(0)]
    assert max(len(set(plain[i : i + batch])) for i in range(len(plain) - batch)) > 2 * window


def test_resuming_a_windowed_sampler_continues_the_same_stream():
    groups = crops_of(30)
    full = list(StepBatchSampler(len(groups), 4, 2, 9, 0, 5, DistInfo(), groups=groups, window=3))
    resumed = list(
        StepBatchSampler(len(groups), 4, 2, 9, 4, 5, DistInfo(), groups=groups, window=3)
    )
    assert resumed == full[4 * 2 :]


def test_the_order_is_windowed_only_when_the_sources_outgrow_the_cache(tmp_path):
    prepared = make_prepared(tmp_path, images=40, per_class=3)
    roomy = CropDataset(prepared)
    assert crop_order(roomy, DistInfo()) == (None, 0)
    need = roomy.source_bytes()
    tight = CropDataset(prepared, cache_bytes=need // 2)
    groups, window = crop_order(tight, DistInfo())
    assert groups is not None and len(groups) == len(tight)
    images = len(np.unique(groups))
    assert 1 <= window < images
    first = tight.shards.columns(0)["crop_image"]
    assert np.array_equal(groups[: len(first)], first)  # table order, shard 0 first
