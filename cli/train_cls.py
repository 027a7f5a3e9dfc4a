"""`ddn train-cls`: train the multi-label classifier on a prepared directory's weak set."""

from __future__ import annotations

import click

from cli.options import (
    config_fields,
    data_option,
    is_reporting_rank,
    run_dir_option,
    setting_option,
    training_options,
)
from ddn.models import ARCHS
from ddn.train.config import ClsConfig
from ddn.train.schedule import DECAYS


@click.command("train-cls", context_settings={"show_default": True})
@data_option()
@run_dir_option()
@setting_option(ClsConfig, "arch", type=click.Choice(ARCHS))
@setting_option(ClsConfig, "width")
@setting_option(ClsConfig, "input_size")
@setting_option(ClsConfig, "batch")
@setting_option(ClsConfig, "iters", type=int)
@setting_option(ClsConfig, "epochs")
@setting_option(ClsConfig, "optimizer", type=click.Choice(["sgd", "adamw"]))
@setting_option(ClsConfig, "lr")
@setting_option(ClsConfig, "head_lr_mult")
@setting_option(ClsConfig, "momentum")
@setting_option(ClsConfig, "weight_decay")
@setting_option(ClsConfig, "warmup", type=int)
@setting_option(ClsConfig, "decay", type=click.Choice(DECAYS))
@setting_option(ClsConfig, "pos_weight")
@setting_option(ClsConfig, "pad_square", "--pad-square/--no-pad-square")
@setting_option(ClsConfig, "weights")
@setting_option(ClsConfig, "val_every", type=click.IntRange(min=1))
@training_options(ClsConfig)
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
