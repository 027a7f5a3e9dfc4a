"""The CUDA paths: GPU crop path, bf16 autocast, channels_last, runs moved between devices.

Skipped where no CUDA device is present (CI has none). On a GPU machine:
``pytest tests/test_cuda.py``. Each test pits the CUDA path against the CPU path the rest
of the suite checks, so a device-only bug shows as a difference, not just a crash.
``DDN_TEST_DEVICE=cpu`` runs the same tests with the CPU on both sides (checks the tests'
own plumbing on a machine without a GPU; the comparisons are then trivially close).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from ddn.inference import segment
from ddn.train.seg import train_seg
from ddn.trained_runs import load_models
from tests.test_gpu_crops import WINDOWS, assert_same_crops, both_paths
from tests.test_inference import images, tiny_models
from tests.test_readers import make_prepared as make_crop_set
from tests.trainutil import ARCH, SIZE, WIDTH, cls_run_for, make_prepared, seg_config

DEVICE = os.environ.get("DDN_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device"
)


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("cuda"), images=40)


@pytest.fixture(scope="module")
def cls_run(prep, tmp_path_factory):
    return cls_run_for(prep, tmp_path_factory)


def losses(run) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize(("warp", "crop"), WINDOWS)
def test_device_crops_on_cuda_cut_the_loaders_crops(tmp_path, warp, crop):
    root = make_crop_set(tmp_path, strong=(3, 4), boxes_per_subset=12).root
    assert_same_crops(*both_paths(root, warp, crop, device=DEVICE))


def test_float32_first_steps_on_cuda_match_the_cpu(prep, cls_run, tmp_path):
    """Same seed, same crops (DataLoader path), float32: the device changes only rounding
    (TF32 matrix products are on for CUDA runs: ~1e-3 relative)."""
    ref, dev = tmp_path / "cpu", tmp_path / "device"
    for device, run in (("cpu", ref), (DEVICE, dev)):
        train_seg(seg_config(prep, cls_run, run, iters=3, accum=1, bn_batches=0,
                             device=device, amp=False, channels_last=False))  # fmt: skip
    assert np.allclose(losses(ref), losses(dev), rtol=1e-2), (losses(ref), losses(dev))


def test_default_cuda_path_trains_and_the_run_evaluates_on_cpu(prep, cls_run, tmp_path):
    """GPU crops + bf16 + channels_last: a finite loss close to the float32 CPU path's
    first step (same crops up to interpolation, bf16 rounding), and a run whose
    checkpoint loads on a machine without a GPU."""
    fast, ref = tmp_path / "fast", tmp_path / "ref"
    train_seg(seg_config(prep, cls_run, fast, iters=4, accum=1, bn_batches=2, device=DEVICE,
                         crop_path="gpu"))  # fmt: skip
    train_seg(seg_config(prep, cls_run, ref, iters=1, accum=1, bn_batches=0))
    first = losses(fast)[0]
    assert np.isfinite(losses(fast)).all()
    assert abs(first - losses(ref)[0]) <= 0.05 * losses(ref)[0], (first, losses(ref))
    models = load_models(cls_run, fast, torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in models.segmenter.parameters())


@pytest.fixture
def no_tf32():
    """Full float32 matrix products on CUDA (train-seg turns TF32 on for the process)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_inference_on_cuda_matches_the_cpu(no_tf32):
    """The random test models are ill-conditioned (measured on CPU: 1e-4 relative weight
    noise changes the arg-max of 5% of pixels, 1e-6 of < 0.1%), so the check runs in full
    float32 (a first GPU run with TF32 on agreed on only 95% of one image's pixels)."""
    cls, seg = tiny_models([6.0, -6.0, 6.0])
    ims = images((40, 60), (50, 50), (70, 30), (64, 64))
    on_cpu = segment(cls, seg, ims, keep_maps=True)
    on_gpu = segment(cls.to(DEVICE), seg.to(DEVICE), ims, keep_maps=True)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
        np.testing.assert_allclose(a.foreground, b.foreground, atol=1e-3)
        assert (a.pred == b.pred).mean() >= 0.99  # arg-max ties may flip on rounding


def test_cli_pipeline_on_cuda(prep, tmp_path):
    """train-cls, train-seg, the DeconvNet baseline, eval and predict with --device cuda."""
    runner = CliRunner()

    def ok(*args: str) -> str:
        r = runner.invoke(cli, list(args))
        assert r.exit_code == 0, r.output
        return r.output

    common = ["--device", DEVICE, "--batch", "4", "--iters", "3", "--workers", "0"]
    ok("train-cls", "--data", str(prep), "--out", str(tmp_path / "cls"), "--arch", ARCH,
       "--width", str(WIDTH), "--input-size", str(SIZE), "--weights", "none", *common)  # fmt: skip
    ok("train-seg", "--data", str(prep), "--cls", str(tmp_path / "cls"),
       "--out", str(tmp_path / "seg"), "--bn-batches", "2", *common)  # fmt: skip
    ok("train-seg", "--baseline", "deconvnet", "--data", str(prep), "--arch", ARCH,
       "--width", str(WIDTH), "--input-size", str(SIZE), "--weights", "none",
       "--out", str(tmp_path / "deconv"), "--bn-batches", "2", *common)  # fmt: skip
    for models in (["--cls", str(tmp_path / "cls"), "--seg", str(tmp_path / "seg")],
                   ["--seg", str(tmp_path / "deconv")]):  # fmt: skip
        result = json.loads(ok("eval", "--data", str(prep), *models, "--device", DEVICE,
                               "--json"))  # fmt: skip
        assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_acc"] <= 1.0
    sample = next((prep.parent / "synth").rglob("*.jpg"))
    ok("predict", "--cls", str(tmp_path / "cls"), "--seg", str(tmp_path / "seg"),
       str(sample), "--out", str(tmp_path / "pred"), "--device", DEVICE)  # fmt: skip
    assert (tmp_path / "pred" / f"{sample.stem}.png").exists()
