"""Combinatorial cropping (paper, Sec. 4.2): many training examples from few masks.

For a strong image with label set L*, every non-empty subset P of L* is a separate
figure/ground problem (pixels of classes in P are foreground). For each P we keep
``n`` (the paper's N_p = 200) boxes that *enclose* P's foreground: region proposals
first, best-scored first, then random boxes around the foreground (`RANDOM_BOXES`).
With ``whole_image`` each P also gets the padded image square (0, 0, S, S), S = max(H, W):
exactly what the segmenter sees at inference, and the paper's N_s term (N_t = N_s +
N_p sum(2^|L*| - 1)); one per subset rather than one per image, so that every
figure/ground problem is also posed at the scale inference poses it.

Random boxes (``random_boxes``):

- ``"scales"`` (default): the box's sides grow log-uniformly from the tight box of P's
  foreground (w_b x h_b) to the padded image square: side = w_b (S / w_b)^t (likewise
  h), one t ~ U[0, 1] per box, and the box is placed uniformly among the positions that
  contain the tight box, so it may reach past the image (0 pixels, 255 labels), as the
  reference's boxes may. Half of the boxes are then within sqrt(S / w_b) of the tight
  box's scale and half beyond, so a small object is seen both close up and at the scale
  it has at inference. Photographs give few proposals that enclose an object (1-6 of 200
  on the horses), so this distribution decides what the segmenter learns. ``scales_from``
  T > 0 draws t ~ U[T, 1] instead: every box at least (S / w_b)^T times the tight box,
  nearer the scale of inference. Where objects are small in the image and the input is
  small, close-ups teach little that carries over to whole images (the demo's synthetic
  set: benchmarks/RESULTS.md).
- ``"margin"`` (ddn 0.1's only rule): each side of the tight box moves out by
  U[0, 0.5 x its side], i.e. boxes of 1-2x the object: small objects never appear at
  their inference scale.

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

from pipeline.shards import ORIGIN_PROPOSAL, ORIGIN_RANDOM, ORIGIN_WHOLE, CropTable

MAX_LABELS = 63  # bitmasks are stored as uint64
RANDOM_BOXES = ("scales", "margin")
MAX_MARGIN = 0.5  # "margin": each side grows by up to this share of the tight box's side
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
    random_boxes: str = "scales",
    whole_image: bool = False,
    scales_from: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct boxes enclosing the foreground of ``fg_mask`` (HxW bool), plus the
    padded image square first when ``whole_image``.

    Returns boxes (k,4) float32 and origin (k,) uint8; k == n (+1), or 0 for an empty mask.
    """
    fg = np.asarray(fg_mask, dtype=bool)
    total = int(fg.sum())
    counts = box_counts(summed_area_table(fg), proposals) if total else np.zeros(0, np.int64)
    rule = BoxRule(fg.shape, random_boxes, whole_image, scales_from)
    return _choose(counts, total, tight_box(fg), proposals, scores, n, enclose, rng, rule)


def check_scales_from(scales_from: float, random_boxes: str) -> None:
    """ValueError unless ``scales_from`` is in [0, 1] and used with "scales"."""
    if not 0 <= scales_from <= 1:
        raise ValueError(f"scales_from must be in [0, 1], got {scales_from}")
    if scales_from and random_boxes != "scales":
        raise ValueError(f"scales_from applies to random_boxes 'scales', not {random_boxes!r}")


class BoxRule:
    """What besides proposals a subset gets: random boxes drawn by ``random_boxes`` for an
    image of ``shape`` (H, W), and the padded image square when ``whole_image``."""

    def __init__(
        self,
        shape: tuple[int, ...],
        random_boxes: str,
        whole_image: bool,
        scales_from: float = 0.0,
    ) -> None:
        if random_boxes not in RANDOM_BOXES:
            raise ValueError(f"random_boxes must be one of {RANDOM_BOXES}, got {random_boxes!r}")
        check_scales_from(scales_from, random_boxes)
        self.side = float(max(shape[:2]))
        self.random_boxes, self.whole_image = random_boxes, whole_image
        self.scales_from = scales_from

    def whole(self) -> np.ndarray:
        return np.array([[0.0, 0.0, self.side, self.side]], np.float32)


