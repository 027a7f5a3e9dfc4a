"""`ddn train-seg --baseline deconvnet`: the paper's DeconvNet baseline (Table 1).

A (C+1)-class `DeconvNet` (VGG-16 encoder + deconvolution decoder) trained end to end
on the strong images only: no classifier, no saliency, no decoupling. It reads the same
crop table as train-seg, with class targets (`CropDataset(target="classes")`): every
(image, box) crop of every subset P is one example whose target is the crop's full
label map (class k, 0 background, 255 ignore), whatever P is. All crops rather than
only those of the full label set: the baseline then sees exactly the boxes (and as many
examples) as DecoupledNet's segmenter, so the comparison differs only in the method.

Optimisation is train-seg's: SGD (lr 0.01, momentum 0.9, weight decay 5e-4) on every
layer, effective batch 64, the reference's iteration table for the strong split, x0.1
at the decay step, then BN statistics re-estimated over ``bn_batches`` batches.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddn.models import normalize
from ddn.models.deconvnet import KIND, DeconvNet
from ddn.train import loop, start
from ddn.train.config import DeconvConfig
from ddn.train.crop_path import check_crop_settings
from ddn.train.distributed import DistInfo, barrier
from ddn.train.run_files import save_model
from ddn.train.strong import WARP_RATIO, strong_schedule, train_on_strong_crops
from pipeline.errors import UserError
from pipeline.readers import CropDataset

TRAINER = "train-deconvnet"


@dataclass
class DeconvResult:
    model: DeconvNet
    run: Path
    classes: list[str]  # C+1, background first


def train_deconvnet(cfg: DeconvConfig, on_step: loop.StepHook | None = None) -> DeconvResult:
    """Train (or resume) a DeconvNet baseline run; returns the final model."""
    return loop.run_distributed(cfg.device, lambda info, held: _train(cfg, info, held, on_step))


def _train(
    cfg: DeconvConfig, info: DistInfo, held: ExitStack, on_step: loop.StepHook | None
) -> DeconvResult:
    device, fmt = loop.setup_device(cfg.device, cfg.channels_last, info)
    run = Path(cfg.out)
    _check(cfg)
    warp = round(cfg.input_size * WARP_RATIO)
    train_set = CropDataset(
        cfg.data, warp_size=warp, crop_size=cfg.input_size, seed=cfg.seed, target="classes"
    )
    plan = strong_schedule(cfg, train_set, info)
    config = start.run_config(
        cfg, TRAINER, kind=KIND, warp_size=warp, **plan.config(), classes=train_set.classes[1:]
    )
    resume = start.open_run_on_all_ranks(run, config, cfg.resume, info, held, cfg.wait)

    torch.manual_seed(cfg.seed)
    model = DeconvNet(train_set.num_classes, cfg.arch, cfg.width, cfg.input_size)
    if resume is None:
        model.load_pretrained(cfg.weights)
    model.to(device, memory_format=fmt)

    def forward(net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        images, target = _inputs(batch, device, fmt)
        with loop.autocast(device, cfg.amp):
            # C+1 channels: train-seg's loss is a cross-entropy over any number of them.
            return net(images), target

    train_on_strong_crops(
        cfg, info, device, train_set, plan, config, resume, model, forward, on_step
    )
    if info.is_main:
        model_config = {
            **model.config(), "trainer": TRAINER, "kind": KIND,
            "classes": config["classes"], "train_config": config,
        }  # fmt: skip
        save_model(run, model.state_dict(), model_config)
    barrier(info)
    return DeconvResult(model, run, train_set.classes)


def _inputs(batch: dict[str, Tensor], device: torch.device, fmt) -> tuple[Tensor, Tensor]:
    images = normalize(batch["image"].to(device, non_blocking=True)).contiguous(memory_format=fmt)
    return images, batch["target"].to(device, non_blocking=True).long()


def _check(cfg: DeconvConfig) -> None:
    check_crop_settings(cfg.crop_path, cfg.device_crops_budget)
    if cfg.batch < 1 or (cfg.accum is not None and cfg.accum < 1):
        raise UserError("--batch and --accum must be at least 1")
    if cfg.iters is not None and cfg.iters < 1:
        raise UserError(f"--iters: must be at least 1, got {cfg.iters}")
    if cfg.input_size < 32 or cfg.input_size % 32:
        raise UserError(f"--input-size: must be a positive multiple of 32, got {cfg.input_size}")
    if cfg.bn_batches < 0:
        raise UserError(f"--bn-batches: must be at least 0, got {cfg.bn_batches}")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise UserError(f"--optimizer: expected sgd or adamw, got {cfg.optimizer!r}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise UserError(f"--lr: must be a positive number, got {cfg.lr}")
