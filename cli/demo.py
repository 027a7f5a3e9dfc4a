"""`ddn demo`: the main job end to end on the built-in synthetic dataset.

synth -> prepare -> train-cls -> train-seg -> eval, with tiny models (VGG-16 with BN
at a fraction of its width, small inputs) sized to finish in minutes on a CPU. Every
step is the same code the individual commands run; each one resumes when re-run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cli.options import default_of, setting_option, wait_option
from ddn.train.config import ClsConfig
from pipeline.build import CropSettings
from pipeline.datasets import load_dataset
from pipeline.inspect import draw_grid, format_summary, summarize
from pipeline.lock import exclusive_dir
from pipeline.outpaths import check_output_dir, write_text
from pipeline.prepare import ShardSettings, SplitSettings, prepare
from pipeline.proposals import ProposalConfig
from pipeline.synth import generate

# The demo's classifier beyond its size options. AdamW at one learning rate for head and
# backbone: a tiny VGG trained from scratch learns far faster so than with the reference's
# SGD recipe (measured in tests/test_train_cls.py). Warmup-stable-decay: the shape classes
# are learnt late, at full rate (a cosine decay slowed them: benchmarks/RESULTS.md), and
# the last 20% anneals. No DataLoader workers: the demo's weak set fits the readers'
# decoded-image cache, and on 2 cores workers slow the network's threads more than the
# cached examples cost (1.3x faster classifier: RESULTS.md).
CLASSIFIER_RECIPE = dict(
    arch="vgg16_bn",
    batch=32,
    optimizer="adamw",
    lr=2e-3,
    head_lr_mult=1.0,
    decay="wsd",
    weights="none",
    workers=0,
)


# The demo's random crop boxes lie in the last quarter of the way from the tight box to the
# whole image on the log scale (t ~ U[0.75, 1]; `ddn prepare --scales-from`): its objects are
# small (median 8% of the image) and its input is 64 px, and close-ups taught the
# segmenter little that carried over to whole images (+2.9 / +3.3 mIoU on seeds 1 / 3
# against U[0, 1]: benchmarks/RESULTS.md). Real datasets keep prepare's default, 0.
SCALES_FROM = 0.75


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("data/demo"),
    help="Workspace: data/, prepared/, cls/, seg/ and eval/ go here.",
)
@click.option("--images", default=2000, help="Synthetic images.")
@click.option("--classes", default=5, help="Synthetic classes.")
# 64 px rather than 96: the classifier is bound by the examples it sees (more steps or a
# wider net per example learn no more: benchmarks/RESULTS.md), and at 64 px a CPU runs
# ~1.7x the examples per second. The images are rendered at 64, not shrunk from 96, so
# their textures are not aliased (a 64 px input on 96 px renders lost: RESULTS).
@click.option("--size", default=64, help="Synthetic image size (px).")
@click.option(
    "--strong-per-class",
    default=default_of(SplitSettings, "strong_per_class"),
    help="Strong (pixel-mask) images per class.",
)
@click.option("--width", default=0.125, help="Channel fraction of VGG-16 (1.0 = full).")
@click.option("--input-size", default=64, help="Network input size (multiple of 32).")
@click.option("--cls-iters", default=3000, help="Classifier training steps.")
@click.option("--seg-iters", default=1000, help="Segmenter training steps.")
# A Choice, as the trainers' --device: a typo stops here, not after synth and prepare.
@setting_option(ClsConfig, "device", type=click.Choice(["auto", "cpu", "cuda"]))
@setting_option(ShardSettings, "jobs")
@click.option("--seed", default=default_of(generate, "seed"))
@wait_option("a directory under --out")
def command(
    out: Path,
    images: int,
    classes: int,
    size: int,
    strong_per_class: int,
    width: float,
    input_size: int,
    cls_iters: int,
    seg_iters: int,
    device: str,
    jobs: int,
    seed: int,
    wait: bool,
) -> None:
    """Make a synthetic dataset, prepare it, train both networks and evaluate them."""
    check_output_dir(out, "--out")  # before the imports below, which take seconds
    from ddn.evaluation import evaluate_and_report, format_report, json_safe
    from ddn.train.cls import train_cls
    from ddn.train.config import SegConfig
    from ddn.train.seg import train_seg
    from ddn.trained_runs import load_models, resolve_device

    started = time.time()
    # The whole workspace too: a second demo would regenerate data/ under this one's prepare.
    click.get_current_context().with_resource(exclusive_dir(out, "demo directory", wait))
    data, prepared = out / "data", out / "prepared"
    click.echo(f"[1/5] synthetic dataset -> {data}")
    generate(data, images=images, classes=classes, size=size, seed=seed, val_fraction=0.2)

    click.echo(f"[2/5] prepare -> {prepared}")
    prepare(
        load_dataset("voc", root=data),
        prepared,
        SplitSettings(strong_per_class=strong_per_class, seed=seed),
        CropSettings(ProposalConfig(method="edgebox"), seed=seed, scales_from=SCALES_FROM),
        ShardSettings(jobs=jobs),
        dataset_config={"root": str(data.resolve())},
        overwrite=True,  # the synthetic set was just rewritten: same config resumes
        wait=wait,
    )
    grid_crops = draw_grid(prepared, out / "crops.png", n=16, seed=seed)
    click.echo(format_summary(summarize(prepared)))

    # Each run directory is started afresh unless it finished before: then resume.
    def resume(run: Path) -> bool:
        return any(run.glob("checkpoint-*.pt"))

    click.echo(f"[3/5] train-cls -> {out / 'cls'}")
    train_cls(
        ClsConfig(
            data=str(prepared),
            out=str(out / "cls"),
            width=width,
            input_size=input_size,
            iters=cls_iters,
            device=device,
            seed=seed,
            resume=resume(out / "cls"),
            wait=wait,
            **CLASSIFIER_RECIPE,
        )
    )
    click.echo(f"[4/5] train-seg -> {out / 'seg'}")
    train_seg(
        SegConfig(
            data=str(prepared),
            cls=str(out / "cls"),
            out=str(out / "seg"),
            batch=16,
            accum=1,
            iters=seg_iters,
            bn_batches=20,
            device=device,
            workers=2,
            seed=seed,
            resume=resume(out / "seg"),
            wait=wait,
        )
    )
    click.echo(f"[5/5] eval -> {out / 'eval'}")
    models = load_models(out / "cls", out / "seg", resolve_device(device))

    def report(result: dict) -> None:
        click.echo(format_report(result))
        write_text(out / "eval" / "metrics.json", json.dumps(json_safe(result), indent=1))

    evaluate_and_report(report, prepared, models, save_pred=out / "eval", overlays=8)
    click.echo(f"predictions    {out / 'eval'} (palette PNGs; overlays in eval/overlays/)")
    if grid_crops:  # no crops, no picture: claim none
        click.echo(f"sample crops   {out / 'crops.png'}")
    click.echo(f"done in {(time.time() - started) / 60:.1f} min")
