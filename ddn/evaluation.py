"""Scoring a classifier + segmenter pair (or a DeconvNet baseline run) on a prepared
directory's masks: what ``ddn eval``, ``ddn demo`` and ``benchmarks/table1.py`` run.

`evaluate` is the public API (``ddn.evaluate``): run directories in, the dict ``ddn eval
--json`` prints out. `evaluate_models` takes loaded models and keeps NaN for an undefined
IoU (`json_safe` turns it into None); `evaluate_and_report` and `format_report` are the
CLI's report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from ddn.confusion import ConfusionMatrix
from ddn.inference import check_maps, predict_images
from ddn.metrics import mean_average_precision
from ddn.predictor import check_threshold, load_runs
from ddn.trained_runs import BaselineModels, Models, resolve_device
from ddn.visualize import overlay, save_label_png, save_maps, save_rgb
from pipeline.errors import UserError
from pipeline.imageio import safe_join
from pipeline.outpaths import WriteError, check_output_dir
from pipeline.readers import ValDataset

SPLITS = ("val", "strong")  # the shards that hold masks


def _as_is(item: Any) -> Any:
    # Items are numpy arrays of different sizes: no collation, no tensor conversion.
    return item


def _check_classes(data_classes: list[str], models: Models | BaselineModels, data: Path) -> None:
    """Refuse a data set whose classes are not the classifier's; adopt its names when
    the run recorded none."""
    recorded = models.config if isinstance(models, BaselineModels) else models.cls_config
    if len(data_classes) == len(models.classes) and "classes" not in recorded:
        models.classes = list(data_classes)
    if data_classes != models.classes:
        raise UserError(
            f"{data}: classes {data_classes[1:]} differ from the classifier's "
            f"{models.classes[1:]}; evaluate on the data set the runs were trained for"
        )


class PredictionsNotSaved(WriteError):
    """Saving a prediction failed; the metrics, computed all the same, are in `result`."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def check_save_pred(
    save_pred: Path, overlays: int, maps: bool, option: str = "--save-pred"
) -> None:
    """Refuse, before any work, a `save_pred` directory that cannot be written."""
    subdirs = (["overlays"] if overlays else []) + (["maps"] if maps and overlays else [])
    check_output_dir(save_pred, option, subdirs)


def evaluate_models(
    data: Path,
    models: Models | BaselineModels,
    *,
    split: str = "val",
    threshold: float = 0.5,
    batch: int = 8,
    workers: int = 2,
    limit: int | None = None,
    save_pred: Path | None = None,
    overlays: int = 8,
    maps: bool = False,
) -> dict[str, Any]:
    """Segment every image of `split`, compare with its mask; the metrics as a dict.

    With `save_pred`: ``<id>.png`` palette PNGs for every image, and for the first
    `overlays` images ``overlays/<id>.png`` (and with `maps` ``maps/<id>.png/.npz``).
    A DeconvNet baseline has no classifier: its ``cls_map`` is NaN (null in JSON), and
    `threshold` and `maps` do not apply to it.

    A failed write stops the saving, not the evaluation: every image is still scored,
    then `PredictionsNotSaved` carries the metrics and names the file.
    """
    baseline = isinstance(models, BaselineModels)
    check_maps(models, maps)
    ds = ValDataset(data, split)
    names = ds.classes
    _check_classes(names, models, data)
    n = len(ds) if limit is None else min(limit, len(ds))
    loader = DataLoader(
        ds if n == len(ds) else _Subset(ds, n),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
    )
    cm = ConfusionMatrix(len(names))
    probs, targets = [], []
    pending: list[dict] = []
    failed: list[WriteError] = []  # the first write that failed; nothing is saved after it

    def flush() -> None:
        saving = save_pred is not None and not failed
        keep = maps and saving and pending[0]["index"] < overlays
        preds = predict_images(models, [item["image"] for item in pending], threshold, keep)
        for item, p in zip(pending, preds, strict=True):
            cm.update(item["mask"], p.pred)
            probs.append(p.probs)
            targets.append(item["labels"])
            if save_pred is not None and not failed:
                try:
                    _save(save_pred, data, item, p, names, overlays, keep)
                except WriteError as e:
                    failed.append(e)
        pending.clear()

    for item in tqdm(loader, total=n, desc=f"eval {split}", unit="img", disable=None):
        pending.append(item)
        if len(pending) == batch:
            flush()
    if pending:
        flush()

    iou = cm.iou()
    result = {
        "split": split,
        "images": n,
        "threshold": None if baseline else threshold,  # a DeconvNet picks no labels
        "miou": cm.miou(),
        "miou_objects": cm.miou_objects(),
        "pixel_acc": cm.pixel_accuracy(),
        "cls_map": mean_average_precision(np.stack(probs), np.stack(targets))[0]
        if n and not baseline
        else math.nan,
        "per_class": {name: float(v) for name, v in zip(names, iou, strict=True)},
    }
    if failed:
        raise PredictionsNotSaved(
            f"{failed[0]}; predictions stop there, the metrics cover all {n} images", result
        )
    return result


