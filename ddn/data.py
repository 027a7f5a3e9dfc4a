"""The data side of the public API: prepare a dataset, and the combinatorial crops of one
image in memory, for reuse on other data.

`prepare` is what ``ddn prepare`` calls, with its options as keywords and the same
defaults. `generate_crops` gives the boxes ``ddn prepare`` writes for a strong image, and
`warp_crop` the training example the readers cut from one of them. Images are RGB uint8
H x W x 3 (``cv2.imread`` gives BGR: convert it), masks uint8 H x W (0 background, k
class k, 255 ignore). Mistakes in the arguments raise `pipeline.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.build import CropSettings, strong_image_crops
from pipeline.combinatorial import MAX_LABELS
from pipeline.cropping import warp_example
from pipeline.errors import UserError
from pipeline.imageio import check_rgb, classes_in
from pipeline.prepare import ShardSettings, SplitSettings
from pipeline.prepare import prepare as prepare_splits
from pipeline.proposals import ProposalConfig
from pipeline.shards import ORIGIN_PROPOSAL, ORIGIN_RANDOM, ORIGIN_WHOLE
from pipeline.splits import parse_strong_per_class

# `Crops.origin` values; the shards store their index (`crop_origin`).
ORIGINS = {ORIGIN_PROPOSAL: "proposal", ORIGIN_RANDOM: "random", ORIGIN_WHOLE: "whole"}


def crop_settings(
    *,
    proposals: int,
    max_subsets: int | None,
    method: str,
    enclose: float,
    seed: int,
    random_boxes: str,
    whole_image: bool,
    scales_from: float,
    edge_model: str | Path | None,
    max_boxes: int,
    edgebox_alpha: float,
    edgebox_beta: float,
    edgebox_min_score: float,
    materialize: int | None = None,
) -> CropSettings:
    """The `CropSettings` of prepare's options, checked."""
    if not 0 < enclose <= 1:
        raise UserError(f"--enclose: must be in (0, 1], got {enclose}")
    if proposals < 1 or (max_subsets is not None and max_subsets < 1):
        raise UserError("--proposals and --max-subsets must be at least 1")
    if random_boxes not in ("scales", "margin"):
        raise UserError(f"--random-boxes: expected scales or margin, got {random_boxes!r}")
    if not 0 <= scales_from <= 1:
        raise UserError(f"--scales-from: must be in [0, 1], got {scales_from}")
    if scales_from and random_boxes != "scales":
        raise UserError("--scales-from: applies to --random-boxes scales only")
    config = ProposalConfig(
        method=method,
        edge_model=str(edge_model) if edge_model else None,
        max_boxes=max_boxes,
        alpha=edgebox_alpha,
        beta=edgebox_beta,
        min_score=edgebox_min_score,
    )
    return CropSettings(
        config,
        proposals,
        enclose,
        max_subsets,
        materialize,
        seed,
        random_boxes,
        whole_image,
        scales_from,
    )


