"""Progress of a long loop: a tqdm bar on a terminal, plain lines in a log.

A bar redraws itself with carriage returns; in a batch job's log (stderr a file or a
pipe) every redraw stays as one more frame on one endless line. There, `progress` prints
a line when the loop starts, then one about every `PLAIN_EVERY_S` seconds or tenth of
the total, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 30.0  # a module constant so that tests can shrink it


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: the current sys.stderr) is a terminal a bar can redraw."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """tqdm's ``update`` / ``close`` / ``with`` for a log: ``desc: n/total unit (p%), t s``."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO) -> None:
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n = self._shown = self._tenth = 0
        self._t0 = self._last = time.monotonic()
        self._print(f"{desc}: {total} {unit}")

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = self.n * 10 // max(self.total, 1)
        now = time.monotonic()
        if tenth > self._tenth or now - self._last >= PLAIN_EVERY_S:
            self._tenth = tenth
            self._line(now)

    def close(self) -> None:
        if self.n != self._shown:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        self._print(
            f"{self.desc}: {self.n}/{self.total} {self.unit}{share}, {now - self._t0:.0f} s"
        )
        self._shown, self._last = self.n, now

    def _print(self, line: str) -> None:
        print(line, file=self.file, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    total: int, desc: str, unit: str = "images", bar_unit: str = "img", disable: bool = False
) -> tqdm | PlainProgress:
    """A tqdm bar on stderr (counting ``bar_unit``/s) when it is a terminal, else
    `PlainProgress` lines there (counting ``unit``); nothing at all when ``disable``.

    Use it as tqdm: ``with progress(n, "prepare") as bar: ... bar.update(k)``.
    """
    if disable:
        return tqdm(total=total, disable=True)
    if is_terminal():
        return tqdm(total=total, desc=desc, unit=bar_unit, file=sys.stderr)
    return PlainProgress(total, desc, unit, sys.stderr)
