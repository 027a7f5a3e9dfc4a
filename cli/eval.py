"""`ddn eval`: mIoU of a classifier + segmenter pair on a prepared directory's masks."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from click.core import ParameterSource
from torch.utils.data import DataLoader
from tqdm import tqdm

from cli.options import data_option, inference_options, json_option, run_options
from ddn.confusion import ConfusionMatrix
from ddn.inference import check_maps, predict_images
from ddn.metrics import mean_average_precision
from ddn.runs import BaselineModels, Models, load_for_inference, resolve_device
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


def check_save_pred(save_pred: Path, overlays: int, maps: bool) -> None:
    """Refuse, before any work, a --save-pred directory that cannot be written."""
    subdirs = (["overlays"] if overlays else []) + (["maps"] if maps and overlays else [])
    check_output_dir(save_pred, "--save-pred", subdirs)


def evaluate(
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
    """`evaluate`, then `report` the metrics; when saving predictions failed, report them
    all the same and raise after, so the metrics are never lost to a full disk."""
    try:
        result = evaluate(data, models, **kw)
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


def _json_safe(obj: Any) -> Any:
    # JSON has no NaN: an undefined IoU (class in neither ground truth nor prediction)
    # becomes null.
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


@click.command("eval")
@data_option()
@run_options()
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="val",
    help="Images to evaluate: val, or strong (the segmenter's training images).",
)
@inference_options()
@click.option("--workers", type=click.IntRange(min=0), default=2, help="Image decoding workers.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images."
)
@json_option()
@click.option(
    "--save-pred",
    type=click.Path(path_type=Path),
    default=None,
    help="Write <id>.png (VOC palette, original size) for every image here.",
)
@click.option(
    "--overlays",
    type=click.IntRange(min=0),
    default=8,
    help="With --save-pred: image | ground truth | prediction for the first N images.",
)
@click.option(
    "--save-maps",
    is_flag=True,
    help="With --save-pred: foreground and bridge maps for the --overlays images.",
)
def command(
    data: Path,
    cls_run: Path | None,
    seg_run: Path,
    split: str,
    threshold: float,
    batch: int,
    device: str,
    workers: int,
    limit: int | None,
    as_json: bool,
    save_pred: Path | None,
    overlays: int,
    save_maps: bool,
) -> None:
    """Segment the validation images and report per-class IoU, mIoU, pixel accuracy
    and the classifier's mAP. mIoU counts C+1 classes with background, as the paper."""
    if save_maps and save_pred is None:
        raise UserError("--save-maps needs --save-pred DIR (the maps are written there)")
    given = click.get_current_context().get_parameter_source("overlays")
    if save_pred is None and given is ParameterSource.COMMANDLINE:
        raise UserError("--overlays needs --save-pred DIR (the overlays are written there)")
    if save_pred is not None:
        check_save_pred(save_pred, overlays, save_maps)
    models = load_for_inference(cls_run, seg_run, resolve_device(device))

    def report(result: dict[str, Any]) -> None:
        click.echo(json.dumps(_json_safe(result)) if as_json else format_report(result))

    evaluate_and_report(
        report,
        data,
        models,
        split=split,
        threshold=threshold,
        batch=batch,
        workers=workers,
        limit=limit,
        save_pred=save_pred,
        overlays=overlays,
        maps=save_maps,
    )
    if save_pred is not None and not as_json:
        click.echo(f"predictions    {save_pred}")
