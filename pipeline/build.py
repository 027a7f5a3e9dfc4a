"""Building one shard: the unit of parallel work in `ddn prepare`.

A task is a list of records plus the settings; the worker decodes each image once,
validates it, computes proposals and combinatorial crops for strong images, and
writes the shard atomically. Workers share nothing, so tasks can run in any order,
on any joblib backend, on any machine that sees the output directory.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.combinatorial import image_crops
from pipeline.cropping import warp_example
from pipeline.errors import BadInputError, UserError
from pipeline.imageio import (
    check_label_map,
    classes_in,
    encode_label_png,
    load_image,
    load_label_map,
)
from pipeline.proposals import ProposalConfig, propose, set_single_thread
from pipeline.records import Record
from pipeline.settings import setting
from pipeline.shards import CropTable, ShardImages, shard_name, subset_classes, write_shard


@dataclass
class CropSettings:
    """How combinatorial crops are made (all of it goes into the config hash)."""

    proposals: ProposalConfig
    per_subset: int = setting(200, help="N_p: boxes per label subset.")
    enclose: float = setting(
        0.95, help="A box encloses subset P when it holds at least this share of P's pixels."
    )
    max_subsets: int | None = setting(
        64, help="Cap on label subsets per image (all singletons, the full set, then random)."
    )
    materialize: int | None = setting(
        None, help="Also store SIZExSIZE pixel crops and masks, for tools outside ddn."
    )
    seed: int = setting(0, help="Seed for the random boxes and subsets.")
    random_boxes: str = setting(  # pipeline.combinatorial.RANDOM_BOXES
        "scales",
        help="Random boxes around a subset: sides log-uniform from its tight box to the padded "
        "image square (scales), or the tight box grown by up to half its size per side "
        "(margin).",
    )
    whole_image: bool = setting(
        True,
        help="Also train on each subset's whole image, padded to a square as at inference "
        "(the paper's N_s term).",
    )
    scales_from: float = setting(
        0.0,
        help="--random-boxes scales: each box's scale t is drawn from U[T, 1], t = 0 being "
        "the subset's tight box and 1 the padded image (log scale between). 0 spans every "
        "scale; nearer 1 trains nearer the scale of inference (small objects, small inputs).",
    )


@dataclass
class ShardTask:
    kind: str
    index: int
    records: list[Record]
    classes: list[str]
    config_hash: str
    out: Path
    crops: CropSettings
    skip_bad: bool = False
    skipped: list[dict] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.out / shard_name(self.kind, self.index)


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """Per-image randomness that does not depend on sharding, order or worker count."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def strong_image_crops(
    pixels: np.ndarray,
    mask: np.ndarray,
    labels: tuple[int, ...],
    crops: CropSettings,
    image_id: str,
) -> tuple[CropTable, float]:
    """The crop table of one strong image (``crop_image`` 0) and the seconds its
    proposals took: proposals, then combinatorial crops, from one per-image random stream.
    ``ddn.generate_crops`` calls this too, so it gives the boxes prepare writes."""
    rng = image_rng(crops.seed, image_id)
    t = time.perf_counter()
    boxes, scores = propose(pixels, crops.proposals, rng)
    seconds = time.perf_counter() - t
    table = image_crops(
        mask,
        labels,
        boxes,
        scores,
        crops.per_subset,
        crops.enclose,
        crops.max_subsets,
        rng,
        crops.random_boxes,
        crops.whole_image,
        crops.scales_from,
    )
    return table, seconds


def _multi_hot(labels: tuple[int, ...], num_classes: int) -> np.ndarray:
    v = np.zeros(num_classes, np.uint8)
    v[[c - 1 for c in labels]] = 1
    return v


def _image_labels(task: ShardTask, rec: Record, mask: np.ndarray | None) -> tuple[int, ...]:
    if task.kind == "strong":
        # Combinatorial subsets only make sense for classes that own pixels.
        labels = classes_in(mask)
    elif rec.labels is not None:
        labels = tuple(sorted(set(rec.labels)))
    else:
        labels = classes_in(mask)
    bad = [c for c in labels if not 1 <= c < len(task.classes)]
    if bad:
        raise BadInputError(rec.image, f"labels {bad} are outside 1..{len(task.classes) - 1}")
    # No object is fine in weak and val (a negative example). A strong image was chosen
    # because its labels named a class, so an empty mask contradicts them.
    if not labels and task.kind == "strong":
        where = rec.mask if isinstance(rec.mask, Path) else rec.image
        raise BadInputError(
            where, "mask has no object although its labels name one, so it cannot be strong", rec.id
        )
    return labels


def build_shard(task: ShardTask) -> tuple[dict, list[dict]]:
    """Write ``task``'s shard; return its manifest entry and the images skipped."""
    set_single_thread()
    started = time.perf_counter()
    proposal_seconds = 0.0
    images = ShardImages()
    tables: list[CropTable] = []
    sources: list[tuple[np.ndarray, np.ndarray]] = []  # kept only for --materialize
    skipped: list[dict] = []
    num_classes = len(task.classes) - 1
    for rec in task.records:
        try:
            data, pixels = load_image(rec.image)
            mask = None
            if task.kind != "weak" or rec.labels is None:
                if rec.mask is None:
                    raise BadInputError(rec.image, "image has neither a mask nor labels", rec.id)
                mask = load_label_map(rec.mask)
                where = rec.mask if isinstance(rec.mask, Path) else rec.image
                check_label_map(mask, pixels.shape[:2], num_classes, where)
            labels = _image_labels(task, rec, mask)
        except BadInputError as e:
            if not task.skip_bad:
                raise
            skipped.append({"id": rec.id, "file": e.path, "reason": e.reason})
            continue
        row = len(images)
        images.ids.append(rec.id)
        images.encoded.append(data)
        images.shapes.append(pixels.shape[:2])
        images.labels.append(_multi_hot(labels, num_classes))
        if task.kind in ("strong", "val"):
            images.masks.append(encode_label_png(mask))
        if task.kind == "strong":
            table, seconds = strong_image_crops(pixels, mask, labels, task.crops, rec.id)
            proposal_seconds += seconds
            table.image[:] = row
            tables.append(table)
            if task.crops.materialize:
                sources.append((pixels, mask))
    crops = CropTable.concat(tables) if task.kind == "strong" else None
    materialize = None
    if crops is not None and task.crops.materialize:

        def example(i: int) -> tuple[np.ndarray, np.ndarray]:
            r = int(crops.image[i])
            subset = subset_classes(images.labels[r], int(crops.subset[i]))
            return warp_example(*sources[r], crops.box[i], subset, task.crops.materialize)

        materialize = (task.crops.materialize, example)
    try:
        entry = write_shard(
            task.path,
            task.kind,
            task.index,
            task.classes,
            task.config_hash,
            images,
            crops,
            materialize,
            skipped,
        )
    except OSError as e:
        raise UserError(f"{task.path}: cannot write shard ({e.strerror or e})") from None
    # Where the time goes, for `ddn inspect` and the prepare benchmark.
    entry["seconds"] = round(time.perf_counter() - started, 3)
    entry["proposal_seconds"] = round(proposal_seconds, 3)
    return entry, skipped
