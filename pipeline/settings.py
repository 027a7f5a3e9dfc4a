"""Fields of the settings dataclasses that carry their own help text.

A setting's default and its one-line help live together on the dataclass field
(``setting(0, "Seeds ...")``); the `ddn` options read both from there
(`cli.options.setting_option`), so the command line, the Python API and this text cannot
drift apart (tests/test_defaults.py). Here, not in `cli/`, because the data side's
dataclasses use it too and must not import from `ddn` or `cli`.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any

HELP = "help"  # the metadata key


def setting(default: Any = MISSING, *, help: str) -> Any:
    """A dataclass field with `default` (none: a required setting) and `help`, the text of
    the option that sets it; typed Any, as `dataclasses.field` is, to fit any annotation."""
    return field(default=default, metadata={HELP: help})


def field_of(owner: type, name: str) -> Field[Any]:
    """The field `name` of the settings dataclass `owner`; KeyError when it has none."""
    if not is_dataclass(owner):
        raise TypeError(f"{owner!r} is not a dataclass")
    return {f.name: f for f in fields(owner)}[name]


def help_of(owner: type, name: str) -> str | None:
    """The help text of `owner`'s field `name`; None for a field made without `setting`."""
    return field_of(owner, name).metadata.get(HELP)
