"""bench_loader.py's inputs: a prepared directory of strong shards, and the naive loader.

Synthetic sources: rendering one 500x500 `pipeline.synth` image costs ~0.2 s (2,000 took
404 s), so only ``distinct`` images are rendered and encoded (JPEG + PNG), and source
record ``i`` stores the bytes of pool image ``i mod distinct``. Each record is still a
row of its own in the shards, with its own id and its own crop boxes (drawn per
record), and the readers key their caches by (shard, row): every record is fetched
and decoded on its own, as a distinct image would be. Only the pixel content repeats,
which neither loader can see or exploit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from PIL import Image

from pipeline.imageio import classes_in, encode_label_png
from pipeline.manifest import read_manifest, shard_paths, write_manifest
from pipeline.shards import (
    FORMAT_VERSION,
    CropTable,
    ShardImages,
    shard_name,
    subset_classes,
    write_shard,
)

VOC_PHOTOS = Path(__file__).resolve().parents[2] / "shared/data/voc_horses/VOCdevkit/VOC2012"
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor"]  # fmt: skip
SHARDS = 4


@dataclass(frozen=True)
class PoolImage:
    """One encoded source image with what building its crop rows needs."""

    jpg: bytes
    png: bytes
    shape: tuple[int, int]
    present: tuple[int, ...]  # object classes in it
    extents: dict[int, tuple[int, int, int, int]]  # subset bitmask -> (x0, y0, x1, y1)


def _pool_image(jpg: bytes, labels: np.ndarray) -> PoolImage:
    present = classes_in(labels)
    extents = {}
    for bitmask in range(1, 2 ** len(present)):
        chosen = [c for j, c in enumerate(present) if bitmask >> j & 1]
        ys, xs = np.nonzero(np.isin(labels, chosen))
        extents[bitmask] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return PoolImage(jpg, encode_label_png(labels), labels.shape, present, extents)


def source_pool(kind: str, n: int, seed: int) -> tuple[list[str], list[PoolImage]]:
    """Classes and ``n`` distinct encoded images of about 500x375."""
    if kind == "photos":
        if not VOC_PHOTOS.is_dir():
            sys.exit(f"error: {VOC_PHOTOS}: not found; use --source synth")
        # VOC-sized ones (longest side 500): about half the horse photos are much smaller.
        jpgs = sorted((VOC_PHOTOS / "JPEGImages").glob("*.jpg"))
        jpgs = [j for j in jpgs if max(Image.open(j).size) == 500][:n]
        pngs = [VOC_PHOTOS / "SegmentationClass" / f"{p.stem}.png" for p in jpgs]
        pairs = zip(jpgs, pngs, strict=True)
        return VOC_CLASSES, [_pool_image(j.read_bytes(), np.array(Image.open(p))) for j, p in pairs]
    from pipeline.synth import VOC_CLASSES as SYNTH_CLASSES
    from pipeline.synth import render

    pool = []
    for i in range(n):
        ex = render(seed, i, classes=5, size=500)  # square; cut to VOC's usual 500x375
        image, labels = ex.image[:375], ex.labels[:375]
        if not classes_in(labels):  # the object fell in the cut-off band: keep the square
            image, labels = ex.image, ex.labels
        ok, jpg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        pool.append(_pool_image(jpg.tobytes(), labels))
    return ["background", *SYNTH_CLASSES[:5]], pool


def boxes_around(rng: np.random.Generator, extent: tuple, shape: tuple, n: int) -> np.ndarray:
    """Boxes enclosing a subset's foreground extent, grown by random margins, like proposals."""
    x0, y0, x1, y1 = extent
    h, w = shape
    grow = rng.uniform(0, 0.5, size=(n, 4)) * np.array([x0 + 20, y0 + 20, w - x1 + 20, h - y1 + 20])
    return np.stack([x0 - grow[:, 0], y0 - grow[:, 1], x1 + grow[:, 2], y1 + grow[:, 3]], 1)


