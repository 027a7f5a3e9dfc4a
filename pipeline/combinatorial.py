"""Combinatorial cropping (paper, Sec. 4.2): many training examples from few masks.

For a strong image with label set L*, every non-empty subset P of L* is a separate
figure/ground problem (pixels of classes in P are foreground). For each P we keep
``n`` (the paper's N_p = 200) boxes that *enclose* P's foreground: region proposals
first, best-scored first, then random boxes around the foreground.

"Enclose" here: a box encloses P when at least ``enclose`` (default 0.95) of P's
foreground pixels lie inside it. A pixel (r, c) is inside box (x0, y0, x1, y1) when its
centre is: x0 <= c + 0.5 < x1 and y0 <= r + 0.5 < y1. Ignore pixels (255) are never
foreground. Counting uses a summed-area table, so thousands of proposals per subset
cost a few array lookups each.

Subsets are bitmasks over the image's sorted label tuple (bit j <=> labels[j]), the
``crop_subset`` encoding of :mod:`pipeline.shards`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.shards import ORIGIN_PROPOSAL, ORIGIN_RANDOM, CropTable

MAX_LABELS = 63  # bitmasks are stored as uint64
# Up to this many labels the non-singleton, non-full subsets are enumerated and sampled
# exactly; above it (65,536 subsets) they are drawn by rejection sampling.
_ENUMERATE_UP_TO = 16


def label_subsets(
    labels: Sequence[int], max_subsets: int | None, rng: np.random.Generator | None
) -> list[int]:
    """Bitmasks of the non-empty subsets P of ``labels`` (sorted ascending classes).

    Uncapped (``max_subsets`` None or >= 2^|L| - 1): all of them, in increasing order.
    Capped at M: every singleton, then the full set, then a seeded uniform sample of
    the other subsets (in increasing order) up to M in all. Singletons and the full set
    are always kept, so when M < |L| + 1 the result has |L| + 1 subsets, more than M;
    the caller records the cap in the manifest. ``rng`` is only drawn from when capping.
    """
    labels = tuple(int(c) for c in labels)
    k = len(labels)
    if k > MAX_LABELS:
        raise ValueError(f"an image has {k} labels; subsets are uint64 bitmasks (max 63)")
    if any(a >= b for a, b in zip(labels, labels[1:], strict=False)):
        raise ValueError(f"labels must be strictly increasing, got {labels}")
    if k == 0:
        return []
    total = (1 << k) - 1
    if max_subsets is None or total <= max_subsets:
        return list(range(1, total + 1))
    singletons = [1 << j for j in range(k)]
    wanted = max_subsets - k - 1
    if wanted <= 0:
        return singletons + [total]
    if rng is None:
        raise ValueError("capping the subsets needs a random generator")
    return singletons + [total] + _sample_other_subsets(k, wanted, rng)


def _sample_other_subsets(k: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct subsets of size 2..k-1, uniformly, sorted ascending."""
    if k <= _ENUMERATE_UP_TO:
        all_masks = np.arange(1, 1 << k, dtype=np.int64)
        sizes = np.zeros_like(all_masks)
        for j in range(k):
            sizes += (all_masks >> j) & 1
        others = all_masks[(sizes >= 2) & (sizes < k)]
        return sorted(int(m) for m in rng.choice(others, size=count, replace=False))
    # 2^k is astronomically larger than any sensible cap: random bit patterns rarely
    # collide or hit a singleton/the full set, so rejection sampling ends quickly.
    chosen: set[int] = set()
    weights = 1 << np.arange(k, dtype=np.uint64)
    while len(chosen) < count:
        bits = rng.random((2 * (count - len(chosen)), k)) < 0.5
        for row in bits:
            size = int(row.sum())
            if 2 <= size < k:
                chosen.add(int((row.astype(np.uint64) * weights).sum()))
            if len(chosen) == count:
                break
    return sorted(chosen)


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """(H+1, W+1) int64 table: ``sat[y, x]`` = number of set pixels in rows < y, cols < x."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    return sat


def box_counts(sat: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Set pixels whose centre lies inside each box (N,) int64; boxes clipped to the image."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    # Pixel c is inside [x0, x1) when x0 <= c + 0.5 < x1, i.e. c in [ceil(x0-.5), ceil(x1-.5)).
    idx = np.ceil(b - 0.5).astype(np.int64)
    x0, x1 = np.clip(idx[:, 0], 0, w), np.clip(idx[:, 2], 0, w)
    y0, y1 = np.clip(idx[:, 1], 0, h), np.clip(idx[:, 3], 0, h)
    x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


def tight_box(mask: np.ndarray) -> np.ndarray | None:
    """x0, y0, x1, y1 (exclusive) of the set pixels, float64, or None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def select_boxes(
    fg_mask: np.ndarray,
    proposals: np.ndarray,
    scores: np.ndarray,
    n: int,
    enclose: float,
    rng: np.random.Generator,
    max_margin: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct boxes enclosing the foreground of ``fg_mask`` (HxW bool).

    Returns boxes (k,4) float32 and origin (k,) uint8; k == n, or 0 for an empty mask.
    """
    fg = np.asarray(fg_mask, dtype=bool)
    total = int(fg.sum())
    counts = box_counts(summed_area_table(fg), proposals) if total else np.zeros(0, np.int64)
    return _choose(counts, total, tight_box(fg), proposals, scores, n, enclose, rng, max_margin)


def _choose(
    counts: np.ndarray,
    total: int,
    bbox: np.ndarray | None,
    proposals: np.ndarray,
    scores: np.ndarray,
    n: int,
    enclose: float,
    rng: np.random.Generator,
    max_margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """select_boxes given each proposal's foreground count (shared with image_crops)."""
    if total == 0 or n <= 0 or bbox is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.uint8)
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    # The tolerance keeps e.g. 19/20 at enclose=0.95 despite float rounding.
    ok = np.flatnonzero(counts >= enclose * total - 1e-9)
    order = ok[np.argsort(-np.asarray(scores)[ok], kind="stable")]
    taken = _first_unique(proposals[order], limit=n)
    boxes = proposals[order][taken]
    seen = {tuple(r) for r in np.rint(boxes).astype(np.int64).tolist()}
    randoms = _random_boxes(bbox, n - len(boxes), seen, rng, max_margin)
    origin = np.r_[
        np.full(len(boxes), ORIGIN_PROPOSAL, np.uint8), np.full(len(randoms), ORIGIN_RANDOM)
    ].astype(np.uint8)
    return np.concatenate([boxes, randoms]).astype(np.float32), origin


