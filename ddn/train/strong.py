"""Training on the strong crops: what train-seg and the DeconvNet baseline share.

Both train one network on `CropDataset` examples with the same recipe, so that Table 1's
comparison differs only in the model: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the
reference's effective batch of 64 (``batch`` x ``accum`` x processes), its iteration table
for the strong split with one x0.1 decay (`StrongSchedule`), a cross-entropy that ignores
255 (`segmentation_loss`), and BN statistics re-estimated at the end (`reestimate_bn`).

Foreground weight (``fg_weight``). Objects often cover a small share f of the crops'
labelled pixels (11% on street photographs), and a segmenter trained for a short budget
with a plain cross-entropy stays near that prior: its foreground probability on object
pixels stayed under 0.5 and nothing was labelled. "auto" weights foreground pixels by
`ddn.train.balance.balance_weight` (sqrt((1 - f) / f): 2.8 at f = 0.11); "1" is the
reference's plain loss. The DeconvNet baseline gets the same weight on every object
class, measured the same way.

Crops come from `CropDataset` through a DataLoader, or on CUDA from `DeviceCrops` (the
whole strong set on the device, crops cut with roi_align) while it fits a share of the free
device memory: ``crop_path`` auto | gpu | cpu and ``device_crops_budget``
(`ddn.train.crop_path`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn.train import checkpoint, crop_path, loop, start
from ddn.train.balance import balance_weight, parse_weight
from ddn.train.config import StrongConfig
from ddn.train.distributed import DistInfo, StepBatchSampler, all_reduce_mean
from ddn.train.gpu_crops import DeviceCrops
from ddn.train.schedule import segmenter_schedule
from ddn.train.tensorboard import open_board
from pipeline.cropping import IGNORE
from pipeline.manifest import read_manifest
from pipeline.readers import CropDataset

EFFECTIVE_BATCH = 64  # the reference's 4 x 16
WARP_RATIO = 350 / 320  # the reference warps boxes to 350 and crops 320
FG_SAMPLES = 256  # training crops drawn to measure the foreground share (fg_weight "auto")


def segmentation_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy averaged over the pixels that are not 255; with ``weight`` (one per
    class), each pixel counts its class's weight, and the average is over those weights.

    A crop can be all-ignore (a box entirely past the image); its loss is 0, not the
    NaN of a mean over no pixels, which would stop the run for nothing.
    """
    total = F.cross_entropy(logits, target, weight, ignore_index=IGNORE, reduction="sum")
    valid = target != IGNORE
    if weight is None:
        return total / valid.sum().clamp(min=1)
    return total / weight[target[valid]].sum().clamp(min=1e-12)


def foreground_share(dataset: CropDataset, samples: int = FG_SAMPLES, seed: int = 0) -> float:
    """The share of labelled (not 255) pixels that are foreground (not 0) in ``samples``
    training crops drawn with ``seed``: the figure/ground balance the segmenter sees."""
    rng = np.random.default_rng((seed, 0xF6))
    picks = rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False)
    fg = labelled = 0
    for i in picks.tolist():
        t = dataset[i]["target"].numpy()
        valid = t != IGNORE
        fg += int((valid & (t != 0)).sum())
        labelled += int(valid.sum())
    # Up to ``samples`` decoded sources (~0.25 GB past a few hundred images) would stay in
    # the reader's cache for the whole run, and every DataLoader worker forked from this
    # process would start with them in its resident memory.
    dataset.image_cache.clear()
    return fg / labelled if labelled else 0.5


