"""Training-crop throughput on one core: `CropDataset` vs a naive per-file loader.

The naive loader is what a per-file VOC dataset class does (torchvision's
VOCSegmentation): for every example it opens and decodes the JPEG and the PNG with PIL,
cuts the box and resizes it to the warp size, then random-crops and flips. CropDataset
reads the same examples from a prepared directory's shards, decoding each source image
once per worker. Both yield the same item (uint8 3xSxS image, 0/1/255 target, subset),
in the same order: train-seg's (a shuffled crop table, i.e. random access across
images; windowed by source image when the sources outgrow the reader's cache).

    python benchmarks/bench_loader.py                 # synthetic 500x375 images
    python benchmarks/bench_loader.py --source photos # ../shared's real VOC-layout photos
    python benchmarks/bench_loader.py --data DIR      # an existing prepared directory

The last line is a JSON summary; the exit code is 1 when the speed-up is below --target.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddn.train.distributed import DistInfo, IndexStream  # noqa: E402
from ddn.train.strong import crop_order  # noqa: E402
from pipeline.imageio import classes_in, encode_label_png  # noqa: E402
from pipeline.manifest import read_manifest, shard_paths, write_manifest  # noqa: E402
from pipeline.readers import CropDataset  # noqa: E402
from pipeline.shards import (  # noqa: E402
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


# ---------------------------------------------------------------- the naive loader


class NaiveCropDataset:
    """Per-example file decoding, PIL throughout, as a per-file dataset class does it."""

    def __init__(self, files: list[tuple[Path, Path]], crops: list[tuple], num_classes: int,
                 warp_size: int = 350, crop_size: int = 320, seed: int = 0) -> None:  # fmt: skip
        self.files, self.crops, self.num_classes = files, crops, num_classes
        self.warp_size, self.crop_size, self.seed = warp_size, crop_size, seed

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> dict:
        image_index, subset, box = self.crops[index]
        jpg, png = self.files[image_index]
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


# ---------------------------------------------------------------- benchmark data


def source_images(kind: str, n: int, seed: int) -> tuple[list[str], list[tuple[bytes, np.ndarray]]]:
    """Classes and n (JPEG bytes, label map) pairs of about 500x375."""
    if kind == "photos":
        if not VOC_PHOTOS.is_dir():
            sys.exit(f"error: {VOC_PHOTOS}: not found; use --source synth")
        # VOC-sized ones (longest side 500): about half the horse photos are much smaller.
        jpgs = sorted((VOC_PHOTOS / "JPEGImages").glob("*.jpg"))
        jpgs = [j for j in jpgs if max(Image.open(j).size) == 500][:n]
        pngs = [VOC_PHOTOS / "SegmentationClass" / f"{p.stem}.png" for p in jpgs]
        pairs = zip(jpgs, pngs, strict=True)
        return VOC_CLASSES, [(j.read_bytes(), np.array(Image.open(p))) for j, p in pairs]
    from pipeline.synth import VOC_CLASSES as SYNTH_CLASSES
    from pipeline.synth import render

    out = []
    for i in range(n):
        ex = render(seed, i, classes=5, size=500)  # square; cut to VOC's usual 500x375
        ok, jpg = cv2.imencode(".jpg", ex.image[:375, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        labels = ex.labels[:375]
        if not classes_in(labels):  # the object fell in the cut-off band: keep the square
            ok, jpg = cv2.imencode(".jpg", ex.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            labels = ex.labels
        out.append((jpg.tobytes(), labels))
    return ["background", *SYNTH_CLASSES[:5]], out


def boxes_around(rng: np.random.Generator, labels: np.ndarray, classes: list[int], n: int):
    """Boxes enclosing the subset's foreground, grown by random margins, like proposals."""
    ys, xs = np.nonzero(np.isin(labels, classes))
    h, w = labels.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    grow = rng.uniform(0, 0.5, size=(n, 4)) * np.array([x0 + 20, y0 + 20, w - x1 + 20, h - y1 + 20])
    return np.stack([x0 - grow[:, 0], y0 - grow[:, 1], x1 + grow[:, 2], y1 + grow[:, 3]], 1)


