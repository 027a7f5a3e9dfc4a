"""Output paths: refused before any work when they cannot be written, and written so that
a failure part-way (disk full, permissions changed) is one line naming the file.

Commands check their output options first, so a mistyped or read-only path costs nothing:
no model is loaded and no image decoded before the check. The checks ask the file
system (`os.access`) rather than creating anything, so a refused run leaves no trace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pipeline.errors import UserError


class WriteError(UserError):
    """Writing one output file failed; the message names the file and the cause."""


def check_output_dir(path: Path, option: str, subdirs: Iterable[str] = ()) -> None:
    """Refuse `path` (and the `subdirs` that will be made in it) as an output directory
    when it is a file, or cannot be created or written."""
    for p in (Path(path), *(Path(path) / s for s in subdirs)):
        if p.exists() and not p.is_dir():
            raise UserError(f"{p}: {option} needs a directory here, but this is a file")
        _check_writable(p, option)


def check_output_file(path: Path, option: str) -> None:
    """Refuse `path` as an output file when it is a directory, or cannot be created or
    written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {option} needs a file here, but this is a directory")
    _check_writable(path, option)


def _check_writable(path: Path, option: str) -> None:
    if path.exists():
        if not _can_write(path):
            raise UserError(f"{path}: {option} is not writable")
        return
    # The nearest existing ancestor is where the missing folders would be created.
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"{path}: cannot create {option} here: {ancestor} is a file")
    if not _can_write(ancestor):
        raise UserError(f"{path}: cannot create {option} here: {ancestor} is not writable")


def _can_write(path: Path) -> bool:
    # A directory needs search permission too, to create files in it. Root passes these
    # checks on permissions but not on a read-only file system (EROFS), as it should.
    mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


@contextmanager
def writing(path: str | Path) -> Iterator[Path]:
    """Write `path` inside the block; its folder is created first.

    Any OSError becomes a `WriteError` naming `path`, and a file the block had newly
    created is removed rather than left half written.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
    except OSError as e:
        if not existed:
            with suppress(OSError):
                path.unlink()
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None


def write_text(path: str | Path, text: str) -> None:
    """`Path.write_text`, failing as one line naming the file."""
    with writing(path) as p:
        p.write_text(text)
