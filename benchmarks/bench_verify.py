"""What verifying shards before use costs (issue 11 item 1): seconds per GB, and the
start-up each command pays on a prepared directory the size of PASCAL VOC's `full`.

    python benchmarks/bench_verify.py [--scale 1.0] [--workdir DIR]

Builds (with the real shard writer) a directory of 10,582 weak + 10,582 strong + 1,449
val images, the counts of VOC 2012 train_aug / val, whose encoded images are real VOC
JPEGs from ../shared/data/voc_horses cycled (noise JPEGs at 500x375 without it); a
strong image gets 300 crop rows (200 boxes x 1.5 subsets). Then times
`pipeline.integrity.verify_shards` over what each command reads (train-cls: weak + val;
train-seg: strong; eval: val), with the page cache dropped for those files first
(posix_fadvise DONTNEED; "cold") and again with them cached ("warm"), against decoding
every weak image once (one epoch of train-cls's JPEG decoding, extrapolated from a
sample). Last line: JSON summary; exit 1 when verifying train-cls's shards cold costs
more than 25% of that one epoch of decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import VOC_HORSES  # noqa: E402
from pipeline import integrity  # noqa: E402
from pipeline.imageio import encode_label_png  # noqa: E402
from pipeline.manifest import write_manifest  # noqa: E402
from pipeline.shards import (  # noqa: E402
    FORMAT_VERSION,
    CropTable,
    ShardImages,
    shard_name,
    write_shard,
)

COUNTS = {"weak": 10_582, "strong": 10_582, "val": 1_449}
READS = {"train-cls": ("weak", "val"), "train-seg": ("strong",), "eval": ("val",)}
SHARD_SIZE = {"weak": 1000, "strong": 100, "val": 1000}  # prepare's defaults
CROPS_PER_IMAGE = 300
MAX_SHARE_OF_EPOCH = 0.25  # once per process, against a run of many epochs
CLASSES = ["background", "object"]


def payloads() -> list[bytes]:
    files = sorted(VOC_HORSES.rglob("*.jpg"))[:200]
    if files:
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(50):
        noise = cv2.GaussianBlur(rng.integers(0, 256, (375, 500, 3), np.uint8), (0, 0), 3)
        out.append(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def build(root: Path, scale: float, jpegs: list[bytes]) -> list[dict]:
    rng = np.random.default_rng(0)
    mask = encode_label_png(np.zeros((375, 500), np.uint8))
    entries, k = [], 0
    for kind, count in COUNTS.items():
        count = max(1, round(count * scale))
        for index, start in enumerate(range(0, count, SHARD_SIZE[kind])):
            n = min(SHARD_SIZE[kind], count - start)
            images = ShardImages()
            for _ in range(n):
                images.ids.append(f"{kind}{k}")
                images.encoded.append(jpegs[k % len(jpegs)])
                images.shapes.append((375, 500))
                images.labels.append(np.ones(1, np.uint8))
                if kind != "weak":
                    images.masks.append(mask)
                k += 1
            crops = None
            if kind == "strong":
                m = n * CROPS_PER_IMAGE
                crops = CropTable(
                    np.repeat(np.arange(n, dtype=np.int32), CROPS_PER_IMAGE),
                    np.ones(m, np.uint64),
                    rng.uniform(0, 375, (m, 4)).astype(np.float32),
                    np.zeros(m, np.uint8),
                )
            path = root / shard_name(kind, index)
            entries.append(write_shard(path, kind, index, CLASSES, "bench", images, crops))
    write_manifest(root, {"format_version": FORMAT_VERSION, "classes": CLASSES,
                          "shards": entries, "complete": True, "config_hash": "bench"})  # fmt: skip
    return entries


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_verify(root: Path, entries: list[dict], cold: bool) -> tuple[float, int]:
    integrity._VERIFIED.clear()  # a fresh process
    if cold:
        drop_cache([root / e["file"] for e in entries])
    t = time.perf_counter()
    n = integrity.verify_shards(root, entries)
    return time.perf_counter() - t, n


def decode_seconds_per_image(jpegs: list[bytes]) -> float:
    sample = jpegs[:100]
    t = time.perf_counter()
    for b in sample:
        cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    return (time.perf_counter() - t) / len(sample)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="Fraction of VOC's image counts.")
    ap.add_argument("--workdir", type=Path, default=None, help="Where to build (default: tmp).")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    jpegs = payloads()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        entries = build(root, args.scale, jpegs)
        build_s = time.perf_counter() - t
        total = sum(e["bytes"] for e in entries)
        print(f"built {len(entries)} shards, {total / 2**30:.2f} GiB in {build_s:.0f} s")
        rows = {}
        for command, kinds in READS.items():
            mine = [e for e in entries if e["kind"] in kinds]
            cold_s, n = timed_verify(root, mine, cold=True)
            warm_s, _ = timed_verify(root, mine, cold=False)
            rows[command] = {"gib": round(n / 2**30, 3), "cold_s": round(cold_s, 2),
                             "warm_s": round(warm_s, 2),
                             "cold_s_per_gib": round(cold_s / (n / 2**30), 2),
                             "warm_s_per_gib": round(warm_s / (n / 2**30), 2)}  # fmt: skip
            print(f"{command:10s} verifies {n / 2**30:6.2f} GiB: cold {cold_s:6.2f} s, "
                  f"warm {warm_s:6.2f} s")  # fmt: skip
        integrity.verify_shards(root, entries)
        t0 = time.perf_counter()
        again = integrity.verify_shards(root, entries)  # the same process: cached
        cached_s = time.perf_counter() - t0
    weak = max(1, round(COUNTS["weak"] * args.scale))
    epoch_s = decode_seconds_per_image(jpegs) * weak
    share = rows["train-cls"]["cold_s"] / epoch_s
    print(
        f"decoding the {weak} weak images once: {epoch_s:.1f} s (one core); verifying "
        f"train-cls's shards cold is {100 * share:.1f}% of it; a second verify in the same "
        f"process hashes {again} bytes ({cached_s:.3f} s)"
    )
    summary = {"scale": args.scale, "bytes": total, "avg_image_kib": round(
        np.mean([len(b) for b in jpegs]) / 1024, 1), "commands": rows,
        "epoch_decode_s": round(epoch_s, 1), "share_of_epoch": round(share, 4),
        "target_max_share": MAX_SHARE_OF_EPOCH}  # fmt: skip
    print(json.dumps(summary))
    return 0 if share <= MAX_SHARE_OF_EPOCH else 1


if __name__ == "__main__":
    sys.exit(main())
