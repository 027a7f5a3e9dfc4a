"""`ddn train-cls`: the multi-label classifier on the weak shards.

Per step: a batch of `WeakDataset` crops (random resized crop + flip at the input
size), ImageNet normalisation, BCE-with-logits on the average-pooled scores; SGD with
momentum (or AdamW, ``--optimizer adamw``: tiny models from scratch learn much faster with
it), the head at ``head_lr_mult`` x the backbone's rate (the reference's 10x for a new
head); linear warm-up, then cosine decay to 0 (``--decay cosine``), x0.1 at 2/3 of
the run (``--decay step``) or constant with a linear decay to 0 over its last 20%
(``--decay wsd``). After every epoch (and at the end) rank 0 measures the
validation mAP and per-class AP on the val shards' image labels (at most ``MAX_VALIDATIONS``
times a run unless ``val_every`` says otherwise).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ddn.metrics import mean_average_precision
from ddn.models import Classifier, normalize
from ddn.train import checkpoint, loop, schedule, start
from ddn.train.balance import balance_weight, parse_weight
from ddn.train.config import ClsConfig
from ddn.train.distributed import DistInfo, StepBatchSampler, barrier
from ddn.train.run_files import save_model
from ddn.train.schedule import DECAYS, LRSchedule
from ddn.train.tensorboard import open_board
from pipeline.errors import UserError
from pipeline.readers import WeakDataset

STEP_DECAY_AT = 2 / 3  # --decay step: x0.1 at this share of the run
MAX_WARMUP = 500
# Validation after every epoch, but at most this many times a run: with a small weak set
# (a DecoupledNet-Str split: 75 images, 5 steps an epoch) validating 236 images after
# every epoch took longer than the training itself.
MAX_VALIDATIONS = 10


@dataclass
class ClsResult:
    model: Classifier
    run: Path
    classes: list[str]
    val_map: float = float("nan")
    val_ap: np.ndarray = field(default_factory=lambda: np.zeros(0))


def train_cls(cfg: ClsConfig, on_step: loop.StepHook | None = None) -> ClsResult:
    """Train (or resume) a classifier run; returns the final model and validation AP."""
    return loop.run_distributed(cfg.device, lambda info, held: _train(cfg, info, held, on_step))


def _train(
    cfg: ClsConfig, info: DistInfo, held: ExitStack, on_step: loop.StepHook | None
) -> ClsResult:
    device, fmt = loop.setup_device(cfg.device, cfg.channels_last, info)
    run = Path(cfg.out)
    _check(cfg)

    train_set = WeakDataset(
        cfg.data, cfg.input_size, True, cfg.seed, "weak", pad_square=cfg.pad_square
    )
    try:
        val_set: WeakDataset | None = WeakDataset(
            cfg.data, cfg.input_size, train=False, source="val"
        )
    except UserError as e:
        warnings.warn(f"no validation: {e}", stacklevel=2)
        val_set = None
    val_loader = make_val_loader(val_set, cfg.batch, cfg.workers) if val_set is not None else None
    classes = train_set.classes[1:]
    n, global_batch = len(train_set), cfg.batch * info.world_size
    iters = cfg.iters if cfg.iters is not None else max(1, round(cfg.epochs * n / global_batch))
    warmup = cfg.warmup if cfg.warmup is not None else min(MAX_WARMUP, iters // 10)
    milestones = (round(iters * STEP_DECAY_AT),) if cfg.decay == "step" else ()
    pos_weight = class_pos_weights(cfg.pos_weight, train_set)
    val_every = cfg.val_every or max(
        math.ceil(n / global_batch), math.ceil(iters / MAX_VALIDATIONS)
    )
    config = start.run_config(
        cfg, "train-cls", iters=iters, warmup=warmup, milestones=list(milestones),
        val_every=val_every, pos_weight_values=[round(w, 4) for w in pos_weight.tolist()],
        world_size=info.world_size, global_batch=global_batch, train_images=n,
        classes=classes, num_classes=len(classes),
    )  # fmt: skip
    resume = start.open_run_on_all_ranks(run, config, cfg.resume, info, held, cfg.wait)
    latest = resume.path if resume else None

    torch.manual_seed(cfg.seed)
    model = Classifier(len(classes), cfg.arch, cfg.width, cfg.input_size)
    if latest is None and info.is_main:
        model.load_pretrained(cfg.weights)  # other ranks get rank 0's weights from DDP
    model.to(device, memory_format=fmt)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRSchedule(iters, warmup, cfg.decay, milestones)
    )
    step = checkpoint.restore_state(resume, model, optimizer, scheduler) if resume else 0
    loop.print_plan(
        info, "train-cls", iters=iters, batch=cfg.batch, accum=None, unit="images",
        examples=n, schedule=_schedule(cfg.decay, warmup, milestones), start=step,
    )  # fmt: skip
    train_model = loop.wrap_for_training(model, info, device, cfg.compile)

    sampler = StepBatchSampler(n, cfg.batch, 1, iters, step, cfg.seed, info)
    loader = loop.make_loader(train_set, sampler, cfg.workers, device)
    ap_columns = [f"ap_{c}" for c in classes]
    metrics = start.open_metrics(run, info, step, latest, ["val_map", *ap_columns])
    board = open_board(metrics, run, step, cfg.tensorboard)
    progress = loop.Progress(iters, step, metrics, info, cfg.log_every, "train-cls")
    state = checkpoint.checkpoint_state(model, optimizer, scheduler, config, global_batch, n)
    ckpt = checkpoint.Checkpointer(run, cfg.ckpt_every, info, latest, state)
    result = ClsResult(model, run, classes)
    pos_weight_t = pos_weight.to(device)

    def micro_loss(batch: dict[str, Tensor]) -> Tensor:
        images = normalize(batch["image"].to(device, non_blocking=True))
        images = images.contiguous(memory_format=fmt)
        labels = batch["labels"].to(device, non_blocking=True)
        with loop.autocast(device, cfg.amp):
            out = train_model(images)
        return classification_loss(out.logits.float(), labels, pos_weight_t)

    def validate(step: int) -> None:
        if info.is_main and val_loader is not None:
            result.val_map, result.val_ap = evaluate(model, val_loader, device, cfg.amp, fmt)
            # --resume of a finished run validates again for its result, but the row of
            # that step is already in metrics.csv.
            if not metrics.has(step, "val_map"):
                row = {"step": step, "epoch": step * global_batch / n, "val_map": result.val_map}
                metrics.write(row | dict(zip(ap_columns, result.val_ap.tolist(), strict=True)))
        barrier(info)

    def maybe_validate(step: int) -> None:
        if step % val_every == 0 and step < iters:  # the last step validates after the loop
            validate(step)

    model.train()
    step = loop.train_steps(
        train_model, micro_loss, iter(loader), optimizer, scheduler, progress, ckpt,
        step=step, iters=iters, accum=1, global_batch=global_batch, epoch_size=n,
        after_step=maybe_validate, on_step=on_step,
    )  # fmt: skip
    validate(step)
    board.close()
    ckpt.maybe_save(step, force=True)
    if info.is_main:
        model_config = {
            **model.config(), "classes": classes, "trainer": "train-cls",
            "val_map": result.val_map, "train_config": config,
        }  # fmt: skip
        save_model(run, model.state_dict(), model_config)
    barrier(info)
    return result


def make_optimizer(cfg: ClsConfig, model: Classifier) -> torch.optim.Optimizer:
    """SGD with momentum (the reference), or AdamW: from scratch, a tiny VGG learns the
    synthetic classes several times faster with it (measured for the tests)."""
    groups = model.param_groups(cfg.lr, cfg.head_lr_mult)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label sigmoid cross-entropy (the reference's loss for the classifier), each
    class's positive term weighted by ``pos_weight`` (C,) when given."""
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)


