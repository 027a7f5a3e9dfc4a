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

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

PATH = click.Path(path_type=Path)


def default_of(owner: Any, name: str) -> Any:
    """The library's default for `name`: a field of the settings dataclass `owner`, or a
    keyword of the function `owner`. Options take their defaults from here, so the command
    line and the Python API cannot drift apart (tests/test_defaults.py)."""
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        default = field.default
    else:
        default = inspect.signature(owner).parameters[name].default
    if default is dataclasses.MISSING or default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__name__}.{name} has no default")
    return default


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
    """--data: the directory `ddn prepare` wrote (train-cls, train-seg, eval)."""
    return click.option(
        "--data", type=PATH, required=True, help="A directory made by `ddn prepare`."
    )


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
    return click.option("--out", type=PATH, required=True, help="The run directory.")


def wait_option(directory: str) -> Decorator:
    """--wait: when another ddn command is writing `directory`, wait for it instead of
    stopping (`pipeline.lock`)."""
    return click.option(
        "--wait",
        is_flag=True,
        help=f"If another ddn command is writing {directory}, wait for it to finish "
        "instead of stopping.",
    )


def training_options(
    config: type,
    *,
    seeds: str,
    compiles: str,
    workers: str = "DataLoader worker processes.",
    beside_device: tuple[Decorator, ...] = (),
) -> Decorator:
    """--device ... --wait: how a trainer runs, as opposed to what it learns; the defaults
    are the fields of `config`, the trainer's settings dataclass.

    The help differs only where the trainers do: `seeds` names what --seed seeds besides
    the init and the data order, `compiles` what --compile compiles, `workers` is the
    --workers help. `beside_device` are a trainer's own options that belong right after
    --device (train-seg's --crop-path, which picks where the work runs).
    """
    return stack(
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=default_of(config, "device"),
        ),
        *beside_device,
        click.option("--workers", default=default_of(config, "workers"), help=workers),
        click.option(
            "--seed",
            default=default_of(config, "seed"),
            help=f"Seeds the init, the data order and {seeds}.",
        ),
        click.option(
            "--resume",
            is_flag=True,
            default=default_of(config, "resume"),
            help="Continue from the latest checkpoint in --out.",
        ),
        click.option(
            "--compile",
            "compile_",
            is_flag=True,
            default=default_of(config, "compile"),
            help=f"torch.compile {compiles}.",
        ),
        click.option(
            "--amp/--no-amp",
            default=default_of(config, "amp"),
            help="CUDA: bf16 autocast (off: float32).",
        ),
        click.option(
            "--channels-last/--no-channels-last",
            default=default_of(config, "channels_last"),
            help="CUDA: channels_last memory format.",
        ),
        click.option(
            "--log-every",
            default=default_of(config, "log_every"),
            help="Steps between metrics.csv rows.",
        ),
        click.option(
            "--tensorboard/--no-tensorboard",
            default=default_of(config, "tensorboard"),
            help="TensorBoard event files beside metrics.csv (when TensorBoard is installed: "
            "pip install 'ddn[tensorboard]').",
        ),
        click.option(
            "--ckpt-every",
            default=default_of(config, "ckpt_every"),
            help="Steps between checkpoints.",
        ),
        wait_option("--out"),
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