class _Subset:
    """The first n items of a dataset (a picklable view for DataLoader workers)."""

    def __init__(self, ds: ValDataset, n: int) -> None:
        self.ds, self.n = ds, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.ds[index]


def _save(out: Path, data: Path, item: dict, p, names, overlays: int, maps: bool) -> None:
    image_id = item["id"]
    save_label_png(safe_join(out, f"{image_id}.png", data), p.pred)
    if item["index"] < overlays:
        panel = overlay(item["image"], p.pred, names, gt=item["mask"])
        save_rgb(safe_join(out / "overlays", f"{image_id}.png", data), panel)
        if maps:
            save_maps(safe_join(out / "maps", f"{image_id}.png", data), item["image"], p, names)


def evaluate_and_report(
    report: Callable[[dict[str, Any]], None], data: Path, models: Models | BaselineModels, **kw
) -> dict[str, Any]:
    """`evaluate_models`, then `report` the metrics; when saving predictions failed, report them
    all the same and raise after, so the metrics are never lost to a full disk."""
    try:
        result = evaluate_models(data, models, **kw)
    except PredictionsNotSaved as e:
        report(e.result)
        raise
    report(result)
    return result


def format_report(result: dict[str, Any]) -> str:
    """The per-class IoU table and the summary lines, in percent."""
    per_class = result["per_class"]
    width = max(12, *(len(k) for k in per_class)) + 2
    lines = [f"{'class':<{width}}  IoU %"]
    for name, v in per_class.items():
        lines.append(f"{name:<{width}}{_pct(v)}")
    c = len(per_class)
    lines += [
        "",
        f"{result['images']} {result['split']} images"
        + ("" if result["threshold"] is None else f", threshold {result['threshold']}"),
        f"{f'mIoU ({c} classes, incl. background)':<40}{_pct(result['miou'])}",
        f"{f'mIoU ({c - 1} object classes)':<40}{_pct(result['miou_objects'])}",
        f"{'pixel accuracy':<40}{_pct(result['pixel_acc'])}",
        f"{'classifier mAP':<40}{_pct(result['cls_map'])}",
    ]
    return "\n".join(lines)


def _pct(v: float) -> str:
    return f"{'n/a':>7}" if math.isnan(v) else f"{100 * v:7.2f}"


def json_safe(obj: Any) -> Any:
    # JSON has no NaN: an undefined IoU (class in neither ground truth nor prediction)
    # becomes null.
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def evaluate(
    prepared_dir: str | Path,
    cls_run: str | Path | None,
    seg_run: str | Path | None = None,
    *,
    split: str = "val",
    threshold: float = 0.5,
    batch: int = 8,
    workers: int = 2,
    limit: int | None = None,
    save_pred: str | Path | None = None,
    overlays: int = 8,
    maps: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """``ddn eval`` as a function: the dict ``ddn eval --json`` prints (miou, miou_objects,
    pixel_acc, cls_map, per_class, ...; None where an IoU is undefined).

    The runs are given as to `ddn.load`: ``evaluate(prepared_dir, cls_run, seg_run)``, or
    a DeconvNet baseline run alone. The keywords are ``ddn eval``'s options. A failed write
    under ``save_pred`` raises `PredictionsNotSaved` (a `UserError`) after every image was
    scored; its ``result`` holds the metrics.
    """
    if split not in SPLITS:
        raise UserError(f"split: expected {' or '.join(SPLITS)}, got {split!r}")
    check_threshold(threshold)
    for name, value, low in (("batch", batch, 1), ("workers", workers, 0),
                             ("limit", limit, 1), ("overlays", overlays, 0)):  # fmt: skip
        if value is not None and value < low:
            raise UserError(f"{name}: must be at least {low}, got {value}")
    if maps and save_pred is None:
        raise UserError("maps=True needs save_pred (the maps are written there)")
    if save_pred is not None:
        check_save_pred(Path(save_pred), overlays, maps, "save_pred")
    models = load_runs(cls_run, seg_run, resolve_device(device))
    try:
        result = evaluate_models(
            Path(prepared_dir),
            models,
            split=split,
            threshold=threshold,
            batch=batch,
            workers=workers,
            limit=limit,
            save_pred=None if save_pred is None else Path(save_pred),
            overlays=overlays,
            maps=maps,
        )
    except PredictionsNotSaved as e:
        e.result = json_safe(e.result)
        raise
    return json_safe(result)