def build_prepared(out: Path, kind: str, images: int, crops_per_image: int, seed: int) -> None:
    """A prepared directory (4 strong shards) written with the shard writer directly."""
    classes, pairs = source_images(kind, images, seed)
    rng = np.random.default_rng(seed)
    entries = []
    for shard, part in enumerate(np.array_split(np.arange(len(pairs)), 4)):
        block, tables = ShardImages(), []
        for row, i in enumerate(part):
            jpg, labels = pairs[i]
            present = classes_in(labels)
            multi_hot = np.zeros(len(classes) - 1, np.uint8)
            multi_hot[[c - 1 for c in present]] = 1
            block.ids.append(f"img{i:04d}")
            block.encoded.append(jpg)
            block.shapes.append(labels.shape)
            block.labels.append(multi_hot)
            block.masks.append(encode_label_png(labels))
            subsets = range(1, 2 ** len(present))
            per_subset = -(-crops_per_image // len(subsets))
            for bitmask in subsets:
                boxes = boxes_around(rng, labels, subset_classes(multi_hot, bitmask), per_subset)
                m = len(boxes)
                table = CropTable(np.full(m, row, np.int32), np.full(m, bitmask, np.uint64),
                                  boxes.astype(np.float32), np.zeros(m, np.uint8))  # fmt: skip
                tables.append(table)
        path = out / shard_name("strong", shard)
        entry = write_shard(
            path, "strong", shard, classes, "bench", block, CropTable.concat(tables)
        )
        entries.append(entry)
    write_manifest(out, {"format_version": FORMAT_VERSION, "classes": classes, "shards": entries,
                         "complete": True, "config_hash": "bench"})  # fmt: skip


def export_files(prepared: Path, out: Path) -> tuple[list[tuple[Path, Path]], list[tuple], int]:
    """The strong images as per-file JPEG + PNG and the crop table over them, for the
    naive loader: the same examples, in CropDataset's global order."""
    manifest = read_manifest(prepared)
    files, crops = [], []
    for path in shard_paths(prepared, manifest, "strong"):
        with h5py.File(path, "r") as f:
            base = len(files)
            for row, image_id in enumerate(f["image_ids"].asstr()[()]):
                jpg, png = out / f"{image_id}.jpg", out / f"{image_id}.png"
                jpg.write_bytes(f["images"][row].tobytes())
                png.write_bytes(f["masks"][row].tobytes())
                files.append((jpg, png))
            labels = f["labels"][()]
            table = zip(f["crop_image"][()], f["crop_subset"][()], f["crop_box"][()], strict=True)
            for row, bitmask, box in table:
                subset = subset_classes(labels[row], int(bitmask))
                crops.append((base + int(row), subset, [float(v) for v in box]))
    return files, crops, len(manifest["classes"]) - 1


# ---------------------------------------------------------------- measuring


def throughput(datasets: list, orders: list[np.ndarray], rounds: int = 8) -> list[float]:
    """Examples/s of each dataset over its order, timed in interleaved slices so that
    a load change on a shared machine hits all of them alike."""
    seconds = [0.0] * len(datasets)
    for r in range(rounds):
        for k, (dataset, order) in enumerate(zip(datasets, orders, strict=True)):
            part = np.array_split(order, rounds)[r]
            start = time.perf_counter()
            for i in part:
                dataset[int(i)]
            seconds[k] += time.perf_counter() - start
    return [len(order) / s for order, s in zip(orders, seconds, strict=True)]


def crop_order_of(ours: CropDataset, order: str, seed: int) -> tuple[np.ndarray, str]:
    """The crop order train-seg would use (``auto``), or the one asked for."""
    groups, window = crop_order(ours, DistInfo())
    if order == "shuffled" or (order == "auto" and groups is None):
        return np.random.default_rng(seed).permutation(len(ours)), "shuffled"
    if groups is None:  # windowed asked for, but everything fits: one window per 64 images
        groups, window = ours.source_images(), 64
    stream = IndexStream(len(ours), seed, groups=groups, window=window)
    return stream.permutation(0), f"windowed ({window} images)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="an existing prepared directory")
    ap.add_argument("--source", choices=("synth", "photos"), default="synth")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--crops-per-image", type=int, default=200)
    ap.add_argument("--examples", type=int, default=0,
                    help="CropDataset examples to time (default: one epoch)")  # fmt: skip
    ap.add_argument("--naive-examples", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=5.0)
    ap.add_argument("--order", choices=("auto", "shuffled", "windowed"), default="auto",
                    help="auto: train-seg's (windowed beyond the cache)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        prepared = args.data
        if prepared is None:
            prepared = Path(tmp) / "prepared"
            prepared.mkdir()
            t = time.perf_counter()
            build_prepared(prepared, args.source, args.images, args.crops_per_image, args.seed)
            print(f"built {prepared} from {args.images} {args.source} images in "
                  f"{time.perf_counter() - t:.1f} s")  # fmt: skip
        (Path(tmp) / "files").mkdir()
        files, crops, num_classes = export_files(prepared, Path(tmp) / "files")
        ours = CropDataset(prepared, seed=args.seed)
        naive = NaiveCropDataset(files, crops, num_classes, seed=args.seed)
        shapes = {k: (v.shape, v.dtype) for k, v in ours[0].items() if torch.is_tensor(v)}
        assert shapes == {k: (v.shape, v.dtype) for k, v in naive[0].items() if torch.is_tensor(v)}
        ours = CropDataset(prepared, seed=args.seed)  # cold cache again

        order, how = crop_order_of(ours, args.order, args.seed)
        n = args.examples or len(order)
        pixels = sorted(Image.open(j).size for j, _ in files)
        print(f"{len(files)} images ({pixels[0][0]}x{pixels[0][1]} to {pixels[-1][0]}x"
              f"{pixels[-1][1]}), {len(ours)} crops in {how} order; one core")  # fmt: skip
        naive_order = order[: args.naive_examples]
        ours_eps, naive_eps = throughput([ours, naive], [np.resize(order, n), naive_order])
        cache = ours.image_cache
        print(f"CropDataset: {ours_eps:8.1f} examples/s over {n} examples "
              f"(image cache: {cache.misses} decodes, {cache.hits} hits, "
              f"{cache.bytes / 2**20:.0f} MiB)")  # fmt: skip
        print(f"naive:       {naive_eps:8.1f} examples/s over {len(naive_order)} examples "
              f"(PIL open + decode JPEG and PNG per example)")  # fmt: skip
    ratio = ours_eps / naive_eps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    print(f"peak resident memory of this process (both loaders, one worker's cache): "
          f"{rss:.2f} GiB")  # fmt: skip
    ok = ratio >= args.target
    print(f"speed-up {ratio:.2f}x (target {args.target}x): {'pass' if ok else 'FAIL'}")
    summary = {"crop_dataset_eps": round(ours_eps, 1), "naive_eps": round(naive_eps, 1),
               "ratio": round(ratio, 2), "target": args.target, "pass": ok, "order": how,
               "peak_rss_gib": round(rss, 2)}  # fmt: skip
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
