"""`pipeline.progress`: a tqdm bar on a terminal, plain lines in a log."""

from __future__ import annotations

import io

from tqdm import tqdm

from pipeline import progress as progress_module
from pipeline.progress import PlainProgress, is_terminal, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(total: int, updates: list[int]) -> list[str]:
    out = io.StringIO()
    with PlainProgress(total, "job", "images", out) as bar:
        for n in updates:
            bar.update(n)
    return out.getvalue().splitlines()


def test_a_line_at_the_start_at_each_tenth_and_at_the_end():
    lines = _lines(20, [1] * 20)
    assert lines[0] == "job: 20 images"
    assert [line.split(",")[0] for line in lines[1:]] == [
        f"job: {n}/20 images ({5 * n}%)" for n in range(2, 21, 2)
    ]
    # The end gets its line even when it falls short of the next tenth.
    assert [line.split(",")[0] for line in _lines(100, [95, 3])[1:]] == [
        "job: 95/100 images (95%)", "job: 98/100 images (98%)"
    ]  # fmt: skip


def test_a_line_when_the_time_has_come_between_tenths(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)
    assert len(_lines(1000, [1] * 5)) == 1 + 5  # none reaches a tenth: time alone


def test_a_terminal_keeps_the_tqdm_bar_and_a_log_gets_lines(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert is_terminal() and isinstance(progress(3, "job"), tqdm)
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert not is_terminal()
    with progress(3, "job") as bar:
        bar.update(3)
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines()[-1].startswith("job: 3/3 images (100%), ")
    with progress(0, "job", disable=True):
        pass
    assert log.getvalue().count("\n") == 2  # a disabled phase prints nothing
