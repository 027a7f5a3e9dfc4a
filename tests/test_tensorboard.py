"""TensorBoard events beside metrics.csv: the same scalars, train-seg's crops, a resume
shows each step once, --no-tensorboard, and training without TensorBoard installed."""

from __future__ import annotations

import csv
import errno
import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from ddn.train import tensorboard as tb
from ddn.train.cls import train_cls
from ddn.train.run_files import load_model
from ddn.train.seg import train_seg
from tests.trainutil import ARCH, SIZE, WIDTH, cls_config, cls_run_for, make_prepared, seg_config

EVENTS = "events.out.tfevents.*"


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("tb"), images=40)


@pytest.fixture(scope="module")
def cls_run(prep, tmp_path_factory):
    return cls_run_for(prep, tmp_path_factory)


def accumulator(run: Path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    return acc


def event_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = accumulator(run)
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def csv_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {tag: [(step, value)]}, blank cells and the epoch left out."""
    found: dict[str, list[tuple[int, float]]] = {}
    with (run / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for column, value in row.items():
                if column not in ("step", "epoch") and value:
                    found.setdefault(tb.tag(column), []).append((int(row["step"]), float(value)))
    return found


def assert_events_match_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    got, want = event_scalars(run), csv_scalars(run)
    assert sorted(got) == sorted(want)
    for t in want:
        assert [s for s, _ in got[t]] == [s for s, _ in want[t]], t  # each step once
        assert [v for _, v in got[t]] == pytest.approx([v for _, v in want[t]], rel=2e-5), t
    return got


def test_train_cls_events_hold_the_metrics_rows(prep, tmp_path):
    run = tmp_path / "cls"
    train_cls(cls_config(prep, run, iters=3))
    assert list(run.glob(EVENTS))
    got = assert_events_match_metrics(run)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3]
    assert {"train/lr", "train/examples_per_s", "val/mAP"} <= got.keys()
    assert any(t.startswith("val_AP/") for t in got)


def test_train_seg_events_hold_the_rows_and_a_grid_of_crops(prep, cls_run, tmp_path, monkeypatch):
    kept, real = [], tb.Board.keep_crops

    def keep_crops(self, images, target, logits):
        if self.writer is not None and self.images_due(self._next) and not kept:
            kept.append((images[: tb.IMAGE_CROPS].clone(), target[: tb.IMAGE_CROPS].clone()))
        real(self, images, target, logits)

    monkeypatch.setattr(tb.Board, "keep_crops", keep_crops)
    run = tmp_path / "seg"
    train_seg(seg_config(prep, cls_run, run, iters=2))
    assert [s for s, _ in assert_events_match_metrics(run)["train/loss"]] == [1, 2]
    (shot,) = accumulator(run).Images("train/crops")  # the first step's: a tiny run's only
    assert shot.step == 1
    # 4 crops (batch 4) in a row: crops, targets, outputs, 2 px apart
    assert (shot.width, shot.height) == (4 * SIZE + 5 * 2, 3 * SIZE + 4 * 2)
    grid = np.asarray(Image.open(io.BytesIO(shot.encoded_image_string)).convert("RGB"))

    def cell(row: int, col: int) -> np.ndarray:
        top, left = 2 + row * (SIZE + 2), 2 + col * (SIZE + 2)
        return grid[top : top + SIZE, left : left + SIZE].astype(int)

    images, targets = kept[0]
    for i in range(tb.IMAGE_CROPS):
        # the crop as it was read (0..255, before the network's normalisation)
        assert np.abs(cell(0, i) - images[i].permute(1, 2, 0).numpy()).max() <= 1
        # its target in grey: background black, object white, ignored mid-grey
        grey = np.select([targets[i] == 255, targets[i] == 1], [128, 255], 0)
        assert np.abs(cell(1, i) - grey[..., None]).max() <= 1
    output = cell(2, 0)
    assert (output[..., 0] == output[..., 2]).all()  # a probability, in grey


def test_deconvnet_baseline_shows_its_crops_in_class_colours(prep, tmp_path):
    out = tmp_path / "base"
    args = ["train-seg", "--baseline", "deconvnet", "--arch", ARCH, "--weights", "none",
            "--data", str(prep), "--out", str(out), "--iters", "1", "--batch", "2",
            "--accum", "1", "--bn-batches", "1", "--device", "cpu", "--workers", "0",
            "--width", str(WIDTH), "--input-size", str(SIZE), "--crop-path", "cpu"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert_events_match_metrics(out)
    (shot,) = accumulator(out).Images("train/crops")
    assert (shot.width, shot.height) == (2 * SIZE + 3 * 2, 3 * SIZE + 4 * 2)


def test_resumed_run_shows_each_step_once(prep, tmp_path):
    """A run that stops after step 3 with its last checkpoint at 2 redoes step 3: its events
    of step 3 are purged with the metrics.csv row, not shown twice."""
    run = tmp_path / "cls"

    def crash(step: int) -> None:
        if step == 3:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        train_cls(cls_config(prep, run, iters=5, ckpt_every=2), on_step=crash)
    assert [s for s, _ in event_scalars(run)["train/loss"]] == [1, 2, 3]
    train_cls(cls_config(prep, run, iters=5, ckpt_every=2, resume=True))
    assert len(list(run.glob(EVENTS))) == 2
    got = assert_events_match_metrics(run)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5]


def test_no_tensorboard_writes_no_events_and_may_change_on_resume(prep, tmp_path):
    out = tmp_path / "cls"
    args = ["train-cls", "--data", str(prep), "--out", str(out), "--arch", ARCH,
            "--width", str(WIDTH), "--input-size", str(SIZE), "--batch", "8", "--iters", "2",
            "--weights", "none", "--device", "cpu", "--workers", "0"]  # fmt: skip
    r = CliRunner().invoke(cli, [*args, "--no-tensorboard"])
    assert r.exit_code == 0, r.output
    assert not list(out.glob(EVENTS)) and "ddn[tensorboard]" not in r.output
    assert load_model(out)["config"]["train_config"]["tensorboard"] is False
    # a runtime setting, as --workers: --resume with it on is not "other settings"
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 0, r.output


def test_without_tensorboard_installed_training_runs_after_one_note(
    prep, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "cls"
    train_cls(cls_config(prep, run, iters=2))
    notes = [line for line in capsys.readouterr().err.splitlines() if "tensorboard" in line]
    assert notes == [tb.NOT_INSTALLED]
    assert "pip install 'ddn[tensorboard]'" in notes[0] and "--no-tensorboard" in notes[0]
    assert (run / "model.pt").is_file() and not list(run.glob(EVENTS))
    assert [s for s, _ in csv_scalars(run)["train/loss"]] == [1, 2]


def test_a_failed_event_write_costs_the_events_not_the_run(prep, tmp_path, monkeypatch, capsys):
    """A full disk under the event file: one warning naming the run and the cause, then the
    run goes on without events; metrics.csv and model.pt are whole."""
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    run = tmp_path / "cls"
    train_cls(cls_config(prep, run, iters=3))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "TensorBoard" in line]
    assert len(warnings) == 1, warnings
    assert str(run) in warnings[0] and "No space left on device" in warnings[0]
    assert (run / "model.pt").is_file()
    assert [s for s, _ in csv_scalars(run)["train/loss"]] == [1, 2, 3]


def test_a_new_event_file_sorts_after_one_opened_in_the_same_second(tmp_path):
    """TensorBoard reads event files in name order: a resume's file (with its purge) must
    come after the files it purges, even when opened within their second."""
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    now = int(time.time())
    earlier = tmp_path / f"events.out.tfevents.{now:010d}.~"  # sorts after any of its second
    earlier.touch()
    tb._wait_for_a_later_second(tmp_path)
    writer = SummaryWriter(str(tmp_path))
    writer.close()
    assert sorted(p.name for p in tmp_path.glob(EVENTS))[0] == earlier.name