def _choose(
    counts: np.ndarray,
    total: int,
    bbox: np.ndarray | None,
    proposals: np.ndarray,
    scores: np.ndarray,
    n: int,
    enclose: float,
    rng: np.random.Generator,
    rule: BoxRule,
) -> tuple[np.ndarray, np.ndarray]:
    """select_boxes given each proposal's foreground count (shared with image_crops)."""
    if total == 0 or n <= 0 or bbox is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.uint8)
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    # The tolerance keeps e.g. 19/20 at enclose=0.95 despite float rounding.
    ok = np.flatnonzero(counts >= enclose * total - 1e-9)
    order = ok[np.argsort(-np.asarray(scores)[ok], kind="stable")]
    whole = rule.whole() if rule.whole_image else np.zeros((0, 4), np.float32)
    seen = {tuple(r) for r in np.rint(whole).astype(np.int64).tolist()}
    candidates = proposals[order]
    fresh = [
        i
        for i in _first_unique(candidates, limit=len(candidates))
        if tuple(np.rint(candidates[i]).astype(np.int64).tolist()) not in seen
    ]
    boxes = candidates[fresh[:n]]
    seen |= {tuple(r) for r in np.rint(boxes).astype(np.int64).tolist()}
    randoms = _random_boxes(bbox, n - len(boxes), seen, rng, rule)
    origin = np.concatenate(
        [
            np.full(len(whole), ORIGIN_WHOLE),
            np.full(len(boxes), ORIGIN_PROPOSAL),
            np.full(len(randoms), ORIGIN_RANDOM),
        ]
    ).astype(np.uint8)
    return np.concatenate([whole, boxes, randoms]).astype(np.float32), origin


def _first_unique(boxes: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first occurrence of each integer-rounded box, in order, at most limit."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    _, first = np.unique(np.rint(boxes).astype(np.int64), axis=0, return_index=True)
    return np.sort(first)[:limit]


def _margin_draw(
    bbox: np.ndarray, batch: int, rng: np.random.Generator, widen: float
) -> np.ndarray:
    """ "margin": each side of ``bbox`` moves out by U[0, MAX_MARGIN x its side] (x ``widen``,
    at least 1 px once widened)."""
    side = np.array([bbox[2] - bbox[0], bbox[3] - bbox[1]], dtype=np.float64)
    scale = np.tile(MAX_MARGIN * side, 2)
    if widen > 1:
        scale = np.maximum(widen * scale, widen / 2)
    sign = np.array([-1.0, -1.0, 1.0, 1.0])
    return bbox + sign * rng.random((batch, 4)) * scale


def _scale_draw(
    bbox: np.ndarray,
    batch: int,
    rng: np.random.Generator,
    widen: float,
    square: float,
    scales_from: float = 0.0,
) -> np.ndarray:
    """ "scales": sides log-uniform from the tight box's to ``square`` (x ``widen``), one
    t ~ U[scales_from, 1] per box; placed uniformly among the positions that contain
    ``bbox``."""
    lo = np.array([bbox[2] - bbox[0], bbox[3] - bbox[1]], dtype=np.float64)
    hi = np.maximum(square * widen, lo)
    # At scales_from 0 this is t = U[0, 1] draw for draw: the boxes of earlier versions.
    t = scales_from + (1.0 - scales_from) * rng.random((batch, 1))
    sides = lo * (hi / lo) ** t
    start = bbox[2:] - sides + rng.random((batch, 2)) * (sides - lo)
    return np.concatenate([start, start + sides], axis=1)


def _random_boxes(
    bbox: np.ndarray,
    count: int,
    seen: set[tuple[int, ...]],
    rng: np.random.Generator,
    rule: BoxRule,
) -> np.ndarray:
    """``count`` random boxes that contain ``bbox``, distinct from ``seen`` after rounding.

    Where rounding collapses the few possible boxes (a tiny foreground under "margin", a
    foreground filling a square image under "scales"), the range widens whenever most of
    a batch are repeats: past the image, which the reader pads.
    """
    out: list[np.ndarray] = []
    widen = 1.0
    while count > 0:
        batch = max(2 * count, 8)
        if rule.random_boxes == "margin":
            cand = _margin_draw(bbox, batch, rng, widen)
        else:
            cand = _scale_draw(bbox, batch, rng, widen, rule.side, rule.scales_from)
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
            widen *= 2.0 if rule.random_boxes == "margin" else 1.5
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
    random_boxes: str = "scales",
    whole_image: bool = False,
    scales_from: float = 0.0,
) -> CropTable:
    """The crop table of one strong image: ``n`` boxes for each label subset P (and the
    padded image square first, when ``whole_image``).

    ``crop_image`` is 0; the shard builder sets the image's row. The foreground of P is
    ``np.isin(label_map, classes of P)``; counts are additive over classes, so one
    summed-area table per class serves every subset.
    """
    labels = tuple(int(c) for c in labels)
    subsets = label_subsets(labels, max_subsets, rng)
    rule = BoxRule(label_map.shape, random_boxes, whole_image, scales_from)
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
        boxes, origin = _choose(counts, total, bbox, proposals, scores, n, enclose, rng, rule)
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
