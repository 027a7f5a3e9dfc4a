"""The GPU crop path's code, run on CPU tensors, cuts the crops `CropDataset` cuts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from ddn.train import gpu_crops
from ddn.train.gpu_crops import DeviceCrops
from pipeline.readers import CropDataset
from tests.test_readers import make_prepared

WINDOWS = [(70, 64), (80, 48)]  # (warp, crop): the trainer's round(64 * 350 / 320), and another


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    # 40-80 px images with many random boxes, most of them reaching past the image.
    return make_prepared(tmp_path_factory.mktemp("gpu"), strong=(3, 4), boxes_per_subset=12)


def cv2_major() -> int:
    return int(cv2.__version__.split(".")[0])


def both_paths(root, warp, crop, device="cpu"):
    """Keys, DeviceCrops' batch of them (moved to the CPU) and CropDataset's items."""
    cpu = CropDataset(root, warp_size=warp, crop_size=crop, seed=5)
    crops = DeviceCrops(CropDataset(root, warp_size=warp, crop_size=crop, seed=5), device)
    keys = [(i, epoch) for epoch in (0, 3) for i in range(len(cpu))]
    batch = {k: v.cpu() for k, v in crops.batch(keys).items()}
    items = []
    for i, epoch in keys:
        cpu.set_epoch(epoch)
        items.append(cpu[i])
    return keys, batch, items


def assert_same_crops(keys, batch, items) -> None:
    crop = items[0]["target"].shape[-1]
    assert len(keys) > 300 and batch["image"].shape == (len(keys), 3, crop, crop)
    diffs = []
    for b, item in enumerate(items):
        assert torch.equal(batch["target"][b], item["target"]), keys[b]
        assert torch.equal(batch["subset"][b], item["subset"])
        diffs.append((batch["image"][b] - item["image"].float()).abs())
    diff = torch.stack(diffs)
    # roi_align samples in float; cv2 rounds to uint8, and OpenCV 4.x also snaps sampling
    # points to 1/32 px (up to 255/64 per axis on these sharp synthetic edges). Measured:
    # OpenCV 5.0 max 0.504, mean 0.185 (the uint8 rounding and nothing more); OpenCV 4.11
    # max 5.3 / 6.4, mean 0.25 / 0.27 for the two windows.
    max_diff, mean_diff = (1.0, 0.25) if cv2_major() >= 5 else (255 / 32, 0.3)
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (diff.max(), diff.mean())
    assert (torch.stack([b["target"] for b in items]) == 255).any()  # boxes past the image


@pytest.mark.parametrize(("warp", "crop"), WINDOWS)
def test_same_targets_and_images_within_rounding(prep, warp, crop):
    assert_same_crops(*both_paths(prep.root, warp, crop))


def test_without_the_zero_border_roi_align_smears_the_edge(prep, monkeypatch):
    """roi_align clamps samples within 1 px outside the image to the edge pixel; cv2
    blends them with 0. The stored zero border is what makes the two paths agree
    (measured without it: max difference 255, mean 1.0)."""
    monkeypatch.setattr(gpu_crops, "PAD", 0)
    keys, batch, items = both_paths(prep.root, *WINDOWS[0])
    diff = torch.stack(
        [(batch["image"][b] - it["image"].float()).abs() for b, it in enumerate(items)]
    )
    assert diff.max() > 50


def test_roi_align_samples_the_cropping_points():
    """aligned=True, sampling_ratio=1: output pixel u of box [x0, x1) samples continuous x =
    x0 + (u + 0.5)(x1 - x0)/S (pixel i spans [i, i+1)), as pipeline.cropping does: on an
    image whose value is its pixel-centre coordinate, the output is that x - 0.5."""
    w = 40
    ramp = torch.arange(w, dtype=torch.float32).expand(1, 1, 8, w).contiguous()
    x0, x1, size = 5.25, 30.75, 17
    out = roi_align(ramp, torch.tensor([[0, x0, 2.0, x1, 6.0]]), size, 1.0, 1, aligned=True)
    expected = x0 + (np.arange(size) + 0.5) * (x1 - x0) / size - 0.5
    np.testing.assert_allclose(out[0, 0, 0].numpy(), expected, atol=1e-4)
