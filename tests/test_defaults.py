"""One source of truth: every `ddn` option defaults to what the library does when the same
setting is left out, and an option that sets a settings dataclass's field shows that
field's help (issue 12, section 2).

Each command's options are matched by name with the fields of the settings dataclasses and
the keywords of the functions the command runs (`LIBRARY`). An option whose default differs
on purpose is in `DIFFERS` with its reason; an option with no library counterpart is in
`CLI_ONLY`. A new option, or a changed default on either side, fails here until it is
matched, or listed with a reason. Likewise for the help (`SETTINGS`, `HELP_DIFFERS`,
`COMPOSED`): a field's help edited on one side only fails here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

import ddn
from cli import predict as predict_cmd
from cli.main import cli
from ddn import data, evaluation, inference, predictor
from ddn.train.config import ClsConfig, DeconvConfig, SegConfig
from pipeline.build import CropSettings
from pipeline.download import fetch
from pipeline.inspect import draw_grid
from pipeline.prepare import ShardSettings, SplitSettings
from pipeline.proposals import ProposalConfig
from pipeline.settings import help_of
from pipeline.synth import generate

REQUIRED = "<required>"  # an option that must be given, a field or keyword without default

# command -> the settings dataclasses and functions its options set
LIBRARY: dict[str, tuple[Any, ...]] = {
    "train-cls": (ClsConfig,),
    "train-seg": (SegConfig, DeconvConfig),
    "prepare": (data.prepare,),
    "eval": (evaluation.evaluate,),
    "predict": (predict_cmd.predict, ddn.load),
    "synth": (generate,),
    "inspect": (draw_grid,),
    "download": (fetch,),
    "demo": (generate, SplitSettings, ShardSettings, ClsConfig),
}

# (command, click parameter name) -> the library's name for it
RENAMED = {
    ("train-cls", "compile_"): "compile",
    ("train-seg", "compile_"): "compile",
    ("eval", "data"): "prepared_dir",
    ("eval", "save_maps"): "maps",
    ("predict", "save_maps"): "maps",
    ("inspect", "grid_size"): "n",
}

# (command, option) -> (the command line's default, why it is not the library's)
DIFFERS: dict[tuple[str, str], tuple[Any, str]] = {
    ("train-seg", "cls"): (
        None,
        "--baseline deconvnet trains without a classifier; without --baseline the command "
        "refuses a missing --cls",
    ),
    **{
        ("train-seg", name): (
            None,
            "depends on --baseline: None becomes SegConfig's (the classifier's layout) or "
            "DeconvConfig's default (cli/train_seg.py BASELINE_DEFAULTS)",
        )
        for name in ("arch", "input_size", "width", "weights")
    },
    **{
        (command, "cls_run"): (
            None,
            "the library takes a DeconvNet run alone in cls_run's place (ddn.load(run)); "
            "the command names the runs --cls and --seg",
        )
        for command in ("eval", "predict")
    },
    **{
        (command, "seg_run"): (REQUIRED, "--seg is the run every evaluation needs (see cls_run)")
        for command in ("eval", "predict")
    },
    ("demo", "out"): (
        Path("data/demo"),
        "the demo's workspace; the data, prepared and run directories go inside it",
    ),
    **{
        ("demo", name): (value, "the demo's tiny synthetic recipe, sized for a CPU in minutes")
        for name, value in (
            ("images", 2000),
            ("classes", 5),
            ("size", 64),
            ("width", 0.125),
            ("input_size", 64),
        )
    },
}

# (command, option) -> why the library has no such setting
CLI_ONLY = {
    ("train-seg", "baseline"): "picks the trainer (train_seg or train_deconvnet)",
    ("eval", "as_json"): "how the result is printed",
    ("inspect", "as_json"): "how the result is printed",
    ("inspect", "grid"): "the file draw_grid writes; without it no grid is drawn",
    ("predict", "skip_bad"): "decided before predict() runs (check_readable)",
    ("demo", "cls_iters"): "the demo's recipe (ClsConfig.iters: from --epochs)",
    ("demo", "seg_iters"): "the demo's recipe (SegConfig.iters: the reference's table)",
}


def library_default(owner: Any, name: str) -> Any:
    """`owner`'s default for `name`: REQUIRED when it has none, KeyError when not a setting."""
    if dataclasses.is_dataclass(owner):
        default = {f.name: f.default for f in dataclasses.fields(owner)}[name]
    else:
        default = inspect.signature(owner).parameters[name].default
    missing = default is dataclasses.MISSING or default is inspect.Parameter.empty
    return REQUIRED if missing else default


