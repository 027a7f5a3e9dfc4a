"""PASCAL VOC 2012 segmentation, optionally with SBD for the standard train_aug set.

train_aug (10,582 images) = SBD train + SBD val + VOC train - VOC val: every image
with a mask except those of the VOC val set, which stays the evaluation set (1,449).
Where VOC has its own SegmentationClass PNG it is used; otherwise SBD's cls/<id>.mat.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.datasets.folder import read_class_names
from pipeline.errors import UserError
from pipeline.imageio import read_id_list, safe_join
from pipeline.records import DatasetSplits, Record

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Official list sizes; only when all four match is the 10,582 train_aug count checked,
# so subsets and synthetic VOC-layout data still load.
OFFICIAL_COUNTS = {"voc_train": 1464, "voc_val": 1449, "sbd_train": 8498, "sbd_val": 2857}
TRAIN_AUG_COUNT = 10582


def _find_dir(root: Path, candidates: tuple[str, ...], marker: str, what: str) -> Path:
    """The first of ``root/<candidate>`` that holds ``marker`` (a directory)."""
    if not root.is_dir():
        raise UserError(f"{root}: {what} directory not found")
    for rel in candidates:
        d = root / rel if rel else root
        if (d / marker).is_dir():
            return d
    looked = ", ".join(str(root / rel) if rel else str(root) for rel in candidates)
    raise UserError(f"{root}: no {what} found (looked for {marker}/ in {looked})")


def find_voc2012(root: str | Path) -> Path:
    """``VOC2012`` from the directory holding ``VOCdevkit``, ``VOCdevkit`` or itself."""
    return _find_dir(Path(root), ("", "VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", "VOC2012")


def find_sbd(root: str | Path) -> Path:
    """SBD's ``dataset`` dir from itself, its parent, or the extracted download directory."""
    return _find_dir(Path(root), ("", "dataset", "benchmark_RELEASE/dataset"), "cls", "SBD dataset")


def _names_in(directory: Path, suffix: str) -> set[str]:
    # One directory listing instead of 10k stat calls (network file systems).
    if not directory.is_dir():
        return set()
    with os.scandir(directory) as it:
        return {e.name[: -len(suffix)] for e in it if e.name.endswith(suffix)}


def _checked_ids(list_file: Path, root: Path) -> list[str]:
    ids = read_id_list(list_file)
    for image_id in ids:
        safe_join(root, image_id + ".jpg", list_file)
    return ids


def _voc_classes(voc: Path) -> list[str]:
    # The synthetic VOC-layout generator writes its own class list next to the data.
    custom = voc / "classes.txt"
    return read_class_names(custom) if custom.is_file() else ["background", *VOC_CLASSES]


def load_voc(root: str | Path, sbd_root: str | Path | None = None) -> DatasetSplits:
    """List VOC 2012 segmentation train/val; with ``sbd_root``, train becomes train_aug."""
    voc = find_voc2012(root)
    jpeg, seg = voc / "JPEGImages", voc / "SegmentationClass"
    if not seg.is_dir():
        raise UserError(f"{seg}: not found; VOC masks live in SegmentationClass/")
    lists = voc / "ImageSets" / "Segmentation"
    voc_train = _checked_ids(lists / "train.txt", jpeg)
    voc_val = _checked_ids(lists / "val.txt", jpeg)
    classes = _voc_classes(voc)
    val = [Record(i, jpeg / f"{i}.jpg", seg / f"{i}.png") for i in voc_val]
    info: dict = {
        "root": str(voc),
        "voc_train": len(voc_train),
        "voc_val": len(voc_val),
        "val": len(val),
    }
    if sbd_root is None:
        train = [Record(i, jpeg / f"{i}.jpg", seg / f"{i}.png") for i in voc_train]
        info.update(train_split="VOC train", train=len(train))
        return DatasetSplits("voc", classes, train, val, info)

    sbd = find_sbd(sbd_root)
    sbd_train = _checked_ids(sbd / "train.txt", sbd / "img")
    sbd_val = _checked_ids(sbd / "val.txt", sbd / "img")
    held_out = set(voc_val)
    train_ids = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - held_out)
    counts = {
        "voc_train": len(voc_train),
        "voc_val": len(voc_val),
        "sbd_train": len(sbd_train),
        "sbd_val": len(sbd_val),
    }
    if counts == OFFICIAL_COUNTS and len(train_ids) != TRAIN_AUG_COUNT:
        raise UserError(
            f"{sbd}: train_aug has {len(train_ids)} images, expected {TRAIN_AUG_COUNT} from the "
            "official VOC 2012 and SBD lists; are the list files modified?"
        )

    voc_masks, voc_images = _names_in(seg, ".png"), _names_in(jpeg, ".jpg")
    train = []
    for i in train_ids:
        mask = seg / f"{i}.png" if i in voc_masks else sbd / "cls" / f"{i}.mat"
        image = jpeg / f"{i}.jpg" if i in voc_images else sbd / "img" / f"{i}.jpg"
        train.append(Record(i, image, mask))
    info.update(
        sbd_root=str(sbd),
        sbd_train=len(sbd_train),
        sbd_val=len(sbd_val),
        train_split="train_aug = SBD train + SBD val + VOC train - VOC val",
        train=len(train),
        train_masks_from_sbd=sum(1 for r in train if r.mask.suffix == ".mat"),
    )
    return DatasetSplits("voc", classes, train, val, info)
