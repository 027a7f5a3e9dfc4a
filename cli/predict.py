"""`ddn predict`: segment image files with a trained classifier + segmenter pair (or a
DeconvNet baseline run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from cli.options import inference_options, run_options
from ddn.inference import Prediction, check_maps, predict_images
from ddn.predictor import load
from ddn.trained_runs import BaselineModels, Models, load_for_inference, resolve_device
from ddn.visualize import overlay, save_label_png, save_maps, save_rgb
from pipeline.errors import BadInputError, UserError
from pipeline.imageio import load_image
from pipeline.outpaths import check_output_dir, check_output_file, write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
RESULTS = "predictions.json"


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Files named on the command line, and the image files (by suffix) of directories.

    A directory is read non-recursively, sorted by name; its other files are ignored,
    while a file named explicitly is always tried.
    """
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or directory")
    if not files:
        raise UserError(f"no image files in {', '.join(str(p) for p in inputs)}")
    return list(dict.fromkeys(files))  # a file given twice is predicted once


def check_readable(files: list[Path], skip_bad: bool) -> tuple[list[Path], list[dict]]:
    """Decode every file once before any work, so a bad one fails the run up front."""
    good, skipped = [], []
    for path in tqdm(files, desc="check", unit="img", disable=None, leave=False):
        try:
            load_image(path)
        except BadInputError as e:
            if not skip_bad:
                raise
            skipped.append({"file": str(path), "reason": e.reason})
            continue
        good.append(path)
    return good, skipped


def output_names(files: list[Path]) -> list[str]:
    """One output stem per file: the file's stem, numbered when two files share it."""
    seen: dict[str, int] = {}
    names = []
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count + 1}")
    return names


def _record(path: Path, name: str, p: Prediction, classes: list[str], maps: bool) -> dict:
    entry: dict[str, Any] = {
        "file": str(path),
        "mask": f"{name}.png",
        "overlay": f"overlays/{name}.png",
        "size": list(p.pred.shape),
        "labels": [
            {"class": classes[k], "index": k, "prob": round(float(p.probs[k - 1]), 6)}
            for k in p.labels
        ],
        "probs": {classes[k + 1]: round(float(v), 6) for k, v in enumerate(p.probs)},
    }
    if maps:
        entry["maps"] = f"maps/{name}.png"
    return entry


def predict(
    files: list[Path],
    models: Models | BaselineModels,
    out: Path,
    *,
    threshold: float = 0.5,
    batch: int = 8,
    maps: bool = False,
) -> list[dict]:
    """Segment `files` (all readable) into `out`; one JSON-ready record per file."""
    records = []
    names = output_names(files)
    progress = tqdm(total=len(files), desc="predict", unit="img", disable=None)
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        images = [load_image(path)[1] for path in chunk]
        preds = predict_images(models, images, threshold, keep_maps=maps)
        for path, name, image, p in zip(chunk, names[start:], images, preds, strict=False):
            save_label_png(out / f"{name}.png", p.pred)
            save_rgb(out / "overlays" / f"{name}.png", overlay(image, p.pred, models.classes))
            if maps:
                save_maps(out / "maps" / f"{name}.png", image, p, models.classes)
            records.append(_record(path, name, p, models.classes, maps))
        progress.update(len(chunk))
    progress.close()
    return records


def _summary(record: dict) -> str:
    picked = ", ".join(f"{x['class']} {x['prob']:.2f}" for x in record["labels"])
    return f"{record['file']}: {picked or '(no object found: all background)'}"


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_options()
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory: <name>.png, overlays/, predictions.json.",
)
@inference_options(predict, load)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Skip unreadable images (listed in predictions.json) instead of stopping.",
)
@click.option("--save-maps", is_flag=True, help="Also write foreground and bridge maps.")
def command(
    inputs: tuple[Path, ...],
    cls_run: Path | None,
    seg_run: Path,
    out: Path,
    threshold: float,
    batch: int,
    device: str,
    skip_bad: bool,
    save_maps: bool,
) -> None:
    """Segment IMAGE_OR_DIR...: a VOC-palette PNG and an overlay per image, and the
    picked labels with their probabilities in OUT/predictions.json. A DeconvNet baseline
    run (no --cls) lists the classes its mask contains, each with its highest pixel
    probability."""
    check_output_dir(out, "--out", ["overlays", *(["maps"] if save_maps else [])])
    check_output_file(out / RESULTS, "--out")
    files, skipped = check_readable(collect_inputs(list(inputs)), skip_bad)
    if not files:  # --skip-bad left nothing: not a success
        raise UserError(
            f"no readable image among {len(skipped)} ("
            + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
            + ("; ..." if len(skipped) > 3 else "")
            + ")"
        )
    models = load_for_inference(cls_run, seg_run, resolve_device(device))
    check_maps(models, save_maps)
    records = predict(files, models, out, threshold=threshold, batch=batch, maps=save_maps)
    result = {
        "classes": models.classes,
        "threshold": threshold,
        "cls_run": None if cls_run is None else str(cls_run),
        "seg_run": str(seg_run),
        "images": records,
        "skipped": skipped,
    }
    write_text(out / RESULTS, json.dumps(result, indent=1))
    for record in records:
        click.echo(_summary(record))
    for s in skipped:
        click.echo(f"skipped {s['file']}: {s['reason']}", err=True)
    click.echo(f"{len(records)} image{'s' * (len(records) != 1)} -> {out} ({RESULTS})")