def class_pos_weights(setting: str, dataset: WeakDataset) -> torch.Tensor:
    """(C,) weights of each class's positives: "auto" from its share of the training
    images (`ddn.train.balance.balance_weight`), or one number for every class."""
    value = parse_weight(setting, "--pos-weight")
    if value is not None:
        return torch.full((dataset.num_classes,), value)
    shares = dataset.label_counts() / max(1, len(dataset))
    return torch.tensor([balance_weight(float(f)) for f in shares])


def make_val_loader(dataset: WeakDataset, batch: int, workers: int) -> DataLoader:
    """The val images in order. Its workers persist across validations: each keeps the
    decoded images of its batches in its reader's cache, which new workers would not have."""
    n = loop.limit_cv2_threads(workers)
    return DataLoader(dataset, batch_size=batch, num_workers=n, persistent_workers=n > 0)


@torch.no_grad()
def evaluate(
    model: Classifier,
    loader: Iterable[dict[str, Tensor]],
    device: torch.device,
    amp: bool = True,
    fmt: torch.memory_format = torch.contiguous_format,
) -> tuple[float, np.ndarray]:
    """(mAP, per-class AP) of ``model`` on the batches of ``loader`` (`make_val_loader`)."""
    was_training = model.training
    model.eval()
    scores, labels = [], []
    for b in loader:
        images = normalize(b["image"].to(device)).contiguous(memory_format=fmt)
        with loop.autocast(device, amp):
            scores.append(model(images).logits.float().cpu())
        labels.append(b["labels"])
    model.train(was_training)
    return mean_average_precision(torch.cat(scores).numpy(), torch.cat(labels).numpy())


def _schedule(decay: str, warmup: int, milestones: tuple[int, ...]) -> str:
    """The learning-rate schedule in words, for the plan line."""
    if milestones:
        after = f"lr x0.1 at step {milestones[0]}"
    else:
        after = {
            "cosine": "cosine decay to 0",
            "wsd": f"constant lr, linear decay to 0 over the last {schedule.WSD_TAIL:.0%}",
        }.get(decay, "constant lr")
    return f"{warmup} warm-up steps, then {after}" if warmup else after


def _check(cfg: ClsConfig) -> None:
    if cfg.batch < 1:
        raise UserError(f"--batch: must be at least 1, got {cfg.batch}")
    if cfg.iters is not None and cfg.iters < 1:
        raise UserError(f"--iters: must be at least 1, got {cfg.iters}")
    if cfg.iters is None and not cfg.epochs > 0:
        raise UserError(f"--epochs: must be positive, got {cfg.epochs}")
    if cfg.decay not in DECAYS:
        raise UserError(f"--decay: expected one of {', '.join(DECAYS)}, got {cfg.decay!r}")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise UserError(f"--optimizer: expected sgd or adamw, got {cfg.optimizer!r}")
    if cfg.input_size % 32:
        raise UserError(f"--input-size: must be a multiple of 32, got {cfg.input_size}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise UserError(f"--lr: must be a positive number, got {cfg.lr}")