def resolve_fg_weight(setting: str, dataset: CropDataset, seed: int) -> tuple[float, float | None]:
    """(weight of foreground pixels, the foreground share it came from or None).

    "auto": `ddn.train.balance.balance_weight` of the crops' foreground share; a number is
    taken as it is ("1" is the reference's plain cross-entropy).
    """
    value = parse_weight(setting, "--fg-weight")
    if value is not None:
        return value, None
    share = foreground_share(dataset, seed=seed)
    return balance_weight(share), share


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, batches: Iterator[Any], forward: Any, info: DistInfo = DistInfo()
) -> int:
    """Recompute every BN layer's running statistics as a cumulative average.

    Running stats are reset and momentum set to None (PyTorch's cumulative moving
    average), then ``forward(batch)`` runs in train mode without grad over ``batches``;
    across ranks the averages are averaged (equal batch counts: the global average).
    Returns the number of batches used; leaves the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    count = 0
    for batch in batches:
        forward(batch)
        count += 1
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
        all_reduce_mean(m.running_mean, info)
        all_reduce_mean(m.running_var, info)
    model.eval()
    return count


def strong_per_class(data: Path, num_classes: int) -> int | None:
    """The prepared directory's strong images per class (None: every mask)."""
    manifest = read_manifest(data)
    split = manifest.get("config", {}).get("split", {})
    if split.get("strong_list"):  # a given list: its size per class decides
        return max(1, round(int(manifest["splits"]["strong"]) / num_classes))
    value = split.get("strong_per_class", 5)
    return None if value is None else int(value)


@dataclass(frozen=True)
class StrongSchedule:
    """How a segmenter run on the strong crops counts its steps (the reference's table)."""

    crops: int  # one epoch
    accum: int
    global_batch: int  # crops per optimizer step over all ranks
    iters: int
    decay_step: int
    per_class: int | None
    world_size: int
    fg_weight: float = 1.0  # loss weight of foreground pixels (classes other than 0)
    fg_share: float | None = None  # the crops' foreground share it was set from ("auto")

    def config(self) -> dict[str, Any]:
        """Its config.json entries, in the order train-seg has always written them."""
        return {
            "accum": self.accum, "iters": self.iters, "decay_step": self.decay_step,
            "strong_per_class": self.per_class, "world_size": self.world_size,
            "global_batch": self.global_batch, "train_crops": self.crops,
            "fg_weight_value": self.fg_weight, "foreground_share": self.fg_share,
        }  # fmt: skip

    def class_weight(self, num_classes: int, device: torch.device) -> Tensor | None:
        """Per-class loss weights for a (num_classes)-way target, or None when plain."""
        if self.fg_weight == 1.0:
            return None
        weight = torch.full((num_classes,), self.fg_weight, device=device)
        weight[0] = 1.0
        return weight


def strong_schedule(cfg: StrongConfig, dataset: CropDataset, info: DistInfo) -> StrongSchedule:
    """Accumulate to the reference's effective batch; iterations and decay step from its
    table for the prepared directory's strong split, unless set."""
    accum = cfg.accum or max(1, round(EFFECTIVE_BATCH / (cfg.batch * info.world_size)))
    per_class = strong_per_class(Path(cfg.data), dataset.num_classes)
    iters, decay_step = segmenter_schedule(per_class, cfg.iters)
    global_batch = cfg.batch * accum * info.world_size
    fg_weight, fg_share = resolve_fg_weight(cfg.fg_weight, dataset, cfg.seed)
    return StrongSchedule(
        len(dataset), accum, global_batch, iters, cfg.decay_step or decay_step, per_class,
        info.world_size, fg_weight, fg_share,
    )  # fmt: skip


