"""Streaming readers of a prepared directory: what the trainers and evaluation iterate.

- `CropDataset`: the segmenter's training examples, one per crop-table row of the strong
  shards, re-materialised from (source image, box, subset P) as the reference code cuts
  them: the box warped to ``warp_size`` (`pipeline.cropping.warp_example`), then a
  random ``crop_size`` crop and a random horizontal flip. The kept window is sampled
  directly (`pipeline.training_crop`): same sample points, same target bit for bit.
- `WeakDataset`: the classifier's examples (image + multi-hot labels).
- `ValDataset`: whole validation images with their masks, for evaluation.

Randomness is a pure function of (seed, epoch, index), so an example is the same
whatever the number of DataLoader workers or the order they are served in; call
``set_epoch(e)`` before each epoch. A DataLoader with ``persistent_workers=True`` keeps
the workers' copies of the dataset, so ``set_epoch`` there needs non-persistent workers.

All datasets are cheap to build (the manifest only) and open HDF5 lazily in each
process (`pipeline.shard_set`), so they are safe to build before DataLoader forks
and to pickle for the spawn start method. Do not call ``cv2.setNumThreads`` in a forked
worker (e.g. in ``worker_init_fn``): once the parent has used cv2's thread pool, that
call deadlocks most of the time (cv2 5.0, measured here); set it in the parent instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import UserError
from pipeline.imageio import decode_image, decode_label_png
from pipeline.shard_set import ByteLRU, ShardSet
from pipeline.shards import subset_classes
from pipeline.training_crop import CLASS_LUT, crop_image_chw, crop_target

# Per worker (CropDataset's sources; WeakDataset's images). A forked DataLoader worker's
# resident memory is this plus ~0.35 GiB it shares with its parent (torch, the crop
# tables) plus allocator slack: 0.83 GiB at 10,000 strong images
# (benchmarks/bench_loader.py), under the 1 GiB a worker may take; 512 MiB measured
# 0.95 GiB at 2,000. Past the cache, train-seg's windowed order decodes each source once
# per window whatever the budget: a smaller one only narrows the windows.
IMAGE_CACHE_BYTES = 384 << 20
SOURCES = ("weak", "strong", "val")
CROP_TARGETS = ("binary", "classes")  # CropDataset: figure/ground of P, or class labels


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one example in one epoch."""
    return np.random.default_rng((seed, epoch, index))


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # Area averaging when shrinking, close to an antialiased resize (MATLAB's imresize,
    # PIL); plain bilinear would alias. Bilinear when enlarging, where area is blocky.
    shrink = width <= image.shape[1] and height <= image.shape[0]
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad at bottom/right to a max(H, W) square (HxW or HxWxC)."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    padded = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    padded[:h, :w] = image
    return padded


