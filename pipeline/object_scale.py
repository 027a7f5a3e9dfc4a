"""How large the objects are in what the segmenter trains on, and in what it is tested on.

Both figures are the share of the network's input that the foreground covers:

- a training crop: the pixels of its subset P inside its box / the box's area (the box
  is warped to the input square);
- a val image at inference: for each object class present, its pixels / S^2, where S =
  max(H, W) is the padded square that is resized to the input.

When most training crops show objects at 30-60% of the input and the val objects cover
5%, the segmenter is tested at a scale it never learned (`ddn inspect --json` prints both
so the mismatch is visible). Crops and val images are sampled (seeded) to keep
``inspect`` fast on large sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.combinatorial import box_counts, summed_area_table
from pipeline.imageio import decode_label_png
from pipeline.shard_set import ShardSet
from pipeline.shards import ORIGIN_PROPOSAL, ORIGIN_RANDOM, ORIGIN_WHOLE, subset_classes

SAMPLE = 2000  # crops (and val images) measured at most
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
ORIGINS = {ORIGIN_PROPOSAL: "proposal", ORIGIN_RANDOM: "random", ORIGIN_WHOLE: "whole_image"}
SMALL = 0.05  # "small": under 5% of the network input


def describe(shares: np.ndarray) -> dict[str, Any]:
    """Count, mean, quantiles and the share of small values of ``shares`` (0..1)."""
    if len(shares) == 0:
        return {"count": 0}
    q = np.quantile(shares, QUANTILES)
    return {
        "count": int(len(shares)),
        "mean": round(float(shares.mean()), 4),
        **{
            f"p{int(round(100 * k))}": round(float(v), 4) for k, v in zip(QUANTILES, q, strict=True)
        },
        "below_5pct": round(float((shares < SMALL).mean()), 4),
    }


def training_crop_shares(
    prepared: Path, sample: int = SAMPLE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground share of a seeded sample of training crops, and each crop's origin."""
    shards = ShardSet(prepared, "strong", "crops", ("crop_image", "crop_subset", "crop_box",
                                                    "crop_origin", "labels"))  # fmt: skip
    n = len(shards)
    if n == 0:
        return np.zeros(0), np.zeros(0, np.uint8)
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    shares, origins = [], []
    maps: dict[tuple[int, int], np.ndarray] = {}  # (shard, image row) -> label map
    sats: dict[tuple[int, int, int], np.ndarray] = {}  # ... + subset -> its summed areas
    for index in picks.tolist():
        shard, row = shards.locate(index)
        cols = shards.columns(shard)
        image_row, bits = int(cols["crop_image"][row]), int(cols["crop_subset"][row])
        if (shard, image_row) not in maps:
            maps[shard, image_row] = decode_label_png(shards.file(shard)["masks"][image_row])
        if (shard, image_row, bits) not in sats:
            subset = subset_classes(cols["labels"][image_row], bits)
            fg = np.isin(maps[shard, image_row], subset)
            sats[shard, image_row, bits] = summed_area_table(fg)
        box = cols["crop_box"][row].astype(np.float64)
        inside = box_counts(sats[shard, image_row, bits], box[None])[0]
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
        shares.append(inside / area)
        origins.append(int(cols["crop_origin"][row]))
    return np.asarray(shares), np.asarray(origins, np.uint8)


def val_object_shares(prepared: Path, sample: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """Each object class's share of its val image's padded square (one value per class
    present in an image), over a seeded sample of val images."""
    shards = ShardSet(prepared, "val", "images")
    n = len(shards)
    if n == 0:
        return np.zeros(0)
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    shares = []
    for index in picks.tolist():
        shard, row = shards.locate(index)
        labels = decode_label_png(shards.file(shard)["masks"][row])
        side = max(labels.shape)
        values, counts = np.unique(labels, return_counts=True)
        shares += [c / side**2 for v, c in zip(values, counts, strict=True) if v not in (0, 255)]
    return np.asarray(shares, np.float64)


def object_scale(prepared: Path, sample: int = SAMPLE, seed: int = 0) -> dict[str, Any]:
    """The ``object_scale`` entry of `ddn inspect --json`."""
    shares, origins = training_crop_shares(prepared, sample, seed)
    by_origin = {
        name: describe(shares[origins == code])
        for code, name in ORIGINS.items()
        if (origins == code).any()
    }
    return {
        "training_crops": {**describe(shares), "by_origin": by_origin},
        "val_objects": describe(val_object_shares(prepared, sample, seed)),
    }


def format_object_scale(scale: dict[str, Any]) -> list[str]:
    """Two summary lines for `ddn inspect`'s text output."""

    def part(d: dict[str, Any]) -> str:
        if not d.get("count"):
            return "none"
        return (
            f"median {100 * d['p50']:.1f}% of the input (10-90%: {100 * d['p10']:.1f}-"
            f"{100 * d['p90']:.1f}%), {100 * d['below_5pct']:.0f}% under 5%"
        )

    return [
        f"  object share   training crops: {part(scale['training_crops'])}",
        f"                 val objects:    {part(scale['val_objects'])}",
    ]
