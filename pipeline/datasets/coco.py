"""COCO instances json through pycocotools: instance masks become one semantic map.

Nothing is painted here: each record carries a `CocoMask` (the annotations in painting
order) and the shard writer paints it. Larger objects are painted first so a smaller
object lying on a larger one stays visible; crowd regions become 255 (ignore).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.imageio import safe_join
from pipeline.records import CocoMask, DatasetSplits, Record

# VOC spells six of its classes differently from COCO; accept either spelling.
VOC_TO_COCO = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}

_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "segmentation"),
    "categories": ("id", "name"),
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable json file ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a COCO json object, got {type(data).__name__}")
    for key, fields in _REQUIRED.items():
        items = data.get(key)
        if not isinstance(items, list):
            raise UserError(f"{path}: missing the {key!r} list of a COCO instances file")
        for n, item in enumerate(items):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise UserError(f"{path}: {key}[{n}] lacks {', '.join(map(repr, missing))}")
    return data


def _load_coco(path: Path):
    from pycocotools.coco import COCO

    data = _read_json(path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _choose_classes(
    coco, path: Path, categories: Sequence[str] | None
) -> tuple[list[str], dict[int, int]]:
    """Class names (background first) and the map COCO category id -> class index."""
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    if not categories:
        return ["background"] + [c["name"] for c in cats], {
            c["id"]: k for k, c in enumerate(cats, start=1)
        }
    by_name = {c["name"]: c["id"] for c in cats}
    classes, cat_to_class = ["background"], {}
    for k, name in enumerate(categories, start=1):
        coco_name = name if name in by_name else VOC_TO_COCO.get(name, name)
        if coco_name not in by_name:
            raise UserError(
                f"{path}: no category {name!r}; valid: {', '.join(c['name'] for c in cats)}"
            )
        if by_name[coco_name] in cat_to_class:
            raise UserError(f"categories: {name!r} names a category already chosen")
        cat_to_class[by_name[coco_name]] = k
        classes.append(name)
    return classes, cat_to_class


def _segmentation(seg: Any) -> Any:
    """The segmentation with degenerate polygons (< 3 points) dropped; None if nothing left."""
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        return polys or None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return seg
    return None


def _area(ann: dict[str, Any]) -> float:
    if "area" in ann:
        return float(ann["area"])
    bbox = ann.get("bbox") or (0, 0, 0, 0)
    return float(bbox[2]) * float(bbox[3])


def _records(coco, path: Path, root: Path, cat_to_class: dict[int, int]) -> list[Record]:
    records = []
    for img_id in sorted(coco.imgs):
        img = coco.imgs[img_id]
        anns = []
        for ann in coco.imgToAnns.get(img_id, []):
            cls = cat_to_class.get(ann["category_id"])
            seg = _segmentation(ann["segmentation"]) if cls is not None else None
            if seg is not None:
                anns.append((-_area(ann), ann["id"], cls, seg, int(bool(ann.get("iscrowd", 0)))))
        anns.sort(key=lambda a: (a[0], a[1]))
        labels = tuple(sorted({a[2] for a in anns if not a[4]}))
        mask = CocoMask(
            int(img["height"]), int(img["width"]), tuple((a[2], a[3], a[4]) for a in anns)
        )
        image = safe_join(root, str(img["file_name"]), path)
        records.append(Record(str(img_id), image, mask, labels))
    return records


def load_coco(
    root: str | Path,
    ann: str | Path,
    val_root: str | Path | None = None,
    val_ann: str | Path | None = None,
    categories: Sequence[str] | None = None,
) -> DatasetSplits:
    """List COCO train (``root`` + ``ann``) and optionally val (``val_root`` + ``val_ann``).

    ``categories`` picks a subset by name, in the given order (VOC spellings accepted);
    objects of other categories become background. An image left with no object of a
    chosen category (none, or only crowd regions) gets empty labels: a negative, which
    `prepare` keeps or drops (``negatives``). ``val_root`` defaults to ``root``.
    """
    root, ann = Path(root), Path(ann)
    if not root.is_dir():
        raise UserError(f"{root}: COCO image directory not found")
    train_coco = _load_coco(ann)
    classes, cat_to_class = _choose_classes(train_coco, ann, categories)
    train = _records(train_coco, ann, root, cat_to_class)
    info: dict[str, Any] = {"root": str(root), "ann": str(ann), "train": len(train), "val": 0}
    val: list[Record] = []
    if val_ann is not None:
        val_ann = Path(val_ann)
        val_root = Path(val_root) if val_root is not None else root
        if not val_root.is_dir():
            raise UserError(f"{val_root}: COCO val image directory not found")
        val_coco = _load_coco(val_ann)
        val_classes, val_map = _choose_classes(val_coco, val_ann, categories)
        # Indices must mean the same class in both splits.
        if val_classes != classes:
            raise UserError(f"{val_ann}: its categories differ from those of {ann}")
        val = _records(val_coco, val_ann, val_root, val_map)
        info.update(val_root=str(val_root), val_ann=str(val_ann), val=len(val))
    info["without_labels"] = sum(1 for r in train if not r.labels)
    return DatasetSplits("coco", classes, train, val, info)
