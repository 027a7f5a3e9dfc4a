"""Where train-seg cuts its crops: on the device while the strong set's sources fit
--device-crops-budget of the free device memory, else DataLoader crops; one log line says
which and why. Run on CPU tensors with a fake free-memory figure."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from ddn.train import crop_path
from ddn.train.crop_path import plan_crop_path
from ddn.train.distributed import DistInfo
from ddn.train.gpu_crops import DeviceCrops
from ddn.train.loop import log
from ddn.train.seg import train_seg
from pipeline.errors import UserError
from pipeline.readers import CropDataset
from tests.trainutil import cls_run_for, make_prepared, seg_config

GIB = 2**30


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("crop_path"), images=40)


@pytest.fixture(scope="module")
def cls_run(prep, tmp_path_factory):
    return cls_run_for(prep, tmp_path_factory)


# ---------------------------------------------------------------- the decision


def test_auto_keeps_the_sources_on_the_device_only_within_the_budget():
    within = plan_crop_path("auto", 2 * GIB, 40 * GIB, 0.25)
    assert within.on_device
    assert within.line == (
        "crop path: on the device (--crop-path auto): the sources take 2 GiB, within the "
        "budget of 10 GiB (--device-crops-budget 0.25 x 40 GiB free)"
    )
    over = plan_crop_path("auto", 12 * GIB, 40 * GIB, 0.25)
    assert not over.on_device
    assert over.line == (
        "crop path: DataLoader crops (--crop-path auto): the sources take 12 GiB, over the "
        "budget of 10 GiB (--device-crops-budget 0.25 x 40 GiB free); the DataLoader cuts "
        "them instead"
    )
    assert plan_crop_path("auto", 12 * GIB, 40 * GIB, 0.5).on_device  # a larger budget
    assert plan_crop_path("auto", 10 * GIB, 40 * GIB, 0.25).on_device  # exactly the budget


def test_gpu_is_tried_over_the_budget_and_the_line_says_so():
    plan = plan_crop_path("gpu", 12 * GIB, 40 * GIB, 0.25)
    assert plan.on_device
    assert "on the device (--crop-path gpu)" in plan.line
    assert "over the budget of 10 GiB" in plan.line and "may run out of device memory" in plan.line
    assert "over" not in plan_crop_path("gpu", 1 * GIB, 40 * GIB, 0.25).line


def test_cpu_and_devices_without_a_memory_figure():
    assert plan_crop_path("cpu", GIB, 40 * GIB, 0.25) == crop_path.CropPathPlan(
        False, "crop path: DataLoader crops (--crop-path cpu)"
    )
    auto = plan_crop_path("auto", GIB, None, 0.25)  # e.g. --device cpu
    assert not auto.on_device and "only on CUDA" in auto.line
    forced = plan_crop_path("gpu", GIB, None, 0.25)  # the tests' CPU-tensor device crops
    assert forced.on_device and "reports no free memory" in forced.line


@pytest.mark.parametrize("budget", [0, -0.5, 1.5, float("nan"), float("inf")])
def test_a_budget_outside_0_to_1_is_a_one_line_error(budget):
    with pytest.raises(UserError, match=r"^--device-crops-budget: .* above 0 and at most 1") as e:
        plan_crop_path("auto", GIB, 40 * GIB, budget)
    assert "\n" not in str(e.value)
    assert plan_crop_path("auto", GIB, 40 * GIB, 1).on_device  # all free memory is allowed


def test_an_unknown_crop_path_is_refused():
    with pytest.raises(UserError, match="--crop-path: expected auto, gpu or cpu, got 'tpu'"):
        plan_crop_path("tpu", GIB, 40 * GIB, 0.25)


def test_only_rank_0_logs(capsys):
    log(DistInfo(rank=1, world_size=2), "not shown")
    log(DistInfo(rank=0, world_size=2), "shown")
    assert capsys.readouterr() == ("", "shown\n")  # stderr, beside the progress lines


# ---------------------------------------------------------------- train-seg's real path


def crop_path_run(prep, cls_run, out, monkeypatch, capsys, budget: float) -> tuple[str, int]:
    """One train-seg step with --crop-path auto on CPU tensors, as if the device had 1 GiB
    free: (its crop-path log line, how many batches DeviceCrops cut)."""
    monkeypatch.setattr(crop_path, "free_memory", lambda device: GIB)
    cut = []
    real = DeviceCrops.batch

    def counted(self: DeviceCrops, keys: list[tuple[int, int]]) -> dict:
        cut.append(keys)
        return real(self, keys)

    monkeypatch.setattr(DeviceCrops, "batch", counted)
    capsys.readouterr()
    # fg_weight 1 and no TensorBoard: only the crop path matters here, and each costs time
    cfg = seg_config(prep, cls_run, out, iters=1, bn_batches=1, crop_path="auto",
                     device_crops_budget=budget, fg_weight="1", tensorboard=False)  # fmt: skip
    train_seg(cfg)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("crop path:")]
    assert len(lines) == 1, lines
    return lines[0], len(cut)


def test_train_seg_falls_back_to_the_dataloader_beyond_the_budget(
    prep, cls_run, tmp_path, monkeypatch, capsys
):
    need = DeviceCrops.bytes_needed(CropDataset(prep, warp_size=70, crop_size=64))
    assert need > 1e-6 * GIB  # the tiny budget: 1 KiB of the fake 1 GiB
    line, cut = crop_path_run(prep, cls_run, tmp_path / "tight", monkeypatch, capsys, 1e-6)
    assert cut == 0
    assert line.startswith("crop path: DataLoader crops (--crop-path auto): the sources take ")
    assert "over the budget of 1e-06 GiB (--device-crops-budget 1e-06 x 1 GiB free)" in line

    line, cut = crop_path_run(prep, cls_run, tmp_path / "roomy", monkeypatch, capsys, 0.25)
    assert cut == 2 + 1  # the step's two micro-batches, then one for the BN statistics
    assert line.startswith("crop path: on the device (--crop-path auto): the sources take ")
    assert "within the budget of 0.25 GiB" in line


def test_a_bad_budget_is_refused_before_the_run_directory_is_made(prep, cls_run, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [
        "train-seg", "--data", str(prep), "--cls", str(cls_run), "--out", str(out),
        "--device-crops-budget", "1.5", "--iters", "1", "--device", "cpu", "--workers", "0",
    ])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert r.output.splitlines() == [
        "error: --device-crops-budget: a fraction of free device memory, above 0 and at most "
        "1; got 1.5"
    ]
    assert not out.exists()
