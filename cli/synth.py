"""`ddn synth OUT`: write the built-in synthetic dataset in the PASCAL VOC 2012 layout."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.options import default_of
from pipeline.synth import VOC_CLASSES, generate


@click.command("synth", context_settings={"show_default": True})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=default_of(generate, "images"),
    help="Number of images.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=default_of(generate, "val_fraction"),
    help="Fraction of the images listed in val.txt (the rest in train.txt).",
)
@click.option(
    "--classes",
    type=click.IntRange(1, len(VOC_CLASSES)),
    default=default_of(generate, "classes"),
    help="Object classes; named after the first N VOC classes.",
)
@click.option(
    "--size",
    type=click.IntRange(min=32),
    default=default_of(generate, "size"),
    help="Image side in pixels.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=default_of(generate, "seed"),
    help="Same seed, same bytes.",
)
def command(
    out: Path, images: int, val_fraction: float, classes: int, size: int, seed: int
) -> None:
    """Write a synthetic dataset under OUT/VOCdevkit/VOC2012 (JPEGImages, SegmentationClass,
    ImageSets/Segmentation, classes.txt).

    Each class is one shape + texture pair; colours are random and never tell the class.
    Images hold 1-4 objects, possibly occluding each other, on a cluttered background.
    """
    start = time.perf_counter()
    root = generate(
        out, images=images, classes=classes, size=size, seed=seed, val_fraction=val_fraction
    )
    sets = root / "ImageSets" / "Segmentation"
    n_val = len((sets / "val.txt").read_text().split())
    click.echo(
        f"wrote {images} images ({images - n_val} train, {n_val} val), {classes} classes, "
        f"{size}x{size} px to {root} in {time.perf_counter() - start:.1f} s"
    )