def train_on_strong_crops(
    cfg: StrongConfig,
    info: DistInfo,
    device: torch.device,
    train_set: CropDataset,
    plan: StrongSchedule,
    config: dict[str, Any],
    resume: checkpoint.Resume | None,
    model: nn.Module,
    forward: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, Tensor]],
    on_step: loop.StepHook | None,
) -> None:
    """train-seg's optimisation of ``model``, from its first weights (or ``resume``'s) to its
    final BN statistics; leaves it in eval mode. The DeconvNet baseline trains through
    this too, so that the comparison differs only in the model.

    ``forward(module, batch)`` gives a micro-batch's (logits, target), trained with
    `segmentation_loss` under SGD (or AdamW) with one x0.1 decay. BN statistics are then
    averaged over ``cfg.bn_batches`` batches of index stream 1: the training order (stream
    0) stays the same whether, and over how many batches, they are re-estimated. Some
    steps' crops, targets and outputs go to TensorBoard (`ddn.train.tensorboard`).
    """
    run, n = Path(cfg.out), plan.crops
    optimizer, scheduler, step = loop.strong_optimizer(
        model, cfg, plan.iters, plan.decay_step, resume
    )
    decay = f"lr x0.1 at step {plan.decay_step}" if plan.decay_step < plan.iters else "no lr decay"
    loop.print_plan(
        info, config["trainer"], iters=plan.iters, batch=cfg.batch, accum=plan.accum,
        unit="crops", examples=n, schedule=decay, start=step,
    )  # fmt: skip
    train_model = loop.wrap_for_training(model, info, device, cfg.compile)
    device_crops = crop_path.device_crops(cfg, train_set, device, info)
    groups, window = crop_order(train_set, info)
    sampler = StepBatchSampler(
        n, cfg.batch, plan.accum, plan.iters, step, cfg.seed, info, groups=groups, window=window
    )
    batches = _batches(sampler, train_set, device_crops, cfg.workers, device)
    latest = resume.path if resume else None
    metrics = start.open_metrics(run, info, step, latest)
    board = open_board(metrics, run, step, cfg.tensorboard)
    progress = loop.Progress(plan.iters, step, metrics, info, cfg.log_every, config["trainer"])
    state = checkpoint.checkpoint_state(model, optimizer, scheduler, config, plan.global_batch, n)
    ckpt = checkpoint.Checkpointer(run, cfg.ckpt_every, info, latest, state)

    weights: dict[int, Tensor | None] = {}

    def micro_loss(batch: dict[str, Tensor]) -> Tensor:
        logits, target = forward(train_model, batch)
        board.keep_crops(batch["image"], target, logits)
        channels = logits.shape[1]
        if channels not in weights:
            weights[channels] = plan.class_weight(channels, logits.device)
        return segmentation_loss(logits.float(), target, weights[channels])

    model.train()
    step = loop.train_steps(
        train_model, micro_loss, batches, optimizer, scheduler, progress, ckpt,
        step=step, iters=plan.iters, accum=plan.accum, global_batch=plan.global_batch,
        epoch_size=n, after_step=board.show_crops, on_step=on_step,
    )  # fmt: skip
    board.close()
    ckpt.maybe_save(step, force=True)

    bn_steps = math.ceil(cfg.bn_batches / info.world_size)
    if bn_steps:
        bn_sampler = StepBatchSampler(
            n, cfg.batch, 1, bn_steps, 0, cfg.seed, info, stream=1, groups=groups, window=window
        )
        bn_batches = _batches(bn_sampler, train_set, device_crops, cfg.workers, device)
        reestimate_bn(model, bn_batches, lambda batch: forward(model, batch), info)
    model.eval()


# ---------------------------------------------------------------- helpers


def crop_order(dataset: CropDataset, info: DistInfo) -> tuple[np.ndarray | None, int]:
    """(groups, window) for the sampler: a plain shuffle while every decoded source fits
    one reader's cache; beyond it, crops windowed by source image (`IndexStream`), with
    windows of as many images as fill half the cache (a batch may straddle two)."""
    need, cache = dataset.source_bytes(), dataset.image_cache.max_bytes
    if need <= cache:
        return None, 0
    groups = dataset.source_images()
    images = int(groups.max()) + 1 if len(groups) else 1
    window = max(1, int(cache / 2 / (need / images)))
    loop.log(
        info,
        f"strong crops: the {images} source images need {need / 2**20:.0f} MiB decoded, "
        f"more than a reader's cache ({cache / 2**20:.0f} MiB): crops are shuffled "
        f"within windows of {window} images",
    )
    return groups, window


def _batches(
    sampler: StepBatchSampler,
    dataset: CropDataset,
    device_crops: DeviceCrops | None,
    workers: int,
    device: torch.device,
) -> Iterator[dict[str, Tensor]]:
    if device_crops is not None:
        return (device_crops.batch(keys) for keys in sampler)
    return iter(loop.make_loader(dataset, sampler, workers, device))