def prepare(
    out: str | Path,
    *,
    dataset: str,
    root: str | Path,
    sbd_root: str | Path | None = None,
    ann: str | Path | None = None,
    val_root: str | Path | None = None,
    val_ann: str | Path | None = None,
    categories: str | Sequence[str] | None = None,
    strong_per_class: int | str | None = SplitSettings.strong_per_class,
    strong_list: str | Path | None = None,
    weak_from: str = SplitSettings.weak_from,
    allow_short: bool = SplitSettings.allow_short,
    negatives: str = SplitSettings.negatives,
    seed: int = SplitSettings.seed,
    method: str = ProposalConfig.method,
    proposals: int = CropSettings.per_subset,
    edge_model: str | Path | None = ProposalConfig.edge_model,
    max_boxes: int = ProposalConfig.max_boxes,
    edgebox_alpha: float = ProposalConfig.alpha,
    edgebox_beta: float = ProposalConfig.beta,
    edgebox_min_score: float = ProposalConfig.min_score,
    enclose: float = CropSettings.enclose,
    random_boxes: str = CropSettings.random_boxes,
    whole_image: bool = CropSettings.whole_image,
    scales_from: float = CropSettings.scales_from,
    max_subsets: int | None = CropSettings.max_subsets,
    materialize: int | None = CropSettings.materialize,
    shard_size: int = ShardSettings.shard_size,
    strong_shard_size: int = ShardSettings.strong_shard_size,
    jobs: int = ShardSettings.jobs,
    backend: str = ShardSettings.backend,
    scheduler: str | None = ShardSettings.scheduler,
    skip_bad: bool = False,
    overwrite: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """``ddn prepare OUT``: the keywords are its options (``--max-subsets`` is
        ``max_subsets``), with the same defaults; ``strong_per_class`` is a number or "full",
        ``categories`` a list or a comma-separated string. Returns the manifest (a dict, also
        in ``OUT/manifest.json``). Re-running resumes, as the command does; ``wait`` queues
    behind another writer of ``out`` instead of refusing. ``backend="dask"`` with
    ``scheduler="tcp://HOST:8786"`` builds the shards on that Dask cluster, whose workers
    must see ``out`` and the dataset under the same paths (`pipeline.cluster`)."""
    from pipeline.datasets import load_dataset  # its adapters import pycocotools, scipy

    options: dict[str, Any]
    if dataset == "voc":
        options = {"root": root, "sbd_root": sbd_root}
    elif dataset == "coco":
        if ann is None:
            raise UserError("--ann: required with --dataset coco")
        if isinstance(categories, str):
            categories = [c.strip() for c in categories.split(",") if c.strip()]
        options = {
            "root": root,
            "ann": ann,
            "val_root": val_root,
            "val_ann": val_ann,
            "categories": list(categories) if categories else None,
        }
    else:
        options = {"root": root}
    crops = crop_settings(
        proposals=proposals,
        max_subsets=max_subsets,
        method=method,
        enclose=enclose,
        seed=seed,
        random_boxes=random_boxes,
        whole_image=whole_image,
        scales_from=scales_from,
        edge_model=edge_model,
        max_boxes=max_boxes,
        edgebox_alpha=edgebox_alpha,
        edgebox_beta=edgebox_beta,
        edgebox_min_score=edgebox_min_score,
        materialize=materialize,
    )
    if shard_size < 1 or strong_shard_size < 1:
        raise UserError("--shard-size and --strong-shard-size must be at least 1")
    # Checks --jobs, --backend and --scheduler before the dataset is listed.
    shards = ShardSettings(shard_size, strong_shard_size, jobs, backend, scheduler)
    per_class = None if strong_per_class is None else parse_strong_per_class(str(strong_per_class))
    split = SplitSettings(
        per_class,
        str(Path(strong_list).resolve()) if strong_list else None,
        weak_from,
        allow_short,
        seed,
        negatives,
    )
    ds = load_dataset(dataset, **options)
    return prepare_splits(
        ds,
        Path(out),
        split,
        crops,
        shards,
        skip_bad=skip_bad,
        overwrite=overwrite,
        wait=wait,
        dataset_config={
            k: str(Path(v).resolve()) if isinstance(v, str | Path) and k != "categories" else v
            for k, v in options.items()
        },
    )


@dataclass
class Crops:
    """The combinatorial crops of one image: N training examples.

    ``boxes``: (N, 4) float32 x0, y0, x1, y1 in source pixels (pixel i spans [i, i+1);
    a box may reach past the image). ``subsets``: N tuples of class ids, the classes that
    are foreground in that example. ``origin``: (N,) str array, "proposal" (a region
    proposal that encloses the subset), "random" (a random box around it) or "whole" (the
    image padded to a square); the shards store `ORIGINS`' keys. ``classes``: the image's
    object classes, ascending.
    """

    boxes: np.ndarray
    subsets: list[tuple[int, ...]]
    origin: np.ndarray
    classes: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.subsets)


