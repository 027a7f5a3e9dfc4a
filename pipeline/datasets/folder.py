"""The plain folder format: the simplest way to bring your own data.

Layout (DESIGN.md, "Folder format")::

    root/classes.txt          line k = name of class k; line 0 is "background"
    root/images/<id>.jpg|jpeg|png   (any case)
    root/masks/<id>.png       uint8: 0 background, k class, 255 ignore (optional per image)
    root/labels.csv           optional "id,name;name" rows: image-level labels
    root/splits/train.txt     optional; likewise splits/val.txt

An image must carry some annotation: a mask, a labels.csv row, or both (then the row
is authoritative for image-level labels). A row with no class, or a mask with only
background and ignore, is still an annotation: the image is a negative (no object).
Without split files every image is train and val is empty.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pipeline.errors import UserError
from pipeline.imageio import read_id_list, safe_join
from pipeline.records import DatasetSplits, Record

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BACKGROUND = "background"


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt``: line k is class k and line 0 must be background."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{p}: class list not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    # A blank line in the middle would silently shift every later class index.
    for i, name in enumerate(names):
        if not name:
            raise UserError(f"{p}: line {i + 1} is blank; line k must name class k")
    if len(names) < 2:
        raise UserError(f"{p}: needs 'background' on line 1 and at least one class after it")
    if names[0].lower() != BACKGROUND:
        raise UserError(
            f"{p}: line 1 must be 'background' (class 0), got {names[0]!r}; "
            "object classes start on line 2"
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise UserError(f"{p}: class {name!r} appears on lines {seen[name] + 1} and {i + 1}")
        seen[name] = i
    names[0] = BACKGROUND
    return names


def _list_images(images_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    with os.scandir(images_dir) as it:
        entries = sorted(
            (e for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES),
            key=lambda e: e.name,
        )
    for entry in entries:
        image_id = os.path.splitext(entry.name)[0]
        if image_id in found:
            raise UserError(
                f"{images_dir}: two images share the id {image_id!r} "
                f"({found[image_id].name} and {entry.name}); keep one"
            )
        found[image_id] = images_dir / entry.name
    return found


def _list_masks(masks_dir: Path) -> dict[str, Path]:
    if not masks_dir.is_dir():
        return {}
    with os.scandir(masks_dir) as it:
        return {
            os.path.splitext(e.name)[0]: masks_dir / e.name
            for e in it
            if os.path.splitext(e.name)[1].lower() == ".png"
        }


def _read_labels_csv(
    path: Path, classes: list[str], images: dict[str, Path]
) -> dict[str, tuple[int, ...]]:
    index = {name: k for k, name in enumerate(classes) if k > 0}
    labels: dict[str, tuple[int, ...]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    for lineno, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if lineno == 1 and row[0].strip().lower() == "id":
            continue  # header
        if len(row) > 2:
            raise UserError(f"{path}:{lineno}: expected 'id,name;name', got {len(row)} fields")
        image_id = row[0].strip()
        if image_id not in images:
            raise UserError(f"{path}:{lineno}: id {image_id!r} has no image in images/")
        if image_id in labels:
            raise UserError(f"{path}:{lineno}: id {image_id!r} is listed twice")
        names = [n.strip() for n in (row[1] if len(row) > 1 else "").split(";") if n.strip()]
        unknown = [n for n in names if n not in index]
        if unknown:
            raise UserError(
                f"{path}:{lineno}: class {unknown[0]!r} is not an object class in classes.txt "
                f"(known: {', '.join(classes[1:])})"
            )
        labels[image_id] = tuple(sorted({index[n] for n in names}))
    return labels


def _read_split(path: Path, root: Path, images: dict[str, Path]) -> list[str]:
    ids = read_id_list(path)
    seen: set[str] = set()
    for image_id in ids:
        safe_join(root / "images", image_id, path)
        if image_id not in images:
            raise UserError(f"{path}: id {image_id!r} has no image in images/")
        if image_id in seen:
            raise UserError(f"{path}: id {image_id!r} is listed more than once")
        seen.add(image_id)
    return ids


def load_folder(root: str | Path) -> DatasetSplits:
    """List a folder-format dataset (see the module docstring for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    classes = read_class_names(root / "classes.txt")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: not found; the folder format keeps pictures in images/")
    images = _list_images(images_dir)
    if not images:
        raise UserError(f"{images_dir}: no .jpg, .jpeg or .png images")
    masks = _list_masks(root / "masks")
    csv_path = root / "labels.csv"
    labels = _read_labels_csv(csv_path, classes, images) if csv_path.is_file() else {}

    for image_id, path in images.items():
        if image_id not in masks and image_id not in labels:
            raise UserError(
                f"{path}: no annotation (neither masks/{image_id}.png nor a labels.csv row)"
            )

    train_file, val_file = root / "splits" / "train.txt", root / "splits" / "val.txt"
    if train_file.is_file() or val_file.is_file():
        val_ids = _read_split(val_file, root, images) if val_file.is_file() else []
        if train_file.is_file():
            train_ids = _read_split(train_file, root, images)
        else:
            held = set(val_ids)
            train_ids = [i for i in images if i not in held]
        both = set(train_ids) & set(val_ids)
        if both:
            raise UserError(
                f"{val_file}: {len(both)} ids are also in {train_file.name}, "
                f"e.g. {sorted(both)[0]!r}; train and val must not overlap"
            )
        split_note = "splits/" + " + ".join(f.name for f in (train_file, val_file) if f.is_file())
    else:
        train_ids, val_ids = list(images), []
        split_note = "no splits/ files: every image is train, val is empty"

    def record(image_id: str) -> Record:
        return Record(image_id, images[image_id], masks.get(image_id), labels.get(image_id))

    train = [record(i) for i in train_ids]
    val = [record(i) for i in val_ids]
    # Evaluation scores pixels: a val image with labels only cannot be scored.
    unmasked = [r for r in val if r.mask is None]
    if unmasked:
        raise UserError(
            f"{unmasked[0].image}: a val image needs a mask (masks/{unmasked[0].id}.png); "
            f"{len(unmasked)} val image(s) have none: give them masks or move them to train"
        )
    return DatasetSplits(
        name="folder",
        classes=classes,
        train=train,
        val=val,
        info={
            "root": str(root),
            "images": len(images),
            "with_mask": sum(1 for i in images if i in masks),
            "weak_only": sum(1 for i in images if i not in masks),
            "labels_csv": str(csv_path) if labels else None,
            "unused": len(images) - len(train) - len(val),
            "splits": split_note,
        },
    )
