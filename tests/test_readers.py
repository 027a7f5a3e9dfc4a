"""Streaming readers: exact crops, reproducible randomness, lazy and fork-safe HDF5."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline import shard_set
from pipeline.cropping import warp_example
from pipeline.errors import UserError
from pipeline.imageio import encode_label_png
from pipeline.manifest import write_manifest
from pipeline.readers import CropDataset, ValDataset, WeakDataset
from pipeline.shards import FORMAT_VERSION, CropTable, ShardImages, shard_name, write_shard

CLASSES = ["background", "cat", "dog", "car"]
C = len(CLASSES) - 1


# ---------------------------------------------------------------- fixture data


def textured_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random texture: strong enough gradients that a 1 px shift shows."""
    coarse = rng.uniform(0, 255, size=(h // 5 + 2, w // 5 + 2, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def label_map(rng: np.random.Generator, h: int, w: int, classes: list[int]) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    for c in classes:
        y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        labels[y : y + int(rng.integers(8, h // 2)), x : x + int(rng.integers(8, w // 2))] = c
    labels[:2, :] = 255  # an ignore band, kept as 255 in every target
    labels[h // 2, w // 3 : w // 2] = 255
    return labels


def random_boxes(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    # Quarter-pixel coordinates; most boxes reach past the image, all overlap it.
    x0 = rng.integers(-w, 2 * w, n) / 4
    y0 = rng.integers(-h, 2 * h, n) / 4
    x1 = x0 + rng.integers(2 * w, 5 * w, n) / 4
    y1 = y0 + rng.integers(2 * h, 5 * h, n) / 4
    return np.stack([x0, y0, x1, y1], 1).astype(np.float32)


@dataclass
class Prepared:
    root: Path
    src: Path  # the original JPEG / PNG files the shards were built from
    strong_ids: list[str] = field(default_factory=list)
    weak_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    crops: list[tuple[str, int, np.ndarray]] = field(default_factory=list)  # id, bitmask, box
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # id -> multi-hot


def _images(prep: Prepared, rng: np.random.Generator, ids: list[str], masks: bool) -> ShardImages:
    out = ShardImages()
    for image_id in ids:
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        present = sorted(
            rng.choice(np.arange(1, C + 1), size=int(rng.integers(1, 3)), replace=False)
        )
        labels = label_map(rng, h, w, [int(c) for c in present])
        jpg, png = prep.src / f"{image_id}.jpg", prep.src / f"{image_id}.png"
        cv2.imwrite(str(jpg), textured_image(rng, h, w)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        Image.fromarray(labels, mode="L").save(png)
        multi_hot = np.zeros(C, np.uint8)
        multi_hot[[c - 1 for c in present]] = 1
        prep.labels[image_id] = multi_hot
        out.ids.append(image_id)
        out.encoded.append(jpg.read_bytes())  # the original bytes, as `ddn prepare` stores
        out.shapes.append((h, w))
        out.labels.append(multi_hot)
        if masks:
            out.masks.append(encode_label_png(np.array(Image.open(png))))
    return out


def make_prepared(root: Path, strong: tuple[int, ...] = (2, 3), weak: int = 3, val: int = 2,
                  boxes_per_subset: int = 3, seed: int = 0) -> Prepared:  # fmt: skip
    """A prepared directory written with `write_shard` / `write_manifest`, no `ddn prepare`."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    prep = Prepared(root, root / "src")
    prep.src.mkdir()
    entries, n = [], 0
    for index, count in enumerate(strong):
        ids = [f"s{n + i}" for i in range(count)]
        n += count
        images = _images(prep, rng, ids, masks=True)
        parts = []
        for row, image_id in enumerate(ids):
            h, w = images.shapes[row]
            k = int(prep.labels[image_id].sum())
            for bitmask in range(1, 2**k):
                boxes = random_boxes(rng, h, w, boxes_per_subset)
                parts.append(CropTable(np.full(len(boxes), row, np.int32),
                                       np.full(len(boxes), bitmask, np.uint64), boxes,
                                       np.zeros(len(boxes), np.uint8)))  # fmt: skip
                prep.crops += [(image_id, bitmask, b) for b in boxes]
        prep.strong_ids += ids
        path = root / shard_name("strong", index)
        entries.append(write_shard(path, "strong", index, CLASSES, "h", images,
                                   CropTable.concat(parts)))  # fmt: skip
    for kind, count, ids in (("weak", weak, prep.weak_ids), ("val", val, prep.val_ids)):
        if count:
            ids += [f"{kind}{i}" for i in range(count)]
            images = _images(prep, rng, ids, masks=kind == "val")
            entries.append(write_shard(root / shard_name(kind, 0), kind, 0, CLASSES, "h", images))
    write_manifest(root, {"format_version": FORMAT_VERSION, "classes": CLASSES,
                          "shards": entries, "complete": True, "config_hash": "h"})  # fmt: skip
    return prep


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Prepared:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def as_numpy(item: dict) -> dict:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in item.items()}


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# ---------------------------------------------------------------- CropDataset


def test_construction_reads_only_the_manifest(prep, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("HDF5 opened at construction")

    monkeypatch.setattr(h5py, "File", refuse)
    ds = CropDataset(prep.root)
    assert len(ds) == len(prep.crops)
    assert ds.classes == CLASSES and ds.num_classes == C
    assert ds.shards.counts == [sum(c[0] in ids for c in prep.crops)
                                for ids in (["s0", "s1"], ["s2", "s3", "s4"])]  # fmt: skip


def test_items_are_warp_example_then_crop_and_flip(prep):
    """Every crop of both shards is `warp_example` + crop + flip: the target bit for bit,
    the image up to cv2's 1/32 px coordinate rounding of the shifted window."""
    ds = CropDataset(prep.root, seed=3)
    ds.set_epoch(2)
    flips = 0
    for index, (image_id, bitmask, box) in enumerate(prep.crops):
        item = ds[index]
        image = read_rgb(prep.src / f"{image_id}.jpg")
        labels = np.array(Image.open(prep.src / f"{image_id}.png"))
        present = np.flatnonzero(prep.labels[image_id]) + 1
        subset = [int(c) for j, c in enumerate(present) if bitmask >> j & 1]
        ref_image, ref_target = warp_example(image, labels, box, subset, 350)
        top, left, flip = ds.crop_params(index)
        ref_image, ref_target = (
            a[top : top + 320, left : left + 320] for a in (ref_image, ref_target)
        )
        if flip:
            ref_image, ref_target = ref_image[:, ::-1], ref_target[:, ::-1]
            flips += 1
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 320, 320)
        diff = np.abs(item["image"].permute(1, 2, 0).numpy().astype(int) - ref_image)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
        np.testing.assert_array_equal(item["target"].numpy(), ref_target)
        multi_hot = np.zeros(C, np.float32)
        multi_hot[[c - 1 for c in subset]] = 1
        assert item["subset"].dtype == torch.float32
        np.testing.assert_array_equal(item["subset"].numpy(), multi_hot)
        assert item["index"] == index
        assert set(np.unique(item["target"].numpy())) <= {0, 1, 255}
    assert 0 < flips < len(prep.crops)


def reference_warp(image: np.ndarray, labels: np.ndarray, box, size: int):
    """Float bilinear / floor-nearest sampling, written from the definition only.

    Output pixel u samples x = x0 + (u + 0.5) * (x1 - x0) / size (pixel i spans [i, i+1));
    the image bilinearly around pixel centres (x - 0.5) with 0 outside, the labels at
    floor(x) with 255 outside.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = labels.shape
    xs = x0 + (np.arange(size) + 0.5) * ((x1 - x0) / size)
    ys = y0 + (np.arange(size) + 0.5) * ((y1 - y0) / size)
    padded = np.zeros((h + 2, w + 2, 3))
    padded[1:-1, 1:-1] = image
    cx, cy = xs - 0.5, ys - 0.5
    ix, iy = np.floor(cx).astype(int), np.floor(cy).astype(int)
    fx, fy = (cx - ix)[None, :, None], (cy - iy)[:, None, None]
    jx, jy = np.clip(ix + 1, 0, w + 1), np.clip(iy + 1, 0, h + 1)  # +1: the zero border
    jx1, jy1 = np.clip(ix + 2, 0, w + 1), np.clip(iy + 2, 0, h + 1)
    out = ((1 - fy) * (1 - fx) * padded[jy][:, jx] + (1 - fy) * fx * padded[jy][:, jx1]
           + fy * (1 - fx) * padded[jy1][:, jx] + fy * fx * padded[jy1][:, jx1])  # fmt: skip
    lx, ly = np.floor(xs).astype(int), np.floor(ys).astype(int)
    inside = ((ly >= 0) & (ly < h))[:, None] & ((lx >= 0) & (lx < w))[None, :]
    lab = np.where(inside, labels[np.clip(ly, 0, h - 1)][:, np.clip(lx, 0, w - 1)], 255)
    return out, lab.astype(np.uint8)


def test_crops_match_independent_recomputation_from_original_files(prep):
    ds = CropDataset(prep.root, seed=1)
    ds.set_epoch(5)
    shifted_means = []
    for index, (image_id, bitmask, box) in enumerate(prep.crops):
        image = cv2.imread(str(prep.src / f"{image_id}.jpg"))[..., ::-1].astype(np.float64)
        labels = np.array(Image.open(prep.src / f"{image_id}.png"))
        present = np.flatnonzero(prep.labels[image_id]) + 1
        in_p = np.isin(labels, [c for j, c in enumerate(present) if bitmask >> j & 1])
        binary = np.where(labels == 255, 255, in_p).astype(np.uint8)
        top, left, flip = ds.crop_params(index)
        cut = (slice(top, top + 320), slice(left, left + 320))
        ref_image, ref_target = (a[cut][:, ::-1] if flip else a[cut]
                                 for a in reference_warp(image, binary, box, 350))  # fmt: skip
        item = ds[index]
        got = item["image"].permute(1, 2, 0).numpy().astype(np.float64)
        diff = np.abs(got - ref_image)
        assert diff.max() <= 4 and diff.mean() <= 0.5, (index, diff.max(), diff.mean())
        np.testing.assert_array_equal(item["target"].numpy(), ref_target)
        # The same comparison for a box one pixel off must fail clearly.
        off = np.asarray(box) + np.array([1, 0, 1, 0], np.float32)
        off_image = reference_warp(image, binary, off, 350)[0][cut]
        off_image = off_image[:, ::-1] if flip else off_image
        inside = ref_image.sum(-1) > 0  # pixels that see the image (its texture)
        shifted_means.append(np.abs(got - off_image)[inside].mean())
    assert min(shifted_means) > 0.5 and np.median(shifted_means) > 4 * 0.5, shifted_means


def test_randomness_is_reproducible_per_seed_epoch_index(prep):
    a, b = CropDataset(prep.root, seed=7), CropDataset(prep.root, seed=7)
    n = len(a)
    assert [a.crop_params(i) for i in range(n)] == [b.crop_params(i) for i in range(n)]
    epoch0 = [a.crop_params(i) for i in range(n)]
    a.set_epoch(1)
    assert [a.crop_params(i) for i in range(n)] != epoch0
    assert [CropDataset(prep.root, seed=8).crop_params(i) for i in range(n)] != epoch0
    assert all(0 <= t <= 30 and 0 <= left <= 30 for t, left, _ in epoch0)
    no_flip = CropDataset(prep.root, seed=7, flip=False)
    assert [no_flip.crop_params(i) for i in range(n)] == [(t, le, False) for t, le, _ in epoch0]
    assert_items_equal(as_numpy(b[-1]), as_numpy(b[n - 1]))
    with pytest.raises(IndexError):
        b[n]


def test_crop_params_are_the_seeded_generators_first_draws(prep):
    # The crops of runs written before a change of how they are drawn stay the same.
    ds = CropDataset(prep.root, seed=5)
    for epoch in (0, 9):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            rng = np.random.default_rng((5, epoch, index))
            top, left = rng.integers(0, 31, 2).tolist()
            assert ds.crop_params(index) == (top, left, bool(rng.random() < 0.5))


def test_dataloader_fork_workers_match_single_process(prep):
    ds = CropDataset(prep.root, warp_size=60, crop_size=48, seed=2)
    ds.set_epoch(3)
    ds[0]  # the parent opens a handle before the fork: workers must not use it
    assert ds.shards._handles
    indices = list(range(len(ds)))[::-1]
    loader = DataLoader(ds, batch_size=4, sampler=indices, num_workers=2,
                        multiprocessing_context="fork")  # fmt: skip
    got = [as_numpy(b) for b in loader]
    for start, batch in zip(range(0, len(indices), 4), got, strict=True):
        expected = [as_numpy(ds[i]) for i in indices[start : start + 4]]
        for k in ("image", "target", "subset", "index"):
            np.testing.assert_array_equal(batch[k], np.stack([e[k] for e in expected]))


def test_handles_reopened_in_a_new_process(prep, monkeypatch):
    ds = CropDataset(prep.root, warp_size=40, crop_size=32)
    first = ds[0]
    parent_handle = ds.shards.file(0)
    monkeypatch.setattr(shard_set.os, "getpid", lambda: -1)  # as if forked
    assert ds.shards.file(0) is not parent_handle
    assert parent_handle.id.valid  # inherited handles are left alone, not closed
    assert_items_equal(as_numpy(ds[0]), as_numpy(first))


def test_pickled_dataset_drops_handles_and_cache(prep):
    ds = CropDataset(prep.root, warp_size=40, crop_size=32)
    expected = [as_numpy(ds[i]) for i in range(3)]
    assert len(ds.image_cache) > 0
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.shards._handles == {} and len(clone.image_cache) == 0
    for i in range(3):
        assert_items_equal(as_numpy(clone[i]), expected[i])


def test_image_cache_respects_its_byte_budget(prep):
    full = CropDataset(prep.root, warp_size=40, crop_size=32)
    expected = [as_numpy(full[i]) for i in range(len(full))]
    assert len(full.image_cache) == len(prep.strong_ids)
    assert full.image_cache.hits == len(full) - len(prep.strong_ids)
    budget = full.image_cache.bytes // 2  # room for about half the source images
    for max_bytes in (budget, 0):
        small = CropDataset(prep.root, warp_size=40, crop_size=32, cache_bytes=max_bytes)
        for i in np.random.default_rng(0).permutation(len(small)):
            assert_items_equal(as_numpy(small[int(i)]), expected[i])
            assert small.image_cache.bytes <= max_bytes
        assert small.image_cache.misses > len(prep.strong_ids)  # evicted, decoded again
    assert len(small.image_cache) == 0 and small.image_cache.misses == len(small)


@pytest.mark.parametrize("train,pad_square", [(True, True), (True, False), (False, True)])
def test_weak_examples_are_the_same_from_the_image_cache(prep, train, pad_square):
    kw = dict(size=32, train=train, seed=3, source="weak", pad_square=pad_square)
    cached, plain = WeakDataset(prep.root, **kw), WeakDataset(prep.root, cache_bytes=0, **kw)
    n = len(cached)
    for epoch in (0, 1):  # the second epoch's examples all start from cached images
        cached.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(n):
            got = cached[i]
            assert_items_equal(as_numpy(got), as_numpy(plain[i]))
            got["image"].fill_(0)  # a consumer writing to its batch leaves the cache alone
    assert len(cached.image_cache) == n and cached.image_cache.hits == n
    assert len(plain.image_cache) == 0
    clone = pickle.loads(pickle.dumps(cached))  # a spawned worker starts empty
    assert len(clone.image_cache) == 0 and clone.image_cache.max_bytes > 0


# ---------------------------------------------------------------- user mistakes


def test_user_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="manifest.json: not found"):
        CropDataset(tmp_path)
    prep = make_prepared(tmp_path / "p", strong=(1, 1), weak=0, val=0, boxes_per_subset=1)
    with pytest.raises(UserError, match="no val images"):
        ValDataset(prep.root)
    with pytest.raises(UserError, match="unknown source 'train'"):
        WeakDataset(prep.root, source="train")
    with pytest.raises(UserError, match="crop size 400"):
        CropDataset(prep.root, crop_size=400)
    ds = CropDataset(prep.root)
    (prep.root / shard_name("strong", 1)).unlink()
    ds[0]
    with pytest.raises(UserError, match="strong-00001.h5: shard listed in the manifest is missing"):
        ds[len(ds) - 1]


def test_shard_disagreeing_with_manifest_is_refused(tmp_path):
    prep = make_prepared(tmp_path, strong=(1,), weak=0, val=0, boxes_per_subset=2)
    manifest = (prep.root / "manifest.json").read_text().replace('"crops": ', '"crops": 1')
    (prep.root / "manifest.json").write_text(manifest)
    with pytest.raises(UserError, match="the manifest says"):
        CropDataset(prep.root)[0]
