"""Where the strong crops are cut: on the device (`DeviceCrops`) or by DataLoader workers
(`CropDataset`), and the one log line that says which and why.

``--crop-path auto`` puts the strong set's sources on the device only on CUDA, and only
while they fit ``--device-crops-budget`` (a fraction of the device's free memory when
training starts): the rest of that memory is the model's, its activations' and the
optimiser's, which the trainer cannot know before its first step. ``gpu`` puts them there
whatever they take (the line says when that is over the budget); ``cpu`` never does.

`plan_crop_path` decides from figures alone, so the decision is tested without CUDA;
`device_crops` measures the figures, prints the line (rank 0) and builds the crops.

Beyond the budget the crops fall back to the DataLoader rather than streaming blocks of
sources to the device. Streaming would have to follow the sampler's windows
(`ddn.train.distributed.IndexStream`), but a batch may straddle two windows, BN
re-estimation reads another stream (another window order) and every rank its own
share, so the device would hold up to two windows per stream and swap them between
steps; the swap decodes a whole window (hundreds of JPEGs) in the training process,
stalling the device unless it runs in a background thread. The DataLoader's workers
already decode in parallel, and the windowed order is what keeps their caches hot once the
sources outgrow them; with 8 workers on 16 cores the DataLoader path was no slower than
the GPU path (737 vs 706 crops/s on one H200, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddn.train import loop
from ddn.train.config import StrongConfig
from ddn.train.distributed import DistInfo
from ddn.train.gpu_crops import DeviceCrops
from pipeline.errors import UserError
from pipeline.readers import CropDataset

CROP_PATHS = ("auto", "gpu", "cpu")


@dataclass(frozen=True)
class CropPathPlan:
    """The decision: crops cut on the device (True) or by DataLoader workers, and the log
    line that explains it."""

    on_device: bool
    line: str


def check_crop_settings(crop_path: str, budget: float) -> None:
    """A one-line `UserError` for a --crop-path or --device-crops-budget that cannot be used.

    The trainers call it before they open the run directory: a refused run leaves none.
    """
    if crop_path not in CROP_PATHS:
        raise UserError(f"--crop-path: expected auto, gpu or cpu, got {crop_path!r}")
    if not (isinstance(budget, int | float) and math.isfinite(budget) and 0 < budget <= 1):
        raise UserError(
            f"--device-crops-budget: a fraction of free device memory, above 0 and at most 1; "
            f"got {budget!r}"
        )


def plan_crop_path(
    crop_path: str, need_bytes: int, free_bytes: int | None, budget: float
) -> CropPathPlan:
    """Where ``crop_path`` puts the crops, given the bytes the sources take on the device
    (`DeviceCrops.bytes_needed`) and the device's free bytes (None: a device that reports
    none, i.e. not CUDA; ``gpu`` then cuts on it without a budget, as the tests do on the
    CPU)."""
    check_crop_settings(crop_path, budget)

    def plan(on_device: bool, why: str = "") -> CropPathPlan:
        where = "on the device" if on_device else "DataLoader crops"
        line = f"crop path: {where} (--crop-path {crop_path})"
        return CropPathPlan(on_device, f"{line}: {why}" if why else line)

    if crop_path == "cpu":
        return plan(False)
    if free_bytes is None:
        if crop_path == "auto":
            return plan(False, "auto cuts on the device only on CUDA")
        return plan(True, f"the sources take {_gib(need_bytes)}; the device reports no free memory")
    allowed = budget * free_bytes
    fits = need_bytes <= allowed
    on_device = fits or crop_path == "gpu"  # gpu: tried even over the budget, as always
    why = (
        f"the sources take {_gib(need_bytes)}, {'within' if fits else 'over'} the budget of "
        f"{_gib(allowed)} (--device-crops-budget {budget:g} x {_gib(free_bytes)} free)"
    )
    if on_device and not fits:
        why += "; it may run out of device memory"
    elif not on_device:
        why += "; the DataLoader cuts them instead"
    return plan(on_device, why)


def free_memory(device: torch.device) -> int | None:
    """The device's free bytes now; None where it reports none (not CUDA)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


def device_crops(
    cfg: StrongConfig, dataset: CropDataset, device: torch.device, info: DistInfo
) -> DeviceCrops | None:
    """The crops on ``device`` per `plan_crop_path`, or None for the DataLoader; the plan's
    line goes to the log (rank 0). Each rank decides on its own device's free memory."""
    need = DeviceCrops.bytes_needed(dataset)
    plan = plan_crop_path(cfg.crop_path, need, free_memory(device), cfg.device_crops_budget)
    loop.log(info, plan.line)
    return DeviceCrops(dataset, device) if plan.on_device else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"
