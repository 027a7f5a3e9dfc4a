"""The `ddn` command group. Subcommands live in their own modules and register here.

User mistakes (`pipeline.errors.UserError`) become one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from ddn import __version__
from pipeline.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except click.UsageError as e:  # a mistyped option: one line too, not click's three
            where = e.ctx.command_path if e.ctx else ctx.command_path
            message = " ".join(e.format_message().split())  # choices come one per line
            click.echo(f"error: {where}: {message} (see {where} --help)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: finished work is kept; re-run the command to go on "
                "(train-cls / train-seg: with --resume)",
                err=True,
            )
            sys.exit(130)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="ddn")
def cli() -> None:
    """DecoupledNet: semi-supervised semantic segmentation from many image-level
    labels and a few pixel masks."""


def _register() -> None:
    # Imported here so `ddn --help` stays fast and a broken optional piece
    # cannot take the whole CLI down at import time.
    from cli import demo, download, inspect_cmd, predict, prepare, synth, train_cls, train_seg
    from cli import eval as eval_cmd

    data_commands = (demo, synth, prepare, inspect_cmd, download)
    for mod in (*data_commands, train_cls, train_seg, eval_cmd, predict):
        cli.add_command(mod.command)


_register()


def main() -> None:
    cli(prog_name="ddn")


if __name__ == "__main__":
    main()
