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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddn import __version__
from ddn.models import normalize
from ddn.models.deconvnet import KIND, DeconvNet
from ddn.train import loop
from ddn.train.distributed import (
    DistInfo,
    StepBatchSampler,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    epoch_of_step,
    init_distributed,
    no_sync,
)
from ddn.train.run import (
    METRICS,
    MetricsLog,
    latest_checkpoint,
    open_run,
    save_model,
)
from ddn.train.schedule import segmenter_schedule
from ddn.train.seg import (
    EFFECTIVE_BATCH,
    WARP_RATIO,
    _batches,
    _device_crops,
    reestimate_bn,
    segmentation_loss,
    strong_per_class,
)
from pipeline.errors import UserError
from pipeline.readers import CropDataset

TRAINER = "train-deconvnet"


@dataclass
class DeconvConfig:
    data: str
    out: str
    arch: str = "vgg16"
    width: float = 1.0
    input_size: int = 320
    batch: int = 16
    accum: int | None = None  # None: EFFECTIVE_BATCH / (batch x world size)
    iters: int | None = None  # None: the reference table for the strong split
    decay_step: int | None = None  # None: the table's, scaled with iters
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_batches: int = 100
    weights: str = "imagenet"  # encoder init, as train-cls: imagenet | none | a .pth
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    resume: bool = False
    compile: bool = False
    amp: bool = True
    channels_last: bool = True
    crop_path: str = "auto"
    log_every: int = 20
    ckpt_every: int = 500


@dataclass
class DeconvResult:
    model: DeconvNet
    run: Path
    classes: list[str]  # C+1, background first


def train_deconvnet(cfg: DeconvConfig, on_step: loop.StepHook | None = None) -> DeconvResult:
    """Train (or resume) a DeconvNet baseline run; returns the final model."""
    info = init_distributed(loop.device_type(cfg.device))
    try:
        return _train(cfg, info, on_step)
    finally:
        cleanup_distributed(info)


def _train(cfg: DeconvConfig, info: DistInfo, on_step: loop.StepHook | None) -> DeconvResult:
    device = loop.resolve_device(cfg.device, info)
    loop.configure_backends(device)
    fmt = loop.memory_format(device, cfg.channels_last)
    run = Path(cfg.out)
    _check(cfg)
    warp = round(cfg.input_size * WARP_RATIO)
    train_set = CropDataset(
        cfg.data, warp_size=warp, crop_size=cfg.input_size, seed=cfg.seed, target="classes"
    )
    n = len(train_set)
    accum = cfg.accum or max(1, round(EFFECTIVE_BATCH / (cfg.batch * info.world_size)))
    global_batch = cfg.batch * accum * info.world_size
    per_class = strong_per_class(Path(cfg.data), train_set.num_classes)
    iters, decay_step = segmenter_schedule(per_class, cfg.iters)
    decay_step = cfg.decay_step or decay_step
    config = {
        **asdict(cfg),
        "trainer": TRAINER,
        "kind": KIND,
        "data": str(Path(cfg.data).resolve()),
        "warp_size": warp,
        "accum": accum,
        "iters": iters,
        "decay_step": decay_step,
        "strong_per_class": per_class,
        "world_size": info.world_size,
        "global_batch": global_batch,
        "train_crops": n,
        "classes": train_set.classes[1:],
        "ddn_version": __version__,
    }
    latest = open_run(run, config, cfg.resume) if info.is_main else None
    barrier(info)
    if not info.is_main and cfg.resume:
        latest = latest_checkpoint(run)

    torch.manual_seed(cfg.seed)
    model = DeconvNet(train_set.num_classes, cfg.arch, cfg.width, cfg.input_size)
    if latest is None:
        model.load_pretrained(cfg.weights)
    model.to(device, memory_format=fmt)
    optimizer, scheduler, step = loop.sgd_step_decay(model, cfg, iters, decay_step, latest, device)
    train_model = loop.wrap_for_training(model, info, device, cfg.compile)

    device_crops = _device_crops(cfg.crop_path, train_set, device)
    sampler = StepBatchSampler(n, cfg.batch, accum, iters, step, cfg.seed, info)
    batches = _batches(sampler, train_set, device_crops, cfg.workers, device)
    metrics = None
    if info.is_main:
        columns = ["step", "epoch", "loss", "lr", "examples_per_s"]
        metrics = MetricsLog(run / METRICS, columns, step if latest else None)
    progress = loop.Progress(iters, step, metrics, info, cfg.log_every, "train-deconvnet")
    ckpt = loop.Checkpointer(run, cfg.ckpt_every, info, latest)

    def state() -> dict[str, Any]:
        epoch = epoch_of_step(step, global_batch, n)
        return loop.checkpoint_state(model, optimizer, scheduler, step, epoch, config)

    model.train()
    try:
        while step < iters:
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for micro in range(accum):
                images, target = _inputs(next(batches), device, fmt)
                with no_sync(train_model, micro < accum - 1):
                    with loop.autocast(device, cfg.amp):
                        logits = train_model(images)
                    # train-seg's loss is cross-entropy over any channel count: C+1 here.
                    loss = segmentation_loss(logits.float(), target)
                    (loss / accum).backward()
                total += loss.detach()
            loss_value = all_reduce_mean(total / accum, info).item()
            loop.check_finite(loss_value, step + 1, run, ckpt.latest)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            progress.step(step, step * global_batch / n, loss_value, lr, global_batch)
            ckpt.maybe_save(step, state)
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        ckpt.maybe_save(step, state, force=True)
        if info.is_main:
            progress.bar.write(f"interrupted at step {step}: saved {ckpt.latest}; add --resume")
        raise
    finally:
        progress.close()
    ckpt.maybe_save(step, state, force=True)

    bn_steps = math.ceil(cfg.bn_batches / info.world_size)
    if bn_steps:
        bn_sampler = StepBatchSampler(n, cfg.batch, 1, bn_steps, 0, cfg.seed, info, stream=1)
        bn_batches = _batches(bn_sampler, train_set, device_crops, cfg.workers, device)

        def forward(batch: dict[str, Tensor]) -> None:
            with loop.autocast(device, cfg.amp):
                model(_inputs(batch, device, fmt)[0])

        reestimate_bn(model, bn_batches, forward, info)
    model.eval()
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
    if cfg.batch < 1 or (cfg.accum is not None and cfg.accum < 1):
        raise UserError("--batch and --accum must be at least 1")
    if cfg.iters is not None and cfg.iters < 1:
        raise UserError(f"--iters: must be at least 1, got {cfg.iters}")
    if cfg.input_size < 32 or cfg.input_size % 32:
        raise UserError(f"--input-size: must be a positive multiple of 32, got {cfg.input_size}")
    if cfg.bn_batches < 0:
        raise UserError(f"--bn-batches: must be at least 0, got {cfg.bn_batches}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise UserError(f"--lr: must be a positive number, got {cfg.lr}")
