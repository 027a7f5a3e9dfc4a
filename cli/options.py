"""Click options that several `ddn` commands share, so each command lists only its own.

Each factory returns one decorator that applies its options in the order listed, which is
the order `--help` shows them; a command keeps its documented order by placing the
decorator where those options stood.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ddn.train.config import TrainerConfig
from pipeline.lock import wait_help
from pipeline.settings import field_of, help_of

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

PATH = click.Path(path_type=Path)


def default_of(owner: Any, name: str) -> Any:
    """The library's default for `name`: a field of the settings dataclass `owner`, or a
    keyword of the function `owner`. Options take their defaults from here, so the command
    line and the Python API cannot drift apart (tests/test_defaults.py)."""
    if dataclasses.is_dataclass(owner):
        default = field_of(owner, name).default
    else:
        default = inspect.signature(owner).parameters[name].default
    if default is dataclasses.MISSING or default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__name__}.{name} has no default")
    return default


def setting_option(owner: type, name: str, *decls: str, **attrs: Any) -> Decorator:
    """The option that sets field `name` of the settings dataclass `owner`, with the
    field's default (none for a required field) and help; `decls` are click's names for it
    (default: --name-with-dashes), `attrs` the rest of click.option's keywords."""
    field = field_of(owner, name)
    if field.default is dataclasses.MISSING:
        attrs.setdefault("required", True)
    else:
        attrs.setdefault("default", field.default)
    decls = decls or ("--" + name.replace("_", "-"),)
    return click.option(*decls, help=help_of(owner, name), **attrs)


def stack(*decorators: Decorator) -> Decorator:
    """One decorator applying `decorators` as if written top to bottom above a function."""

    def apply(f: F) -> F:
        # Decorators written above a function apply bottom-up; click shows options in the
        # order written, so apply the last one first.
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def data_option() -> Decorator:
    """--data: the directory `ddn prepare` wrote (train-cls, train-seg, eval: the trainers'
    field, whose meaning eval shares)."""
    return setting_option(TrainerConfig, "data", type=PATH)


def json_option() -> Decorator:
    """--json (as `as_json`): one machine-readable object on stdout instead of the text."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
    )


def run_options() -> Decorator:
    """--cls / --seg (as `cls_run` / `seg_run`): the trained runs `eval` and `predict` load
    with `ddn.trained_runs.load_for_inference`. --cls is optional because a DeconvNet baseline run
    segments without a classifier."""
    return stack(
        click.option(
            "--cls",
            "cls_run",
            default=None,
            type=PATH,
            help="Classifier run directory (train-cls --out); not for a DeconvNet baseline run.",
        ),
        click.option(
            "--seg",
            "seg_run",
            required=True,
            type=PATH,
            help="Segmenter run directory (train-seg --out), "
            "or a train-seg --baseline deconvnet run.",
        ),
    )


def inference_options(*library: Callable[..., Any]) -> Decorator:
    """--threshold / --batch / --device: how `ddn.inference.predict_images` runs; each
    default is the keyword's of the first `library` function (those the command calls)
    that takes it."""

    def default(name: str) -> Any:
        owner = next(f for f in library if name in inspect.signature(f).parameters)
        return default_of(owner, name)

    return stack(
        click.option(
            "--threshold",
            type=click.FloatRange(0, 1),
            default=default("threshold"),
            help="A label is picked when its probability is above this.",
        ),
        click.option(
            "--batch",
            type=click.IntRange(min=1),
            default=default("batch"),
            help="Images per forward pass.",
        ),
        # Free text, not a Choice: resolve_device also takes cuda:N for one GPU of several.
        click.option("--device", default=default("device"), help="auto, cpu or cuda[:N]."),
    )


def run_dir_option() -> Decorator:
    """--out: the run directory a trainer writes its checkpoints and model.pt to."""
    return setting_option(TrainerConfig, "out", type=PATH)


def wait_option(directory: str) -> Decorator:
    """--wait: when another ddn command is writing `directory`, wait for it instead of
    stopping (`pipeline.lock`)."""
    return click.option("--wait", is_flag=True, help=wait_help(directory))


def training_options(config: type, beside_device: tuple[Decorator, ...] = ()) -> Decorator:
    """--device ... --wait: how a trainer runs, as opposed to what it learns; defaults and
    help are the fields of `config`, the trainer's settings dataclass (a `TrainerConfig`).

    `beside_device` are a trainer's own options that belong right after --device
    (train-seg's --crop-path and its --device-crops-budget, which pick where the work runs).
    """
    return stack(
        setting_option(config, "device", type=click.Choice(["auto", "cpu", "cuda"])),
        *beside_device,
        setting_option(config, "workers"),
        setting_option(config, "seed"),
        setting_option(config, "resume", is_flag=True),
        setting_option(config, "compile", "--compile", "compile_", is_flag=True),
        setting_option(config, "amp", "--amp/--no-amp"),
        setting_option(config, "channels_last", "--channels-last/--no-channels-last"),
        setting_option(config, "log_every"),
        setting_option(config, "tensorboard", "--tensorboard/--no-tensorboard"),
        setting_option(config, "ckpt_every"),
        setting_option(config, "wait", is_flag=True),
    )


def config_fields(options: dict[str, Any]) -> dict[str, Any]:
    """A trainer's click options as config fields.

    --compile arrives as `compile_` (the parameter would shadow the builtin); paths become
    str because configs are saved as JSON in the run directory.
    """
    fields = dict(options)
    fields["compile"] = fields.pop("compile_")
    return {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}


def is_reporting_rank() -> bool:
    """True in a single process and on rank 0 under torchrun: only one process prints."""
    return os.environ.get("RANK", "0") == "0"
