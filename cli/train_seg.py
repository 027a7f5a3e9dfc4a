"""`ddn train-seg`: train bridge + segmenter on the strong crops with a frozen classifier."""

from __future__ import annotations

import click

from cli.options import (
    PATH,
    config_fields,
    data_option,
    default_of,
    help_of,
    is_reporting_rank,
    run_dir_option,
    setting_option,
    training_options,
)
from ddn.models import ARCHS
from ddn.train.config import DeconvConfig, SegConfig
from pipeline.errors import UserError

# Options whose default depends on --baseline: None on the command line, then SegConfig's or
# DeconvConfig's value (a DecoupledNet segmenter copies the classifier's layout).
BASELINE_DEFAULTS = ("arch", "input_size", "width", "weights")


def _baseline(name: str) -> str:
    """DeconvConfig's help for `name` and its default, for the part of an option's help
    that tells what it sets with --baseline."""
    return f"{help_of(DeconvConfig, name)} [default: {default_of(DeconvConfig, name)}]"


@click.command("train-seg", context_settings={"show_default": True})
@data_option()
@click.option(
    "--cls",
    type=PATH,
    default=None,  # --baseline deconvnet trains without one; command() asks for it otherwise
    help=f"{help_of(SegConfig, 'cls')} Not for --baseline.",
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
    help=f"--baseline only: {_baseline('arch')}.",
)
@click.option(
    "--input-size",
    type=int,
    default=default_of(SegConfig, "input_size"),
    help=f"--baseline: {_baseline('input_size')}. {help_of(SegConfig, 'input_size')}",
)
@click.option(
    "--width",
    type=float,
    default=default_of(SegConfig, "width"),
    help=f"--baseline: {_baseline('width')}. DecoupledNet: {help_of(SegConfig, 'width')} "
    "[default: it].",
)
@setting_option(SegConfig, "batch")
@setting_option(SegConfig, "accum", type=int)
@setting_option(SegConfig, "iters", type=int)
@setting_option(SegConfig, "decay_step", type=int)
@setting_option(SegConfig, "optimizer", type=click.Choice(["sgd", "adamw"]))
@setting_option(SegConfig, "lr")
@setting_option(SegConfig, "momentum")
@setting_option(SegConfig, "weight_decay")
@setting_option(SegConfig, "fg_weight")
@setting_option(SegConfig, "bn_batches")
@click.option(
    "--weights",
    default=None,
    help=f"{help_of(SegConfig, 'weights')} [default: {default_of(SegConfig, 'weights')}]. "
    f"--baseline: {_baseline('weights')}.",
)
@training_options(
    SegConfig,
    beside_device=(
        setting_option(SegConfig, "crop_path", type=click.Choice(["auto", "gpu", "cpu"])),
        setting_option(SegConfig, "device_crops_budget", type=float, metavar="FRACTION"),
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
