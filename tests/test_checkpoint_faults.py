"""Faults around the run directory's files: a torn or foreign checkpoint met by --resume,
and a disk that fills up while a checkpoint, model.pt, metrics.csv or config.json is
written. Each is one line (a warning, or an error with exit code 2) naming the file, and
nothing finished is lost."""

from __future__ import annotations

import builtins
import csv
import errno
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from ddn.train import run_files as run_module
from ddn.train.run_files import MODEL, MetricsLog, checkpoints, load_checkpoint, write_json
from pipeline.errors import UserError
from tests.trainutil import ARCH, SIZE, WIDTH, make_prepared

ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("faults"), images=40)


def train(prep: Path, out: Path, *extra: str, width: float = WIDTH):
    args = ["train-cls", "--data", str(prep), "--out", str(out), "--arch", ARCH,
            "--width", str(width), "--input-size", str(SIZE), "--batch", "4",
            "--weights", "none", "--device", "cpu", "--workers", "0", "--log-every", "1",
            "--ckpt-every", "1", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def tear(path: Path) -> None:
    """Cut a file to half its length, as a copy that stopped midway leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r["loss"]]


def val_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r["val_map"]]


# ---------------------------------------------------------------- --resume


def test_torn_last_checkpoint_resumes_from_the_one_before(prep, tmp_path):
    run = tmp_path / "run"
    assert train(prep, run, "--iters", "3").exit_code == 0
    assert [s for s, _ in checkpoints(run)] == [2, 3]
    finished = torch.load(run / MODEL, weights_only=True)["model"]
    vals = val_steps(run)
    tear(run / "checkpoint-3.pt")

    r = train(prep, run, "--iters", "3", "--resume")
    assert r.exit_code == 0, r.output
    warning = lines(r.stderr, "warning:")
    assert len(warning) == 1 and "checkpoint-3.pt: unreadable checkpoint" in warning[0]
    assert "resuming from checkpoint-2.pt" in warning[0]
    assert "resuming after step 2" in r.stderr  # the plan line
    # The torn file is kept, out of the way; the redone step wrote a good checkpoint-3.
    assert (run / "checkpoint-3.pt.unreadable").is_file()
    assert [s for s, _ in checkpoints(run)] == [2, 3]
    assert load_checkpoint(run / "checkpoint-3.pt")["step"] == 3
    # Step 3 trained again, bit for bit, and each metrics row is there once.
    again = torch.load(run / MODEL, weights_only=True)["model"]
    assert all(torch.equal(finished[k], again[k]) for k in finished)
    assert train_steps(run) == [1, 2, 3] and val_steps(run) == vals == [3]


def test_no_readable_checkpoint_is_one_line_and_moves_nothing(prep, tmp_path):
    run = tmp_path / "run"
    assert train(prep, run, "--iters", "2").exit_code == 0
    for _, path in checkpoints(run):
        tear(path)
    torn = {p.name: p.read_bytes() for _, p in checkpoints(run)}

    r = train(prep, run, "--iters", "2", "--resume")
    assert r.exit_code == 2, r.output
    (error,) = lines(r.stderr, "error:")
    assert "checkpoint-2.pt: unreadable checkpoint" in error and "(checkpoint-1.pt)" in error
    assert "nothing to resume from" in error and "Traceback" not in r.output
    assert {p.name: p.read_bytes() for _, p in checkpoints(run)} == torn
    assert not list(run.glob("*.unreadable"))


def test_foreign_checkpoint_is_one_line_naming_the_file_and_the_setting(prep, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    assert train(prep, run, "--iters", "1").exit_code == 0
    assert train(prep, other, "--iters", "1", width=2 * WIDTH).exit_code == 0
    foreign = run / "checkpoint-2.pt"  # copied in from a run of another width
    shutil.copy(other / "checkpoint-1.pt", foreign)

    r = train(prep, run, "--iters", "1", "--resume")
    assert r.exit_code == 2, r.output
    (error,) = lines(r.stderr, "error:")
    assert error.startswith(f"error: {foreign}: does not fit this run")
    assert f"width ({2 * WIDTH} -> {WIDTH})" in error
    assert "Traceback" not in r.output and foreign.is_file()

    # Without its config the weights themselves are compared: still one line.
    state = torch.load(foreign, weights_only=True)
    del state["config"]
    torch.save(state, foreign)
    r = train(prep, run, "--iters", "1", "--resume")
    assert r.exit_code == 2, r.output
    (error,) = lines(r.stderr, "error:")
    assert error.startswith(f"error: {foreign}: does not fit this run (size mismatch")


# ---------------------------------------------------------------- a full disk


class FullDisk:
    """A file that takes ``room`` bytes, then fails the way a full disk does."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, ENOSPC)
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def fill_disk(monkeypatch, name: str, room: int = 1000) -> None:
    """Writes (all go through ``open`` in ddn.train.run_files) to a file called ``name`` fail
    with ENOSPC after ``room`` bytes."""
    real = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        return FullDisk(f, room) if Path(file).name == name and "r" not in mode else f

    monkeypatch.setattr(run_module, "open", open_, raising=False)


def assert_one_error(r, path: Path, cause: str = ENOSPC) -> None:
    assert r.exit_code == 2, r.output
    assert lines(r.stderr, "error:") == [f"error: {path}: {cause}"], r.stderr
    assert "Traceback" not in r.output and "unexpected pos" not in r.output


def test_disk_full_while_checkpointing(prep, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fill_disk(monkeypatch, ".checkpoint-2.pt.tmp")
    r = train(prep, run, "--iters", "3")
    assert_one_error(r, run / "checkpoint-2.pt", f"could not write checkpoint: {ENOSPC}")
    assert not list(run.glob(".*.tmp"))
    assert [s for s, _ in checkpoints(run)] == [1]  # the earlier one, whole
    assert load_checkpoint(run / "checkpoint-1.pt")["step"] == 1
    assert not (run / MODEL).exists()
    monkeypatch.undo()  # space freed: --resume goes on from step 1
    r = train(prep, run, "--iters", "3", "--resume")
    assert r.exit_code == 0, r.output
    assert train_steps(run) == [1, 2, 3]


def test_disk_full_while_writing_the_model(prep, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fill_disk(monkeypatch, ".model.pt.tmp")
    r = train(prep, run, "--iters", "1")
    assert_one_error(r, run / MODEL, f"could not write model: {ENOSPC}")
    assert not (run / MODEL).exists() and not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "checkpoint-1.pt")["step"] == 1  # the run's last step
    monkeypatch.undo()
    r = train(prep, run, "--iters", "1", "--resume")
    assert r.exit_code == 0, r.output
    assert (run / MODEL).is_file()


def test_disk_full_while_writing_metrics_or_settings(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    metrics = MetricsLog(path, ["step", "loss"], None)
    metrics.write({"step": 1, "loss": 0.5})
    before = path.read_bytes()
    fill_disk(monkeypatch, "metrics.csv", room=3)
    with pytest.raises(UserError, match=re.escape(f"{path}: could not write metrics: {ENOSPC}")):
        metrics.write({"step": 2, "loss": 0.25})
    assert path.read_bytes() == before  # no half row left at the end
    # Resuming rewrites the file without later rows: through a temporary file.
    fill_disk(monkeypatch, ".metrics.csv.tmp", room=3)
    with pytest.raises(UserError, match=re.escape(f"{path}: could not write metrics")):
        MetricsLog(path, ["step", "loss"], resume_step=0)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))

    config = tmp_path / "config.json"
    write_json(config, {"lr": 0.1})
    fill_disk(monkeypatch, ".config.json.tmp", room=3)
    with pytest.raises(UserError, match=re.escape(f"{config}: could not write settings: {ENOSPC}")):
        write_json(config, {"lr": 0.2})
    assert config.read_text() == '{\n "lr": 0.1\n}\n' and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="no file size limit here")
def test_a_real_write_error_is_one_line_too(prep, tmp_path):
    """No patching: the file size limit makes the kernel refuse the checkpoint's bytes
    (EFBIG), the closest to a full disk a test can get without root."""
    import resource

    run = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # checkpoints are larger
    try:
        r = train(prep, run, "--iters", "1")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    cause = f"could not write checkpoint: {os.strerror(errno.EFBIG)}"
    assert_one_error(r, run / "checkpoint-1.pt", cause)
    assert not list(run.glob(".*.tmp")) and not checkpoints(run)
