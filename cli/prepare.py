"""`ddn prepare`: build the weak / strong / val splits and the HDF5 shards.

The command line around `ddn.data.prepare` (``ddn.prepare``), which takes the same options.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import default_of, setting_option, wait_option
from ddn.data import prepare
from pipeline.build import CropSettings
from pipeline.cluster import BACKENDS
from pipeline.combinatorial import RANDOM_BOXES
from pipeline.prepare import NEGATIVES, ShardSettings, SplitSettings
from pipeline.proposals import METHODS, ProposalConfig

PathArg = click.Path(path_type=Path)


SHOW_SKIPPED = 20  # skipped files named on the terminal; manifest.json lists them all


@click.command("prepare")
@click.argument("out", type=PathArg)
@click.option(
    "--dataset",
    type=click.Choice(["voc", "coco", "folder"]),
    required=True,
    help="Dataset adapter. The synthetic set from `ddn synth` is in VOC layout.",
)
@click.option(
    "--root",
    type=PathArg,
    required=True,
    help="voc: dir with VOCdevkit (or VOC2012); coco: train images; folder: the folder.",
)
@click.option(
    "--sbd-root",
    type=PathArg,
    default=None,
    help="voc: SBD 'dataset' dir, for the standard 10,582-image train_aug.",
)
@click.option("--ann", type=PathArg, default=None, help="coco: instances json of --root.")
@click.option("--val-root", type=PathArg, default=None, help="coco: validation images.")
@click.option("--val-ann", type=PathArg, default=None, help="coco: validation instances json.")
@click.option(
    "--categories",
    default=None,
    help="coco: comma-separated category names to keep (e.g. the 20 VOC classes).",
)
# --strong-per-class and --seed keep the command's own help: the first takes 'full' where
# SplitSettings takes None, the second seeds both SplitSettings and CropSettings.
@click.option(
    "--strong-per-class",
    type=str,  # a number or 'full'
    default=default_of(prepare, "strong_per_class"),
    help="Strong images per class (N x C in all), or 'full' for every mask with an object.",
)
@setting_option(SplitSettings, "strong_list", type=PathArg)
@setting_option(SplitSettings, "weak_from", type=click.Choice(["all", "strong"]))
@setting_option(SplitSettings, "allow_short", is_flag=True)
@setting_option(SplitSettings, "negatives", type=click.Choice(NEGATIVES))
@click.option(
    "--seed",
    default=default_of(prepare, "seed"),
    help="Seed for the strong split, random boxes and subsets.",
)
@setting_option(ProposalConfig, "method", type=click.Choice(METHODS))
@setting_option(CropSettings, "per_subset", "--proposals")
@setting_option(ProposalConfig, "edge_model", type=PathArg)
@setting_option(ProposalConfig, "max_boxes")
@setting_option(ProposalConfig, "alpha", "--edgebox-alpha")
@setting_option(ProposalConfig, "beta", "--edgebox-beta")
@setting_option(ProposalConfig, "min_score", "--edgebox-min-score")
@setting_option(CropSettings, "enclose")
@setting_option(CropSettings, "random_boxes", type=click.Choice(RANDOM_BOXES))
@setting_option(CropSettings, "whole_image", "--whole-image/--no-whole-image")
@setting_option(CropSettings, "scales_from", metavar="T")
@setting_option(CropSettings, "max_subsets")
@setting_option(CropSettings, "materialize", type=int)
@setting_option(ShardSettings, "shard_size")
@setting_option(ShardSettings, "strong_shard_size")
@setting_option(ShardSettings, "jobs")
@setting_option(ShardSettings, "backend", type=click.Choice(BACKENDS))
@setting_option(ShardSettings, "scheduler", metavar="ADDRESS")
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Skip unusable images (listed in the manifest) instead of stopping.",
)
@click.option("--overwrite", is_flag=True, help="Replace a directory prepared differently.")
@wait_option("OUT")
def command(
    out: Path,
    dataset: str,
    root: Path,
    sbd_root: Path | None,
    ann: Path | None,
    val_root: Path | None,
    val_ann: Path | None,
    categories: str | None,
    strong_per_class: str,
    strong_list: Path | None,
    weak_from: str,
    allow_short: bool,
    negatives: str,
    seed: int,
    method: str,
    proposals: int,
    edge_model: Path | None,
    max_boxes: int,
    edgebox_alpha: float,
    edgebox_beta: float,
    edgebox_min_score: float,
    enclose: float,
    random_boxes: str,
    whole_image: bool,
    scales_from: float,
    max_subsets: int,
    materialize: int | None,
    shard_size: int,
    strong_shard_size: int,
    jobs: int,
    backend: str,
    scheduler: str | None,
    skip_bad: bool,
    overwrite: bool,
    wait: bool,
) -> None:
    """Build splits and shards (images, label maps, combinatorial crop geometry) in OUT."""
    manifest = prepare(
        out,
        dataset=dataset,
        root=root,
        sbd_root=sbd_root,
        ann=ann,
        val_root=val_root,
        val_ann=val_ann,
        categories=categories,
        strong_per_class=strong_per_class,
        strong_list=strong_list,
        weak_from=weak_from,
        allow_short=allow_short,
        negatives=negatives,
        seed=seed,
        method=method,
        proposals=proposals,
        edge_model=edge_model,
        max_boxes=max_boxes,
        edgebox_alpha=edgebox_alpha,
        edgebox_beta=edgebox_beta,
        edgebox_min_score=edgebox_min_score,
        enclose=enclose,
        random_boxes=random_boxes,
        whole_image=whole_image,
        scales_from=scales_from,
        max_subsets=max_subsets,
        materialize=materialize,
        shard_size=shard_size,
        strong_shard_size=strong_shard_size,
        jobs=jobs,
        backend=backend,
        scheduler=scheduler,
        skip_bad=skip_bad,
        overwrite=overwrite,
        wait=wait,
    )
    for w in manifest["warnings"]:
        click.echo(f"warning: {w}", err=True)
    skipped = manifest["skipped"]
    for bad in skipped[:SHOW_SKIPPED]:
        click.echo(f"skipped: {bad['file']}: {bad['reason']}", err=True)
    if len(skipped) > SHOW_SKIPPED:
        click.echo(f"skipped: {len(skipped) - SHOW_SKIPPED} more (manifest.json)", err=True)
    dropped = manifest["negatives"].get("dropped")
    if dropped:
        click.echo(
            f"negatives: left out {dropped['train']} train and {dropped['val']} val "
            "background-only images (--negatives drop)"
        )
    sp = manifest["splits"]
    crops = sum(s["crops"] for s in manifest["shards"])
    click.echo(
        f"prepared {out}: {sp['weak']} weak{_negatives(manifest, 'weak')}, {sp['strong']} "
        f"strong ({crops} crops), {sp['val']} val images{_negatives(manifest, 'val')}"
    )


def _negatives(manifest: dict, kind: str) -> str:
    n = sum(s["negatives"] for s in manifest["shards"] if s["kind"] == kind)
    return f" ({n} negative{'s' * (n != 1)})" if n else ""
