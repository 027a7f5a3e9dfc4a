"""Checkpoints of a training run: what one holds, writing it every N steps, restoring it.

One dict per checkpoint, as torchvision's references keep it: model, optimizer,
lr_scheduler, step, epoch, plus the RNG states (resuming is bit-identical) and the
run's config. Writing and finding the files is `ddn.train.run_files`'s.

``--resume`` reads the newest checkpoint that loads (`read_resume`): a torn one (a copy
cut short, a crash of the disk) is moved aside with a warning and the one before it is
used, the steps after it are trained again. A checkpoint that loads but belongs to other
settings (copied from another run) is an error naming the file and the setting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ddn.model_file import state_dict_mismatch
from ddn.train.distributed import DistInfo, epoch_of_step
from ddn.train.run_files import (
    changed_settings,
    checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pipeline.errors import UserError

KEYS = ("model", "optimizer", "lr_scheduler", "step", "rng")  # what restoring reads
UNREADABLE = ".unreadable"  # suffix of a torn checkpoint moved aside by --resume


class Resume(NamedTuple):
    """The checkpoint a run resumes from: its file and what it holds (on the CPU)."""

    path: Path
    state: dict[str, Any]


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


def read_resume(run: Path, config: dict[str, Any], warn: bool = True) -> Resume | None:
    """The newest checkpoint of ``run`` that loads (None: the run has none).

    Only the newest is read unless it is torn; then older ones, newest first. Torn files
    before the one used are renamed to ``<name>.unreadable`` (kept, but out of the
    checkpoint list, so that pruning and the other ranks never pick them), with a warning
    line each when ``warn``. None loading is an error (nothing is moved then). Loaded on
    the CPU: the RNG states must be CPU tensors, and restoring copies onto the device.
    """
    found = checkpoints(run)
    torn: list[tuple[Path, UserError]] = []
    for _, path in reversed(found):
        try:
            state = load_checkpoint(path, "cpu")
        except UserError as e:
            torn.append((path, e))
            continue
        check_fits(path, state, config)
        for bad, error in torn:
            aside = _move_aside(bad, error, path)
            if warn:
                print(
                    f"warning: {error}; moved to {aside.name}, resuming from {path.name} "
                    f"(step {int(state['step'])}): the steps after it are trained again",
                    file=sys.stderr,
                    flush=True,
                )
        return Resume(path, state)
    if torn:
        older = ", ".join(p.name for p, _ in torn[1:])
        also = f", and no older one loads either ({older})" if older else ""
        them = "them" if older else "it"
        raise UserError(
            f"{torn[0][1]}{also}: nothing to resume from; move {them} away to start over"
        )
    return None


def check_fits(path: Path, state: Any, config: dict[str, Any]) -> None:
    """Refuse a checkpoint that loads but is not one of this run's (a copy from another)."""
    if not isinstance(state, dict) or not all(k in state for k in KEYS):
        raise UserError(f"{path}: not a training checkpoint (expected keys {', '.join(KEYS)})")
    saved = state.get("config")
    changed = changed_settings(saved, config) if isinstance(saved, dict) else ""
    if changed:
        raise UserError(
            f"{path}: does not fit this run (other settings: {changed}); "
            "move it out of the run directory"
        )


def restore_state(
    resume: Resume, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Load a checkpoint into the training objects; returns its step.

    Empties ``resume.state`` afterwards: the trainers keep ``resume`` for the whole run,
    and a second copy of the weights would stay in memory all along.
    """
    ckpt = resume.state
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # weights of another model
        raise UserError(f"{resume.path}: does not fit this run ({state_dict_mismatch(e)})") from e
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    set_rng_state(ckpt["rng"])
    step = int(ckpt["step"])
    ckpt.clear()
    return step


def _move_aside(path: Path, error: UserError, used: Path) -> Path:
    aside = path.with_name(path.name + UNREADABLE)
    try:
        path.replace(aside)
    except OSError as e:
        raise UserError(
            f"{error}; could not move it aside ({e.strerror or e}): "
            f"move it away to resume from {used.name}"
        ) from None
    return aside


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