def pad_to_square_and_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The reference's network input: zero-pad at bottom/right to a square, resize to size.

    Works on HxW or HxWxC arrays. A prediction on the result maps back to the image by
    resizing to the padded square (max(H, W)) and keeping the top-left H x W.
    """
    return _resize(pad_to_square(image), size, size)


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop, torchvision's RandomResizedCrop rule."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback after 10 misses (very elongated images): the central crop at the
    # nearest allowed aspect ratio.
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class _ShardDataset(Dataset):
    """What every reader shares: the shard set, classes, the epoch, image decoding."""

    def __init__(
        self,
        prepared_dir: str | Path,
        kind: str,
        count_key: str,
        preload: tuple[str, ...],
        cache_bytes: int = 0,
    ) -> None:
        self.shards = ShardSet(prepared_dir, kind, count_key, preload)
        # Decoded source images, per process (each DataLoader worker fills its own).
        self.image_cache = ByteLRU(cache_bytes)
        if len(self.shards) == 0:
            raise UserError(
                f"{self.shards.root}: the manifest lists no {kind} {count_key}; "
                f"was `ddn prepare` run with a {kind} split?"
            )
        self.classes = self.shards.classes
        self.num_classes = len(self.classes) - 1
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _index(self, index: int) -> int:
        return index + len(self) if index < 0 else index

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers fill their own cache; pickling ours would copy up to its budget.
        state = self.__dict__.copy()
        state["image_cache"] = ByteLRU(self.image_cache.max_bytes)
        return state

    def _source(self, shard: int, row: int) -> tuple[np.ndarray, ...]:
        """`_load_source` of an image row, through this process's cache."""
        hit = self.image_cache.get((shard, row))
        if hit is not None:
            return hit
        value = self._load_source(shard, row)
        self.image_cache.put((shard, row), value)
        return value

    def _load_source(self, shard: int, row: int) -> tuple[np.ndarray, ...]:
        """What a reader keeps of one decoded image row (the arrays its examples start from)."""
        raise NotImplementedError

    def _decode(self, shard: int, row: int, mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
        f = self.shards.file(shard)
        where = f"{self.shards.files[shard]} (image row {row})"
        image = decode_image(f["images"][row].tobytes(), where)
        if not mask:
            return image, None
        labels = decode_label_png(f["masks"][row])
        if labels.shape != image.shape[:2]:
            raise UserError(f"{where}: stored mask size differs from its image")
        return image, labels


class CropDataset(_ShardDataset):
    """Segmenter training examples: one per crop-table row of the strong shards.

    Item: ``image`` uint8 (3, crop, crop), ``target`` uint8 (crop, crop) with 1 for
    classes in P, 0 for other classes and background, 255 ignore (also outside the
    source image), ``subset`` float32 (C,) multi-hot of P, ``index``. With
    ``target="classes"`` (the DeconvNet baseline) the target is the crop's label map
    itself: class k is k, 0 background, 255 ignore, whatever P is.

    Each worker decodes a source image once and keeps it in an LRU cache of
    ``cache_bytes`` (RGBA image + label map, ~0.9 MB for 500x375; the default 384 MiB
    holds ~420 such images): the ~200 crops of an image then cost a warp each, not a
    decode. With a shuffled crop table the hit rate is about cache size / strong set
    size, which is why train-seg windows its crop order by source image when the set
    outgrows the cache (`ddn.train.strong.crop_order`): then nearly every crop is a hit
    whatever the set size.
    """

    def __init__(
        self,
        prepared_dir: str | Path,
        warp_size: int = 350,
        crop_size: int = 320,
        flip: bool = True,
        seed: int = 0,
        cache_bytes: int = IMAGE_CACHE_BYTES,
        target: str = "binary",
    ) -> None:
        if not 0 < crop_size <= warp_size:
            raise UserError(f"crop size {crop_size} must be in 1..warp size {warp_size}")
        if target not in CROP_TARGETS:
            raise UserError(f"unknown crop target {target!r}; expected one of {CROP_TARGETS}")
        preload = ("crop_image", "crop_subset", "crop_box", "labels")
        super().__init__(prepared_dir, "strong", "crops", preload, cache_bytes)
        self.warp_size, self.crop_size, self.flip, self.seed = warp_size, crop_size, flip, seed
        self.target = target

    def source_images(self) -> np.ndarray:
        """For every crop, the number of its source image in the whole strong set."""
        parts, offset = [], 0
        for shard in range(len(self.shards.files)):
            rows = self.shards.columns(shard)["crop_image"].astype(np.int64)
            parts.append(rows + offset)
            offset += len(self.shards.columns(shard)["labels"])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def source_bytes(self) -> int:
        """What caching every decoded source takes (RGBA image + label map per image)."""
        return sum(
            int((self.shards.file(s)["image_shapes"][()].astype(np.int64).prod(1) * 5).sum())
            for s in range(len(self.shards.files))
        )

    def crop_params(self, index: int) -> tuple[int, int, bool]:
        """(top, left, flip) of example ``index`` in the current epoch."""
        rng = example_rng(self.seed, self.epoch, self._index(index))
        # Two scalar draws give the numbers one draw of size 2 gives (the 32-bit buffer
        # lives in the bit generator) at a fifth of its cost: ~30 us, 3% of an example.
        top = int(rng.integers(0, self.warp_size - self.crop_size + 1))
        left = int(rng.integers(0, self.warp_size - self.crop_size + 1))
        flip = bool(rng.random() < 0.5)  # drawn even when flip is off: same crops either way
        return top, left, flip and self.flip

    def _load_source(self, shard: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self._decode(shard, row, mask=True)
        # Kept as RGBA: cv2's 4-channel bilinear warp is vectorised and about twice as
        # fast as the 3-channel one, with bit-identical colour channels.
        return cv2.cvtColor(image, cv2.COLOR_RGB2RGBA), labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        shard, row = self.shards.locate(index)
        cols = self.shards.columns(shard)
        image_row = int(cols["crop_image"][row])
        labels_row, bitmask = cols["labels"][image_row], int(cols["crop_subset"][row])
        box = cols["crop_box"][row].tolist()
        rgba, labels = self._source(shard, image_row)
        top, left, flip = self.crop_params(index)
        window = (self.warp_size, top, left, self.crop_size, flip)
        subset = subset_classes(labels_row, bitmask)
        lut = CLASS_LUT if self.target == "classes" else None
        multi_hot = np.zeros(self.num_classes, np.float32)
        multi_hot[[c - 1 for c in subset]] = 1  # = subset_multi_hot, without a second pass
        return {
            "image": torch.from_numpy(crop_image_chw(rgba, box, *window)),
            "target": torch.from_numpy(crop_target(labels, box, subset, *window, lut=lut)),
            "subset": torch.from_numpy(multi_hot),
            "index": index,
        }


class WeakDataset(_ShardDataset):
    """Classifier examples: ``image`` uint8 (3, size, size), ``labels`` float32 (C,).

    Training: a random resized crop (scale 0.5-1, aspect 3/4-4/3) and a random flip, of
    the image zero-padded to a square (``pad_square``, as `pad_to_square_and_resize`
    gives it at inference, so the classifier learns the padded view it is tested on) or
    of the image itself. Evaluation (``train=False``): `pad_to_square_and_resize`, the
    reference's inference input. ``source`` picks the shards: 'weak', 'strong' or 'val'
    (classifier validation).

    Each process keeps the images it decoded (padded; for evaluation, padded and resized)
    in an LRU cache of ``cache_bytes`` (0 turns it off): a weak set that fits is decoded
    once per worker, not once per epoch.
    """

    def __init__(
        self,
        prepared_dir: str | Path,
        size: int = 320,
        train: bool = True,
        seed: int = 0,
        source: str = "weak",
        pad_square: bool = True,
        cache_bytes: int = IMAGE_CACHE_BYTES,
    ) -> None:
        if source not in SOURCES:
            raise UserError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
        if size < 1:
            raise UserError(f"image size must be positive, got {size}")
        super().__init__(prepared_dir, source, "images", ("labels",), cache_bytes)
        self.size, self.train, self.seed = size, train, seed
        self.pad_square = pad_square

    def label_counts(self) -> np.ndarray:
        """(C,) number of images that hold each class."""
        counts = np.zeros(self.num_classes, np.int64)
        for shard in range(len(self.shards.files)):
            counts += self.shards.columns(shard)["labels"].sum(0, dtype=np.int64)
        return counts

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        shard, row = self.shards.locate(index)
        (image,) = self._source(shard, row)
        if self.train:
            rng = example_rng(self.seed, self.epoch, index)
            top, left, h, w = random_resized_crop_box(rng, *image.shape[:2])
            image = _resize(image[top : top + h, left : left + w], self.size, self.size)
            if rng.random() < 0.5:
                image = image[:, ::-1]
        labels = self.shards.columns(shard)["labels"][row].astype(np.float32)
        return {"image": _to_chw(image), "labels": torch.from_numpy(labels), "index": index}

    def _load_source(self, shard: int, row: int) -> tuple[np.ndarray]:
        """The decoded image as every example of it starts: padded to a square (training
        with ``pad_square``), or padded and resized (evaluation, the whole example).
        Cached (`_source`): at small sizes decoding is most of an example's cost, and the
        main process's compute slows by more than the decode when workers share its cores."""
        image, _ = self._decode(shard, row, mask=False)
        if not self.train:
            return (pad_to_square_and_resize(image, self.size),)
        return (pad_to_square(image) if self.pad_square else image,)


class ValDataset(_ShardDataset):
    """Validation images at their original size, for evaluation.

    Item: ``id`` str, ``image`` uint8 HxWx3 numpy (RGB), ``mask`` uint8 HxW numpy
    (0 background, k class k, 255 ignore), ``labels`` float32 (C,) numpy, ``index``.
    Sizes differ between items: iterate directly or use ``batch_size=None``.
    """

    def __init__(self, prepared_dir: str | Path, source: str = "val") -> None:
        # 'strong' (the segmenter's own training images) measures the fit.
        if source not in ("val", "strong"):
            raise UserError(f"unknown split {source!r}; expected val or strong (shards with masks)")
        super().__init__(prepared_dir, source, "images", ("labels",))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        shard, row = self.shards.locate(index)
        image, mask = self._decode(shard, row, mask=True)
        image_id = self.shards.file(shard)["image_ids"][row]
        return {
            "id": image_id.decode() if isinstance(image_id, bytes) else str(image_id),
            "image": image,
            "mask": mask,
            "labels": self.shards.columns(shard)["labels"][row].astype(np.float32),
            "index": index,
        }