def cli_default(param: click.Parameter, command: click.Command) -> Any:
    return REQUIRED if param.required else param.get_default(click.Context(command))


def matched(
    name: str,
    command: click.Command,
    owners: tuple[Any, ...],
    look_up: Callable[[Any, str], Any],
    renamed: dict[tuple[str, str], str],
) -> Iterator[tuple[tuple[str, str], click.Option, dict[str, Any]]]:
    """Each option of `command` (as (name, parameter) key), with `look_up(owner, setting)`
    of each of `owners` that has the setting it sets (by name, or `renamed`'s)."""
    for param in command.params:
        if not isinstance(param, click.Option):
            continue  # arguments have no default or help of a setting
        key = (name, param.name)
        setting = renamed.get(key, param.name)
        found = {}
        for owner in owners:
            with contextlib.suppress(KeyError):  # not one of this owner's settings
                found[owner.__qualname__] = look_up(owner, setting)
        yield key, param, found


def mismatches(name: str, command: click.Command, owners: tuple[Any, ...]) -> list[str]:
    """What disagrees between `command`'s options and `owners`' defaults, one line each."""
    problems = []
    for key, param, found in matched(name, command, owners, library_default, RENAMED):
        value = cli_default(param, command)
        if key in CLI_ONLY:
            if found:
                problems.append(f"{name} {param.name}: listed CLI-only but {found} has it")
        elif not found:
            problems.append(f"{name} {param.name}: no library default in {owners}; list it")
        elif key in DIFFERS:
            expected, _ = DIFFERS[key]
            if value != expected:
                problems.append(f"{name} {param.name}: {value!r}, DIFFERS says {expected!r}")
            if all(v == value for v in found.values()):
                problems.append(f"{name} {param.name}: now agrees with {found}; unlist it")
        else:
            for where, default in found.items():
                if value != default:
                    problems.append(f"{name} {param.name}: {value!r} != {where} {default!r}")
    return problems


def test_every_command_is_matched_with_the_library() -> None:
    # `ddn download` fetches over the network; its defaults are still checked here.
    assert set(cli.commands) == set(LIBRARY), "a new command: add its library to LIBRARY"


def test_every_option_defaults_to_the_library_default() -> None:
    problems = [
        line
        for name, command in cli.commands.items()
        for line in mismatches(name, command, LIBRARY[name])
    ]
    assert problems == []


def test_the_lists_name_only_existing_options() -> None:
    # A renamed or removed option must leave the lists too, or they hide the next one.
    params = {(name, p.name) for name, c in cli.commands.items() for p in c.params}
    assert set(DIFFERS) <= params and set(CLI_ONLY) <= params and set(RENAMED) <= params


def test_a_changed_default_is_noticed() -> None:
    # The check itself can fail: a command whose --lr and new option disagree with ClsConfig.
    @click.command()
    @click.option("--lr", default=0.5)
    @click.option("--brand-new", default=1)
    @click.option("--data", required=True)
    def command(**_: object) -> None:
        pass

    problems = mismatches("fake", command, (ClsConfig,))
    assert len(problems) == 2
    assert "lr: 0.5 != ClsConfig 0.001" in problems[0]
    assert "brand_new: no library default" in problems[1]


