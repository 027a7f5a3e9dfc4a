"""Weak / strong / val splits.

Strong set, "N per class" (the paper's "5 (x20 classes)"): for each class c = 1..C in
turn, shuffle (seeded) the training images whose mask contains c and that were not
chosen for an earlier class, and take the first N. This gives N x C images when every
class has enough. A class with no image at all is skipped with a warning; a class
with fewer than N images is an error unless ``allow_short`` (then all of its images
are taken). A class whose remaining images run short only because earlier classes
already took images containing it gets what remains: those earlier picks contain it.

A background-only image (its mask holds no class) is never strong, under any rule: it
has no label subset to crop. It stays in the weak set and in val as a negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.imageio import read_id_list


def parse_strong_per_class(value: str) -> int | None:
    """'5', '10', ... -> int; 'full' -> None (every image whose mask holds an object)."""
    if value.strip().lower() in ("full", "all"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"--strong-per-class: expected a number or 'full', got {value!r}") from None
    if n < 1:
        raise UserError(f"--strong-per-class: must be at least 1, got {n}")
    return n


def select_strong(
    ids: Sequence[str],
    mask_classes: dict[str, tuple[int, ...]],
    classes: Sequence[str],
    per_class: int | None,
    seed: int,
    allow_short: bool = False,
) -> tuple[list[str], dict]:
    """Pick the strong images among ``ids``: those with a mask (keys of ``mask_classes``)
    that holds at least one class.

    Returns the ids in dataset order and a report for the manifest.
    """
    eligible = [i for i in ids if mask_classes.get(i)]
    if per_class is None:
        return eligible, {"rule": "full", "images": len(eligible)}
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    report: dict = {"rule": "per_class", "per_class": per_class, "seed": seed, "classes": {}}
    warnings: list[str] = []
    for c in range(1, len(classes)):
        having = [i for i in eligible if c in mask_classes[i]]
        name = classes[c]
        if not having:
            warnings.append(f"class {name!r} has no training image with a mask; none chosen")
            report["classes"][name] = {"available": 0, "picked": 0}
            continue
        if len(having) < per_class and not allow_short:
            raise UserError(
                f"--strong-per-class {per_class}: class {name!r} has only {len(having)} "
                "training images with a mask (use --allow-short to take all of them)"
            )
        candidates = [i for i in having if i not in chosen]
        picked = [candidates[j] for j in rng.permutation(len(candidates))[:per_class]]
        chosen.update(picked)
        report["classes"][name] = {"available": len(having), "picked": len(picked)}
    report["warnings"] = warnings
    order = {i: k for k, i in enumerate(ids)}
    return sorted(chosen, key=order.__getitem__), report


def read_strong_list(
    path: str | Path, train_ids: Sequence[str], mask_classes: dict[str, tuple[int, ...]]
) -> list[str]:
    """A given strong list (e.g. a published split), checked against the training set;
    ``mask_classes`` holds the classes of each training image that has a mask."""
    listed = read_id_list(path)
    known = set(train_ids)
    for i in listed:
        if i not in known:
            raise UserError(f"{path}: id {i!r} is not a training image of this dataset")
        if i not in mask_classes:
            raise UserError(f"{path}: id {i!r} has no mask, so it cannot be a strong image")
        if not mask_classes[i]:
            raise UserError(
                f"{path}: id {i!r} has no object (background only), so it cannot be a strong image"
            )
    order = {i: k for k, i in enumerate(train_ids)}
    return sorted(set(listed), key=order.__getitem__)


def write_split_files(out: Path, splits: dict[str, Sequence[str]]) -> None:
    """``out/splits/<name>.txt``, one id per line."""
    d = out / "splits"
    d.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        tmp = d / f".{name}.txt.tmp"
        tmp.write_text("".join(f"{i}\n" for i in ids))
        tmp.replace(d / f"{name}.txt")
