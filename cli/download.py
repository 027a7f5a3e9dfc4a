"""`ddn download voc|sbd DIR`: fetch, verify and unpack the official archives."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import default_of
from pipeline.download import ARCHIVES, fetch


@click.command("download")
@click.argument("dataset", type=click.Choice(sorted(ARCHIVES)))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--url", default=default_of(fetch, "url"), help="Fetch from this URL instead (e.g. a mirror)."
)
@click.option(
    "--md5",
    default=default_of(fetch, "md5"),
    help="Expected MD5 of the archive [default: the official one].",
)
@click.option(
    "--keep-archive/--no-keep-archive",
    default=default_of(fetch, "keep_archive"),
    help="Keep the downloaded archive after unpacking it.",
)
def command(dataset: str, directory: Path, url: str | None, md5: str | None, keep_archive: bool):
    """Download DATASET (voc: VOC 2012 trainval, 2 GB; sbd: SBD, 1.4 GB) into DIRECTORY.

    An interrupted download resumes where it stopped when the same command is re-run;
    the archive is checked against its MD5 before anything is unpacked.
    """
    where = fetch(dataset, directory, url=url, md5=md5, keep_archive=keep_archive)
    hint = {"voc": "the VOC root", "sbd": "the SBD root (train_aug with VOC)"}[dataset]
    click.echo(f"{dataset}: ready at {where}; use it as {hint} for `ddn prepare`")
