"""`ddn train-cls`: train the multi-label classifier on a prepared directory's weak set."""

from __future__ import annotations

import click

from cli.options import (
    config_fields,
    data_option,
    default_of,
    is_reporting_rank,
    run_dir_option,
    training_options,
)
from ddn.models import ARCHS
from ddn.train.config import ClsConfig


@click.command("train-cls", context_settings={"show_default": True})
@data_option()
@run_dir_option()
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=default_of(ClsConfig, "arch"),
    help="vgg16 reproduces the paper; vgg16_bn trains small models from scratch.",
)
@click.option(
    "--width", default=default_of(ClsConfig, "width"), help="Channel fraction (1.0 = VGG-16)."
)
@click.option(
    "--input-size",
    default=default_of(ClsConfig, "input_size"),
    help="Network input side (a multiple of 32).",
)
@click.option(
    "--batch", default=default_of(ClsConfig, "batch"), help="Images per step per process."
)
@click.option(
    "--iters",
    type=int,
    default=default_of(ClsConfig, "iters"),
    help="Optimizer steps (overrides --epochs).",
)
@click.option(
    "--epochs",
    default=default_of(ClsConfig, "epochs"),
    help="Passes over the weak set (when --iters is not given).",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adamw"]),
    default=default_of(ClsConfig, "optimizer"),
    help="sgd (momentum) as the reference; adamw for small models from scratch. Not adamw "
    "for pretrained VGG-16 without BN at --lr 1e-3: it diverges to a constant output.",
)
@click.option("--lr", default=default_of(ClsConfig, "lr"), help="Backbone learning rate.")
@click.option(
    "--head-lr-mult",
    default=default_of(ClsConfig, "head_lr_mult"),
    help="fc6/fc7/score learn this many times faster.",
)
@click.option("--momentum", default=default_of(ClsConfig, "momentum"))
@click.option("--weight-decay", default=default_of(ClsConfig, "weight_decay"))
@click.option(
    "--warmup",
    type=int,
    default=default_of(ClsConfig, "warmup"),
    help="Linear warm-up steps [default: min(500, iters/10)].",
)
@click.option(
    "--decay",
    type=click.Choice(["cosine", "step", "constant"]),
    default=default_of(ClsConfig, "decay"),
    help="After warm-up: cosine to 0, or x0.1 at 2/3 of the run.",
)
@click.option(
    "--pos-weight",
    default=default_of(ClsConfig, "pos_weight"),
    help="BCE weight of each class's positive images: 'auto' sets it from the class's "
    "share f of the training images as sqrt((1-f)/f), in [1, 10]; 1 is the reference's "
    "plain loss.",
)
@click.option(
    "--pad-square/--no-pad-square",
    default=default_of(ClsConfig, "pad_square"),
    help="Random crops of the image zero-padded to a square, the view the classifier gets "
    "at inference (off: crops of the image itself).",
)
@click.option(
    "--weights",
    default=default_of(ClsConfig, "weights"),
    help="Encoder init: imagenet (torchvision download), a .pth state dict, or none.",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=1),
    default=default_of(ClsConfig, "val_every"),
    help="Steps between validations [default: an epoch, at most 10 times a run].",
)
@training_options(ClsConfig, seeds="the augmentation", compiles="the model")
def command(**options) -> None:
    """Train the classifier (multi-label BCE) with validation mAP after every epoch.

    Multi-GPU: torchrun --nproc_per_node N -m cli.main train-cls ...
    """
    from ddn.metrics import format_ap_table
    from ddn.train.cls import train_cls

    result = train_cls(ClsConfig(**config_fields(options)))
    if not is_reporting_rank():
        return
    if len(result.val_ap):
        click.echo(format_ap_table(result.classes, result.val_ap, result.val_map))
    click.echo(f"classifier saved to {result.run / 'model.pt'}")