def _first_unique(boxes: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first occurrence of each integer-rounded box, in order, at most limit."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    _, first = np.unique(np.rint(boxes).astype(np.int64), axis=0, return_index=True)
    return np.sort(first)[:limit]


def _random_boxes(
    bbox: np.ndarray,
    count: int,
    seen: set[tuple[int, ...]],
    rng: np.random.Generator,
    max_margin: float,
) -> np.ndarray:
    """``count`` boxes = bbox grown by uniform random margins, distinct after rounding.

    Each side moves out by U[0, max_margin x the bbox side]; such a box contains all of
    the foreground. For a tiny foreground, rounding collapses the few possible boxes:
    whenever most of a batch are repeats, the margin scale doubles (to at least 1 px).
    """
    out: list[np.ndarray] = []
    side = np.array([bbox[2] - bbox[0], bbox[3] - bbox[1]], dtype=np.float64)
    scale = np.tile(max_margin * side, 2)
    sign = np.array([-1.0, -1.0, 1.0, 1.0])
    while count > 0:
        batch = max(2 * count, 8)
        cand = bbox + sign * rng.random((batch, 4)) * scale
        added = 0
        for row, key in zip(cand, np.rint(cand).astype(np.int64).tolist(), strict=True):
            if tuple(key) not in seen:
                seen.add(tuple(key))
                out.append(row)
                added += 1
                if added == count:
                    break
        count -= added
        if count > 0 and added < batch // 4:
            scale = np.maximum(2.0 * scale, 1.0)
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def image_crops(
    label_map: np.ndarray,
    labels: Sequence[int],
    proposals: np.ndarray,
    scores: np.ndarray,
    n: int,
    enclose: float,
    max_subsets: int | None,
    rng: np.random.Generator,
    max_margin: float = 0.5,
) -> CropTable:
    """The crop table of one strong image: ``n`` boxes for each label subset P.

    ``crop_image`` is 0; the shard builder sets the image's row. The foreground of P is
    ``np.isin(label_map, classes of P)``; counts are additive over classes, so one
    summed-area table per class serves every subset.
    """
    labels = tuple(int(c) for c in labels)
    subsets = label_subsets(labels, max_subsets, rng)
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    per_class_counts, per_class_total, per_class_bbox = [], [], []
    for c in labels:
        mask = label_map == c
        per_class_counts.append(box_counts(summed_area_table(mask), proposals))
        per_class_total.append(int(mask.sum()))
        per_class_bbox.append(tight_box(mask))
    parts = []
    for bits in subsets:
        members = [j for j in range(len(labels)) if (bits >> j) & 1]
        counts = sum((per_class_counts[j] for j in members), np.zeros(len(proposals), np.int64))
        total = sum(per_class_total[j] for j in members)
        boxes_of = [per_class_bbox[j] for j in members if per_class_bbox[j] is not None]
        bbox = _union(boxes_of)
        boxes, origin = _choose(counts, total, bbox, proposals, scores, n, enclose, rng, max_margin)
        parts.append(
            CropTable(
                np.zeros(len(boxes), np.int32),
                np.full(len(boxes), bits, np.uint64),
                boxes,
                origin,
            )
        )
    return CropTable.concat(parts)


def _union(boxes: list[np.ndarray]) -> np.ndarray | None:
    if not boxes:
        return None
    b = np.stack(boxes)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])
