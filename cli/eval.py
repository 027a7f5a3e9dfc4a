"""`ddn eval`: mIoU of a classifier + segmenter pair on a prepared directory's masks.

The evaluation itself is `ddn.evaluation`'s; this module is the command line around it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cli.options import data_option, default_of, inference_options, json_option, run_options
from ddn.evaluation import (
    SPLITS,
    check_save_pred,
    evaluate,
    evaluate_and_report,
    format_report,
    json_safe,
)
from ddn.trained_runs import load_for_inference, resolve_device
from pipeline.errors import UserError


@click.command("eval")
@data_option()
@run_options()
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default=default_of(evaluate, "split"),
    help="Images to evaluate: val, or strong (the segmenter's training images).",
)
@inference_options(evaluate)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=default_of(evaluate, "workers"),
    help="Image decoding workers.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=default_of(evaluate, "limit"),
    help="Evaluate only the first N images.",
)
@json_option()
@click.option(
    "--save-pred",
    type=click.Path(path_type=Path),
    default=default_of(evaluate, "save_pred"),
    help="Write <id>.png (VOC palette, original size) for every image here.",
)
@click.option(
    "--overlays",
    type=click.IntRange(min=0),
    default=default_of(evaluate, "overlays"),
    help="With --save-pred: image | ground truth | prediction for the first N images.",
)
@click.option(
    "--save-maps",
    is_flag=True,
    default=default_of(evaluate, "maps"),
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
        click.echo(json.dumps(json_safe(result)) if as_json else format_report(result))

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
