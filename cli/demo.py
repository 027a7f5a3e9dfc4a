"""`ddn demo`: the main job end to end on the built-in synthetic dataset.

Today: synth -> prepare -> inspect. Training and evaluation join when the trainers land.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.build import CropSettings
from pipeline.datasets import load_dataset
from pipeline.inspect import draw_grid, format_summary, summarize
from pipeline.prepare import ShardSettings, SplitSettings, prepare
from pipeline.proposals import ProposalConfig
from pipeline.synth import generate


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("data/demo"),
    show_default=True,
    help="Workspace: data/, prepared/ and pictures go here.",
)
@click.option("--images", default=600, show_default=True, help="Synthetic images.")
@click.option("--classes", default=10, show_default=True, help="Synthetic classes.")
@click.option("--size", default=128, show_default=True, help="Synthetic image size.")
@click.option("--strong-per-class", default=5, show_default=True)
@click.option("--jobs", default=-1, show_default=True, help="Parallel workers for prepare.")
@click.option("--seed", default=0, show_default=True)
def command(
    out: Path, images: int, classes: int, size: int, strong_per_class: int, jobs: int, seed: int
) -> None:
    """Make a synthetic dataset, prepare it, and show what was prepared."""
    click.echo(f"[1/3] synthetic dataset -> {out / 'data'}")
    generate(out / "data", images=images, classes=classes, size=size, seed=seed, val_fraction=0.2)
    click.echo(f"[2/3] prepare -> {out / 'prepared'}")
    ds = load_dataset("voc", root=out / "data")
    prepare(
        ds,
        out / "prepared",
        SplitSettings(strong_per_class=strong_per_class, seed=seed),
        CropSettings(ProposalConfig(method="edgebox"), seed=seed),
        ShardSettings(jobs=jobs),
        dataset_config={"root": str((out / "data").resolve())},
        overwrite=True,
    )
    click.echo("[3/3] inspect")
    grid = out / "crops.png"
    summary = summarize(out / "prepared")
    draw_grid(out / "prepared", grid, n=16, seed=seed)
    click.echo(format_summary(summary))
    click.echo(f"  sample crops   {grid}")
