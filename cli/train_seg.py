"""`ddn train-seg`: train bridge + segmenter on the strong crops with a frozen classifier."""

from __future__ import annotations

import click

from cli.options import (
    PATH,
    config_fields,
    data_option,
    default_of,
    is_reporting_rank,
    run_dir_option,
    training_options,
)
from ddn.models import ARCHS
from ddn.train.config import DeconvConfig, SegConfig
from pipeline.errors import UserError

# Options whose default depends on --baseline: None on the command line, then SegConfig's or
# DeconvConfig's value (a DecoupledNet segmenter copies the classifier's layout).
BASELINE_DEFAULTS = ("arch", "input_size", "width", "weights")


@click.command("train-seg", context_settings={"show_default": True})
@data_option()
@click.option(
    "--cls", type=PATH, default=None, help="A finished `ddn train-cls` run (not for --baseline)."
)
@run_dir_option()
@click.option(
    "--baseline",
    type=click.Choice(["deconvnet"]),
    default=None,
    help="Train the paper's DeconvNet baseline instead: a (C+1)-class VGG-16 encoder + "
    "deconvolution network, end to end on the strong crops, no classifier.",
)
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=None,
    help="--baseline only: encoder layout, as train-cls "
    f"[default: {default_of(DeconvConfig, 'arch')}].",
)
@click.option(
    "--input-size",
    type=int,
    default=default_of(SegConfig, "input_size"),
    help=f"--baseline: crop side [default: {default_of(DeconvConfig, 'input_size')}]. "
    "DecoupledNet crops at the classifier's input size (any other is refused). Boxes are "
    "warped to 350/320 of it.",
)
@click.option(
    "--width",
    type=float,
    default=default_of(SegConfig, "width"),
    help="--baseline: encoder/decoder channel fraction "
    f"[default: {default_of(DeconvConfig, 'width'):g}]. DecoupledNet: must equal "
    "the classifier's (the segmenter unpools with its switches) [default: it].",
)
@click.option(
    "--batch", default=default_of(SegConfig, "batch"), help="Crops per micro-batch per process."
)
@click.option(
    "--accum",
    type=int,
    default=default_of(SegConfig, "accum"),
    help="Micro-batches per step [default: 64 / (batch x processes)].",
)
@click.option(
    "--iters",
    type=int,
    default=default_of(SegConfig, "iters"),
    help="Steps [default: the reference's for the strong split: 5/class 5,500, "
    "10: 7,500, 25: 15,000, full: 17,500]; the decay step scales with it.",
)
@click.option(
    "--decay-step",
    type=int,
    default=default_of(SegConfig, "decay_step"),
    help="Step of the x0.1 decay [default: the reference's, scaled].",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adamw"]),
    default=default_of(SegConfig, "optimizer"),
    help="sgd with momentum (the reference) or adamw (tiny models from scratch, e.g. the "
    "demo's, learn faster with it; pass a smaller --lr, e.g. 1e-3).",
)
@click.option("--lr", default=default_of(SegConfig, "lr"))
@click.option("--momentum", default=default_of(SegConfig, "momentum"), help="SGD only.")
@click.option("--weight-decay", default=default_of(SegConfig, "weight_decay"))
@click.option(
    "--fg-weight",
    default=default_of(SegConfig, "fg_weight"),
    help="Loss weight of foreground pixels (--baseline: of every object class): 'auto' "
    "sets it from the training crops' foreground share f as sqrt((1-f)/f), in [1, 10]; "
    "1 is the reference's plain cross-entropy.",
)
@click.option(
    "--bn-batches",
    default=default_of(SegConfig, "bn_batches"),
    help="Batches for the final BN statistics re-estimation (0: skip).",
)
@click.option(
    "--weights",
    default=None,
    help="Init of bridge + segmenter: none, or a train-seg run / model.pt "
    f"[default: {default_of(SegConfig, 'weights')}]. --baseline: the encoder's, as train-cls: "
    f"imagenet, none or a .pth [default: {default_of(DeconvConfig, 'weights')}].",
)
@training_options(
    SegConfig,
    seeds="the crops",
    compiles="the networks",
    workers="DataLoader worker processes (cpu crop path).",
    beside_device=(
        click.option(
            "--crop-path",
            type=click.Choice(["auto", "gpu", "cpu"]),
            default=default_of(SegConfig, "crop_path"),
            help="gpu: crops cut on the device (auto on CUDA); cpu: DataLoader workers.",
        ),
    ),
)
def command(**options) -> None:
    """Train the bridging layers and the segmenter (DecoupledNet's second stage).

    Multi-GPU: torchrun --nproc_per_node N -m cli.main train-seg ...
    """
    from ddn.train.seg import train_seg

    options = config_fields(options)
    baseline, arch = options.pop("baseline"), options.pop("arch")
    if baseline == "deconvnet":
        result = _train_deconvnet(options, arch)
    else:
        if options["cls"] is None:
            raise UserError("train-seg: --cls CLASSIFIER_RUN is required (or --baseline deconvnet)")
        if arch is not None:
            raise UserError("--arch: only with --baseline (the classifier run sets it)")
        options["weights"] = options["weights"] or default_of(SegConfig, "weights")
        result = train_seg(SegConfig(**options))
    if not is_reporting_rank():
        return
    what = "DeconvNet baseline" if baseline else "segmenter"
    click.echo(f"{what} saved to {result.run / 'model.pt'}")


def _train_deconvnet(options: dict, arch: str | None):
    from ddn.train.deconvnet import train_deconvnet

    if options.pop("cls") is not None:
        raise UserError("--baseline deconvnet trains without a classifier: drop --cls")
    options["arch"] = arch
    for key in BASELINE_DEFAULTS:  # None on the command line: the baseline's own default
        if options.get(key) is None:
            options[key] = default_of(DeconvConfig, key)
    return train_deconvnet(DeconvConfig(**options))
