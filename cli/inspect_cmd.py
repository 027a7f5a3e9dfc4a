"""`ddn inspect DIR`: what a prepared directory holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.options import default_of, json_option
from pipeline.inspect import check_grid_path, draw_grid, format_summary, summarize


@click.command("inspect")
@click.argument("prepared", type=click.Path(path_type=Path))
@json_option()
@click.option(
    "--grid",
    type=click.Path(path_type=Path),
    default=None,
    help="Write sample crops with their masks overlaid to this PNG.",
)
@click.option(
    "--grid-size", default=default_of(draw_grid, "n"), show_default=True, help="Crops in the grid."
)
@click.option(
    "--seed",
    default=default_of(draw_grid, "seed"),
    show_default=True,
    help="Which crops the grid shows.",
)
def command(prepared: Path, as_json: bool, grid: Path | None, grid_size: int, seed: int) -> None:
    """Summarise a directory made by `ddn prepare`."""
    if grid is not None:
        check_grid_path(grid)
    summary = summarize(prepared)
    if grid is not None:
        drawn = draw_grid(prepared, grid, n=grid_size, seed=seed)
        # A directory without crops gets no grid file: then no path is reported either.
        summary["grid"] = str(grid) if drawn else None
        summary["grid_crops"] = drawn
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(format_summary(summary))
        if grid is not None:
            wrote = f"{grid} ({drawn} crops)" if drawn else "not written: no crops to show"
            click.echo(f"  grid           {wrote}")