def generate_crops(
    image: Any,
    mask: Any,
    *,
    proposals: int = CropSettings.per_subset,
    max_subsets: int | None = CropSettings.max_subsets,
    method: str = ProposalConfig.method,
    enclose: float = CropSettings.enclose,
    seed: int = 0,
    image_id: str = "",
    random_boxes: str = CropSettings.random_boxes,
    whole_image: bool = CropSettings.whole_image,
    scales_from: float = CropSettings.scales_from,
    edge_model: str | Path | None = None,
    max_boxes: int = ProposalConfig.max_boxes,
    edgebox_alpha: float = ProposalConfig.alpha,
    edgebox_beta: float = ProposalConfig.beta,
    edgebox_min_score: float = ProposalConfig.min_score,
) -> Crops:
    """The combinatorial crops of one image (RGB uint8 H x W x 3) and its mask (uint8
    H x W: 0 background, k class k, 255 ignore), as `Crops`.

    The keywords are ``ddn prepare``'s options, with its defaults (``proposals`` is N_p,
    ``--proposals``). The random draws (random boxes, the subsets kept under
    ``max_subsets``, selective search) come from ``seed`` and ``image_id`` together:
    with the id prepare knows the image by (its file stem), the result is the crop table
    prepare writes for that image. A mask with no object class gives no crops.
    """
    image = check_rgb(image)
    mask = _mask(mask, image.shape[:2])
    settings = crop_settings(
        proposals=proposals,
        max_subsets=max_subsets,
        method=method,
        enclose=enclose,
        seed=seed,
        random_boxes=random_boxes,
        whole_image=whole_image,
        scales_from=scales_from,
        edge_model=edge_model,
        max_boxes=max_boxes,
        edgebox_alpha=edgebox_alpha,
        edgebox_beta=edgebox_beta,
        edgebox_min_score=edgebox_min_score,
    )
    classes = classes_in(mask)
    if len(classes) > MAX_LABELS:
        raise UserError(
            f"mask: {len(classes)} classes in one image; at most {MAX_LABELS} are supported"
        )
    table, _ = strong_image_crops(image, mask, classes, settings, str(image_id))
    subsets = [
        tuple(c for j, c in enumerate(classes) if int(bits) >> j & 1) for bits in table.subset
    ]
    origin = np.array([ORIGINS[int(o)] for o in table.origin], dtype="<U8")
    return Crops(table.box, subsets, origin, classes)


def warp_crop(
    image: Any, mask: Any, box: Sequence[float], subset: Iterable[int], size: int = 320
) -> tuple[np.ndarray, np.ndarray]:
    """One training example: ``box`` of the image warped to ``size`` x ``size`` (aspect
    not kept; bilinear, 0 outside the image) and its target (nearest neighbour: 1 where
    the class is in ``subset``, 0 for other classes and background, 255 ignore and outside
    the image). Returns (RGB uint8 size x size x 3, uint8 size x size).

    This is the example before the readers' augmentation: `CropDataset` warps to
    ``warp_size`` (350 by default; train-seg: 350/320 of its input size), then keeps a
    random ``crop_size`` window and flips it at random. ``CropDataset(dir, warp_size=S,
    crop_size=S, flip=False)`` gives exactly ``warp_crop(..., size=S)`` (channels first).
    """
    image = check_rgb(image)
    mask = _mask(mask, image.shape[:2])
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all() or not (box[2] > box[0] and box[3] > box[1]):
        raise UserError(f"box: expected x0, y0, x1, y1 with x1 > x0 and y1 > y0, got {box}")
    classes = [int(c) for c in subset]
    if not classes or any(not 1 <= c <= 254 for c in classes):
        raise UserError(f"subset: expected one or more class ids in 1..254, got {classes}")
    if int(size) < 1:
        raise UserError(f"size: must be at least 1, got {size}")
    return warp_example(image, mask, box.tolist(), classes, int(size))


def _mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise UserError(
            f"mask: expected a uint8 H x W array of class ids, got {array.dtype} "
            f"{tuple(array.shape)}"
        )
    if array.shape != tuple(shape):
        raise UserError(
            f"mask: size {array.shape[1]}x{array.shape[0]} differs from the image's "
            f"{shape[1]}x{shape[0]}"
        )
    return array