def _keywords(function: Callable[..., Any]) -> dict[str, Any]:
    return {
        k: p.default
        for k, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_the_library_functions_agree_among_themselves() -> None:
    # Inference settings appear in several functions' signatures; they must not drift.
    functions = (
        evaluation.evaluate,
        evaluation.evaluate_models,
        predictor.load,
        predictor.Predictor.__init__,
        inference.segment,
        inference.predict_images,
        predict_cmd.predict,
    )
    seen: dict[str, tuple[str, Any]] = {}
    for function in functions:
        for name, value in _keywords(function).items():
            # segment's device is a loaded model's (None: the classifier's), not a choice
            if name in ("threshold", "batch", "workers", "split", "overlays") or (
                name == "device" and function is not inference.segment
            ):
                first = seen.setdefault(name, (function.__qualname__, value))
                assert value == first[1], f"{function.__qualname__} {name}={value!r} vs {first}"
    # The trainers' shared options come from SegConfig in train-seg: DeconvConfig must agree.
    shared = set(_keywords(SegConfig)) & set(_keywords(DeconvConfig))
    differ = {
        k for k in shared if library_default(SegConfig, k) != library_default(DeconvConfig, k)
    }
    assert differ == {"input_size", "width", "weights"}  # DIFFERS' --baseline defaults


# ---------------------------------------------------------------- help

# command -> the settings dataclasses whose fields its options set (the others' options set
# function keywords, whose help stays with the command)
SETTINGS: dict[str, tuple[type, ...]] = {
    "train-cls": (ClsConfig,),
    "train-seg": (SegConfig, DeconvConfig),
    "prepare": (SplitSettings, CropSettings, ProposalConfig, ShardSettings),
    "demo": (SplitSettings, ShardSettings, ClsConfig),
}

# (command, click parameter name) -> the field's name, where `prepare` renames it
HELP_RENAMED = {
    ("prepare", "proposals"): "per_subset",
    ("prepare", "edgebox_alpha"): "alpha",
    ("prepare", "edgebox_beta"): "beta",
    ("prepare", "edgebox_min_score"): "min_score",
}

# (command, option) -> why its help is built from the fields' help and more
COMPOSED = {
    ("train-seg", option): "one option for SegConfig's field or, with --baseline, "
    "DeconvConfig's: its help tells both"
    for option in ("cls", "arch", "input_size", "width", "weights")
}

# (command, option) -> why its help is the command's own, not the field's
HELP_DIFFERS = {
    ("prepare", "strong_per_class"): "the command takes 'full' where SplitSettings takes None",
    ("prepare", "seed"): "one seed for SplitSettings.seed and CropSettings.seed",
    ("demo", "strong_per_class"): "the demo's recipe takes a number only",
    ("demo", "out"): "the demo's workspace, not a run directory",
    ("demo", "width"): "the demo's recipe: both networks' width",
    ("demo", "input_size"): "the demo's recipe: both networks' input side",
    ("demo", "seed"): "one seed for the synthetic set, the split, the crops and both trainers",
    ("demo", "wait"): "the demo locks its whole workspace, not one run directory",
}


def help_mismatches(name: str, command: click.Command, owners: tuple[type, ...]) -> list[str]:
    """Where `command`'s options and the help of the `owners`' fields they set disagree."""
    problems = []
    for key, param, found in matched(name, command, owners, help_of, RENAMED | HELP_RENAMED):
        shown = param.help
        if not found:
            if key in HELP_DIFFERS or key in COMPOSED:
                problems.append(f"{name} {param.name}: listed but no field in {owners} has it")
            continue
        if None in found.values():
            problems.append(f"{name} {param.name}: a field without help in {found}")
        elif key in HELP_DIFFERS:
            if all(shown == text for text in found.values()):
                problems.append(f"{name} {param.name}: now shows {found}; unlist it")
        elif key in COMPOSED:
            for where, text in found.items():
                if text not in (shown or ""):
                    problems.append(f"{name} {param.name}: {where}'s {text!r} not in {shown!r}")
        else:
            for where, text in found.items():
                if shown != text:
                    problems.append(f"{name} {param.name}: {shown!r} != {where} {text!r}")
    return problems


def test_every_setting_option_shows_its_field_help() -> None:
    problems = [
        line
        for name, owners in SETTINGS.items()
        for line in help_mismatches(name, cli.commands[name], owners)
    ]
    assert problems == []


def test_the_help_lists_name_only_existing_options() -> None:
    params = {(name, p.name) for name, c in cli.commands.items() for p in c.params}
    assert set(HELP_DIFFERS) | set(COMPOSED) | set(HELP_RENAMED) <= params
    assert {name for name, _ in [*HELP_DIFFERS, *COMPOSED, *HELP_RENAMED]} <= set(SETTINGS)


def test_a_changed_help_is_noticed() -> None:
    # --lr edited on the command line only; --momentum says what ClsConfig.momentum says.
    @click.command()
    @click.option("--lr", default=ClsConfig.lr, help="Some other words.")
    @click.option("--momentum", default=ClsConfig.momentum, help=help_of(ClsConfig, "momentum"))
    def command(**_: object) -> None:
        pass

    problems = help_mismatches("fake", command, (ClsConfig,))
    assert problems == ["fake lr: 'Some other words.' != ClsConfig 'Backbone learning rate.'"]
