"""Checkpoints of a training run: what one holds, writing it every N steps, restoring it.

One dict per checkpoint, as torchvision's references keep it: model, optimizer,
lr_scheduler, step, epoch, plus the RNG states (resuming is bit-identical) and the
run's config. Writing and finding the files is `ddn.train.run`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddn.train.distributed import DistInfo, epoch_of_step
from ddn.train.run import rng_state, save_checkpoint, set_rng_state


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (what checkpoints hold)."""
    while True:
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: dict[str, Any],
    global_batch: int,
    epoch_size: int,
) -> Callable[[int], dict[str, Any]]:
    """What a checkpoint at a step holds (made when it is written: the RNG state is now's)."""

    def state(step: int) -> dict[str, Any]:
        return {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": epoch_of_step(step, global_batch, epoch_size),
            "rng": rng_state(),
            "config": config,
        }

    return state


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

    def __init__(
        self,
        run: Path,
        every: int,
        info: DistInfo,
        latest: Path | None,
        state: Callable[[int], dict[str, Any]],
    ) -> None:
        self.run, self.every, self.info, self.latest, self.state = run, every, info, latest, state

    def maybe_save(self, step: int, force: bool = False) -> None:
        if not self.info.is_main or not (force or (self.every and step % self.every == 0)):
            return
        self.latest = save_checkpoint(self.run, self.state(step))
