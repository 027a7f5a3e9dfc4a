"""`ddn train-seg`: bridge + segmenter on the strong crops, the classifier frozen.

Per micro-batch (DESIGN.md section 2): cls_out = classifier(images) without grad;
f_cls = saliency(classifier, pool5, subsets) (one backward pass through the frozen
head); logits = model(cls_out, f_cls); 2-class cross-entropy, 255 ignored, foreground
pixels weighted by ``fg_weight``. The optimisation (SGD, effective batch 64, the
reference's iteration table, BN re-estimation) is `ddn.train.strong`'s, shared with the
DeconvNet baseline.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddn.model_file import state_dict_mismatch
from ddn.models import Classifier, DecoupledSegmenter, normalize, saliency
from ddn.train import loop, start
from ddn.train.config import SegConfig
from ddn.train.crop_path import check_crop_settings
from ddn.train.distributed import DistInfo, barrier
from ddn.train.run_files import load_checkpoint, load_model, save_model
from ddn.train.strong import WARP_RATIO, strong_schedule, train_on_strong_crops
from ddn.trained_runs import load_classifier
from pipeline.errors import UserError
from pipeline.readers import CropDataset
from pipeline.shards import sha256_file


@dataclass
class SegResult:
    model: DecoupledSegmenter
    classifier: Classifier
    run: Path


def train_seg(cfg: SegConfig, on_step: loop.StepHook | None = None) -> SegResult:
    """Train (or resume) a segmenter run on a frozen classifier; returns the final model."""
    return loop.run_distributed(cfg.device, lambda info, held: _train(cfg, info, held, on_step))


def _train(
    cfg: SegConfig, info: DistInfo, held: ExitStack, on_step: loop.StepHook | None
) -> SegResult:
    device, fmt = loop.setup_device(cfg.device, cfg.channels_last, info)
    run = Path(cfg.out)

    classifier, cls_classes, cls_config = load_classifier(cfg.cls, device)
    classifier.requires_grad_(False)
    classifier.to(memory_format=fmt)
    _check(cfg, classifier)
    input_size = classifier.input_size
    width = cfg.width or float(cls_config["width"])
    warp = round(input_size * WARP_RATIO)
    train_set = CropDataset(cfg.data, warp_size=warp, crop_size=input_size, seed=cfg.seed)
    if train_set.classes != cls_classes:
        raise UserError(
            f"{cfg.cls}: classifier classes {cls_classes[1:]} differ from "
            f"{cfg.data}'s {train_set.classes[1:]}"
        )
    plan = strong_schedule(cfg, train_set, info)
    cls_model_file = Path(cfg.cls) / "model.pt" if Path(cfg.cls).is_dir() else Path(cfg.cls)
    classifier_info = {
        **{k: v for k, v in cls_config.items() if k != "train_config"},
        "run": str(Path(cfg.cls).resolve()),
        "sha256": sha256_file(cls_model_file),
    }
    config = start.run_config(
        cfg, "train-seg", cls=str(Path(cfg.cls).resolve()), input_size=input_size, width=width,
        warp_size=warp, **plan.config(), classes=train_set.classes[1:],
        classifier=classifier_info,
    )  # fmt: skip
    resume = start.open_run_on_all_ranks(run, config, cfg.resume, info, held, cfg.wait)

    torch.manual_seed(cfg.seed)
    pool5_size = input_size // 32
    model = DecoupledSegmenter(classifier.encoder.out_channels, width, pool5_size)
    if resume is None and cfg.weights != "none":
        _load_weights(model, cfg.weights)
    model.to(device, memory_format=fmt)
    cls_forward: nn.Module = torch.compile(classifier) if cfg.compile else classifier

    def forward(segmenter: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        images, subsets, target = _inputs(batch, device, fmt)
        return segment(cls_forward, classifier, segmenter, images, subsets, cfg.amp), target

    train_on_strong_crops(
        cfg, info, device, train_set, plan, config, resume, model, forward, on_step
    )
    if info.is_main:
        model_config = {
            "trainer": "train-seg", "in_channels": classifier.encoder.out_channels,
            "width": width, "pool5_size": pool5_size, "input_size": input_size,
            "classes": config["classes"], "num_classes": len(config["classes"]),
            "cls_run": classifier_info["run"], "classifier": classifier_info,
            "train_config": config,
        }  # fmt: skip
        save_model(run, model.state_dict(), model_config)
    barrier(info)
    return SegResult(model, classifier, run)


def segment(
    cls_forward: nn.Module,
    classifier: Classifier,
    model: nn.Module,
    images: Tensor,
    subsets: Tensor,
    amp: bool = True,
) -> Tensor:
    """(B, 2, H, W) logits: frozen classifier, its saliency for the subsets, the segmenter."""
    with loop.autocast(images.device, amp):
        with torch.no_grad():
            cls_out = cls_forward(images)
        sal = saliency(classifier, cls_out.pool5, subsets, scores=cls_out.scores)
        return model(cls_out, sal)


# ---------------------------------------------------------------- helpers


def _inputs(batch: dict[str, Tensor], device: torch.device, fmt) -> tuple[Tensor, Tensor, Tensor]:
    images = normalize(batch["image"].to(device, non_blocking=True)).contiguous(memory_format=fmt)
    subsets = batch["subset"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True).long()
    return images, subsets, target


def _load_weights(model: DecoupledSegmenter, weights: str) -> None:
    path = Path(weights)
    if not path.exists():
        raise UserError(f"{path}: not found (--weights: 'none' or a train-seg run / model.pt)")
    saved = load_model(path) if path.is_dir() else load_checkpoint(path)
    config = saved.get("config") if isinstance(saved, dict) else None
    trainer = config.get("trainer") if isinstance(config, dict) else None
    if trainer is not None and trainer != "train-seg":
        raise UserError(f"{weights}: a {trainer} run; --weights takes a train-seg run")
    try:
        model.load_state_dict(saved.get("model", saved))
    except (RuntimeError, AttributeError) as e:
        raise UserError(f"{weights}: does not fit this segmenter ({state_dict_mismatch(e)})") from e


def _check(cfg: SegConfig, classifier: Classifier) -> None:
    check_crop_settings(cfg.crop_path, cfg.device_crops_budget)
    if cfg.batch < 1 or (cfg.accum is not None and cfg.accum < 1):
        raise UserError("--batch and --accum must be at least 1")
    if cfg.iters is not None and cfg.iters < 1:
        raise UserError(f"--iters: must be at least 1, got {cfg.iters}")
    if cfg.input_size is not None and cfg.input_size != classifier.input_size:
        # eval and predict run classifier and segmenter on one input: a segmenter trained
        # at another size (another pool5) could never be loaded beside this classifier.
        raise UserError(
            f"--input-size {cfg.input_size}: the classifier run {cfg.cls} was trained at "
            f"{classifier.input_size}; the segmenter must use the classifier's input size "
            "(eval and predict run both at one size); leave --input-size out"
        )
    if classifier.input_size % 32:
        raise UserError(
            f"{cfg.cls}: the classifier's input size {classifier.input_size} is not a "
            "multiple of 32, which the segmenter's unpooling needs"
        )
    if cfg.bn_batches < 0:
        raise UserError(f"--bn-batches: must be at least 0, got {cfg.bn_batches}")
    if cfg.width is not None and not math.isclose(cfg.width, classifier.width):
        # The segmenter unpools with the classifier's pool switches, one per channel, so
        # every decoder stage must have the encoder stage's channel count.
        raise UserError(
            f"--width {cfg.width}: the segmenter unpools with the classifier's switches, so "
            f"its width must be the classifier's ({classifier.width}); leave --width out"
        )
    if cfg.optimizer not in ("sgd", "adamw"):
        raise UserError(f"--optimizer: expected sgd or adamw, got {cfg.optimizer!r}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise UserError(f"--lr: must be a positive number, got {cfg.lr}")