def build_prepared(
    out: Path, kind: str, images: int, crops_per_image: int, seed: int, distinct: int
) -> None:
    """A prepared directory of ``images`` strong records in 4 shards, written with the shard
    writer directly; records reuse a pool of ``distinct`` encoded images (module doc)."""
    classes, pool = source_pool(kind, min(images, distinct), seed)
    rng = np.random.default_rng(seed)
    entries = []
    for shard, part in enumerate(np.array_split(np.arange(images), SHARDS)):
        block, tables = ShardImages(), []
        for row, i in enumerate(part.tolist()):
            src = pool[i % len(pool)]
            multi_hot = np.zeros(len(classes) - 1, np.uint8)
            multi_hot[[c - 1 for c in src.present]] = 1
            block.ids.append(f"img{i:05d}")
            block.encoded.append(src.jpg)
            block.shapes.append(src.shape)
            block.labels.append(multi_hot)
            block.masks.append(src.png)
            per_subset = -(-crops_per_image // len(src.extents))
            for bitmask, extent in src.extents.items():
                boxes = boxes_around(rng, extent, src.shape, per_subset)
                m = len(boxes)
                table = CropTable(np.full(m, row, np.int32), np.full(m, bitmask, np.uint64),
                                  boxes.astype(np.float32), np.zeros(m, np.uint8))  # fmt: skip
                tables.append(table)
        path = out / shard_name("strong", shard)
        entry = write_shard(
            path, "strong", shard, classes, "bench", block, CropTable.concat(tables)
        )
        entries.append(entry)
        print(f"  shard {shard + 1}/{SHARDS}: {len(part)} images", flush=True)
    write_manifest(out, {"format_version": FORMAT_VERSION, "classes": classes, "shards": entries,
                         "complete": True, "config_hash": "bench"})  # fmt: skip


# ---------------------------------------------------------------- the naive loader


class NaiveCropDataset:
    """Per-example file decoding, PIL throughout, as a per-file dataset class does it.

    ``examples`` maps a crop index to (JPEG path, PNG path, subset, box): only the
    examples a benchmark times, so that its table stays small at any data size.
    """

    def __init__(self, examples: dict[int, tuple[Path, Path, list[int], list[float]]],
                 num_classes: int, warp_size: int = 350, crop_size: int = 320,
                 seed: int = 0) -> None:  # fmt: skip
        self.examples, self.num_classes = examples, num_classes
        self.warp_size, self.crop_size, self.seed = warp_size, crop_size, seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        jpg, png, subset, box = self.examples[index]
        image = Image.open(jpg).convert("RGB")
        mask = Image.open(png)
        s = self.warp_size
        # The cheapest PIL idiom for each: crop (pads with 0 past the image) + resize for
        # the image; for the mask an EXTENT transform, whose fill can be 255 (ignore).
        image = image.crop(tuple(round(v) for v in box)).resize((s, s), Image.BILINEAR)
        mask = mask.transform((s, s), Image.EXTENT, tuple(box), Image.NEAREST, fillcolor=255)
        rng = np.random.default_rng((self.seed, 0, index))
        top, left = rng.integers(0, s - self.crop_size + 1, 2)
        cut = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        image, mask = np.asarray(image)[cut], np.asarray(mask)[cut]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        lut = np.zeros(256, np.uint8)
        lut[list(subset)] = 1
        lut[255] = 255
        multi_hot = np.zeros(self.num_classes, np.float32)
        multi_hot[[c - 1 for c in subset]] = 1
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "target": torch.from_numpy(lut[mask]),
            "subset": torch.from_numpy(multi_hot),
            "index": index,
        }


def naive_dataset(prepared: Path, out: Path, indices: np.ndarray, seed: int) -> NaiveCropDataset:
    """The naive loader over crop ``indices`` of the prepared directory (in CropDataset's
    global numbering): their source images exported as per-file JPEG + PNG into ``out``."""
    manifest = read_manifest(prepared)
    wanted, examples, base = np.unique(indices), {}, 0
    for path in shard_paths(prepared, manifest, "strong"):
        with h5py.File(path, "r") as f:
            rows = len(f["crop_image"])
            mine = wanted[(wanted >= base) & (wanted < base + rows)]
            image_ids, labels = f["image_ids"].asstr(), f["labels"]
            for index in mine.tolist():
                row = int(f["crop_image"][index - base])
                jpg, png = out / f"{image_ids[row]}.jpg", out / f"{image_ids[row]}.png"
                if not jpg.exists():
                    jpg.write_bytes(f["images"][row].tobytes())
                    png.write_bytes(f["masks"][row].tobytes())
                subset = subset_classes(labels[row], int(f["crop_subset"][index - base]))
                examples[index] = (jpg, png, subset, f["crop_box"][index - base].tolist())
            base += rows
    return NaiveCropDataset(examples, len(manifest["classes"]) - 1, seed=seed)
