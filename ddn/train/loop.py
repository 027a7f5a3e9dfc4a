"""What both trainers' loops share: device, precision, loader, progress, checkpoints.

The loops themselves stay in `ddn.train.cls` and `ddn.train.seg`, flat and readable top
to bottom (torchvision's references, nanoGPT); this module holds only the pieces both
would otherwise copy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ddn.train.distributed import DistInfo, EpochItems, StepBatchSampler
from ddn.train.run import MetricsLog, rng_state, save_checkpoint, set_rng_state
from pipeline.errors import UserError

StepHook = Callable[[int], None]


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops, the last checkpoint stays."""


def device_type(name: str) -> str:
    """'cuda' or 'cpu' for a --device value, before the process group (which needs it)."""
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a device (cuda:LOCAL_RANK under torchrun)."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on CUDA; float32 on CPU (CPU bf16 is slower on most machines)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def memory_format(device: torch.device, enabled: bool = True) -> torch.memory_format:
    """channels_last on CUDA (the fast layout of cuDNN's convolutions), else contiguous."""
    return torch.channels_last if device.type == "cuda" and enabled else torch.contiguous_format


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (what checkpoints hold)."""
    while True:
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def make_loader(
    dataset: Any, sampler: StepBatchSampler, workers: int, device: torch.device
) -> DataLoader:
    return DataLoader(
        EpochItems(dataset),
        batch_sampler=sampler,
        num_workers=limit_cv2_threads(workers),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def limit_cv2_threads(workers: int) -> int:
    """One cv2 thread per DataLoader worker, set in the parent before the fork.

    N workers each running cv2's thread pool only contend for the same cores, and
    setting it inside a forked worker can deadlock (pipeline.readers).
    """
    if workers:
        cv2.setNumThreads(1)
    return workers


def check_finite(loss: float, step: int, run: Path, latest: Path | None) -> None:
    if loss != loss or loss in (float("inf"), float("-inf")):
        kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written"
        raise NonFiniteLoss(
            f"{run}: loss is {loss} at step {step}; stopped ({kept}); "
            "try a lower --lr, or --resume from the checkpoint"
        )


# ---------------------------------------------------------------- checkpoints


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    epoch: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": rng_state(),
        "config": config,
    }


def restore_state(
    ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Load a checkpoint into the training objects; returns its step."""
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


class Checkpointer:
    """Rank 0 writes ``checkpoint-<step>.pt`` every ``every`` steps and on request."""

    def __init__(self, run: Path, every: int, info: DistInfo, latest: Path | None) -> None:
        self.run, self.every, self.info, self.latest = run, every, info, latest

    def maybe_save(self, step: int, make_state: Callable[[], dict[str, Any]], force=False) -> None:
        if not self.info.is_main or not (force or (self.every and step % self.every == 0)):
            return
        self.latest = save_checkpoint(self.run, make_state())


# ---------------------------------------------------------------- progress


class Progress:
    """tqdm bar (loss, lr, examples/s) and metrics.csv rows, on rank 0 only."""

    def __init__(
        self,
        total: int,
        start: int,
        metrics: MetricsLog | None,
        info: DistInfo,
        log_every: int,
        desc: str,
    ) -> None:
        self.info, self.metrics, self.log_every = info, metrics, max(1, log_every)
        self.bar = tqdm(
            total=total, initial=start, desc=desc, unit="step", disable=not info.is_main or None,
            file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        self._loss_sum, self._steps, self._examples = 0.0, 0, 0
        self._t0 = time.perf_counter()
        self.last: dict[str, float] = {}

    def step(self, step: int, epoch: int, loss: float, lr: float, examples: int) -> None:
        """Account one optimizer step (``examples`` over all ranks); log every N steps."""
        self._loss_sum += loss
        self._steps += 1
        self._examples += examples
        self.bar.update(1)
        if step % self.log_every:
            return
        elapsed = time.perf_counter() - self._t0
        row = {
            "step": step, "epoch": epoch, "loss": self._loss_sum / self._steps, "lr": lr,
            "examples_per_s": self._examples / max(elapsed, 1e-9),
        }  # fmt: skip
        self.last = row
        self.bar.set_postfix(
            loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{row['examples_per_s']:.1f}"
        )
        if self.metrics is not None and self.info.is_main:
            self.metrics.write(row)
        self._loss_sum, self._steps, self._examples = 0.0, 0, 0
        self._t0 = time.perf_counter()

    def close(self) -> None:
        self.bar.close()


def sgd_step_decay(
    model: nn.Module,
    cfg: Any,
    iters: int,
    decay_step: int,
    latest: Path | None,
    device: torch.device,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, int]:
    """The reference segmenter optimiser (SGD, one x0.1 decay), restored from ``latest``.

    Shared by train-seg and the DeconvNet baseline so both train under the same recipe.
    Returns the optimiser, its scheduler and the step to continue from.
    """
    from ddn.train.run import load_checkpoint
    from ddn.train.schedule import LRSchedule

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRSchedule(iters, 0, "step", (decay_step,), gamma=0.1)
    )
    step = 0
    if latest is not None:
        step = restore_state(load_checkpoint(latest, device), model, optimizer, scheduler)
    return optimizer, scheduler, step


def wrap_for_training(
    model: nn.Module, info: DistInfo, device: torch.device, compile_: bool
) -> nn.Module:
    """DDP (when distributed) and torch.compile (when asked) around ``model``."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped: nn.Module = model
    if info.enabled:
        wrapped = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile_:
        wrapped = torch.compile(wrapped)
    return wrapped
