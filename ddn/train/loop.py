"""What the trainers share: process group, device, run directory, the step loop.

Each trainer (`ddn.train.cls`, `ddn.train.seg`, `ddn.train.deconvnet`) stays readable top
to bottom (torchvision's references, nanoGPT): it builds its data, model and optimiser,
says how one micro-batch's loss is computed, and hands that to `train_steps`. This module
holds only what all of them would otherwise copy; checkpoints are `ddn.train.checkpoint`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import cv2
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ddn.train.checkpoint import Checkpointer, Resume, restore_state
from ddn.train.distributed import (
    DistInfo,
    EpochItems,
    StepBatchSampler,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    no_sync,
)
from ddn.train.interrupt import BufferSnapshot, deferred_interrupt
from ddn.train.run_files import MetricsLog
from pipeline.errors import UserError
from pipeline.progress import is_terminal

StepHook = Callable[[int], None]
R = TypeVar("R")


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops, the last checkpoint stays."""


def run_distributed(device: str, train: Callable[[DistInfo, ExitStack], R]) -> R:
    """``train(info, held)`` inside torchrun's process group (when there is one), always
    left after; what ``train`` enters into ``held`` (the run directory's lock, taken by
    `open_run_on_all_ranks`) is released when it returns or raises."""
    info = init_distributed(device_type(device))
    try:
        with ExitStack() as held:
            return train(info, held)
    finally:
        cleanup_distributed(info)


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


def setup_device(
    name: str, channels_last: bool, info: DistInfo
) -> tuple[torch.device, torch.memory_format]:
    """The --device, its fast backend settings, and the memory format inputs should take."""
    device = resolve_device(name, info)
    configure_backends(device)
    return device, memory_format(device, channels_last)


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


# ---------------------------------------------------------------- progress

PLAIN_LINE_S = 60.0  # in a log, a progress line at least about this often (tests shrink it)


def log(info: DistInfo, line: str) -> None:
    """One line of a trainer's log: rank 0 only, on stderr with its progress lines (stdout
    is the command's result: where the model was saved)."""
    if info.is_main:
        print(line, file=sys.stderr, flush=True)


def print_plan(
    info: DistInfo,
    trainer: str,
    *,
    iters: int,
    batch: int,
    accum: int | None,
    unit: str,
    examples: int,
    schedule: str,
    start: int = 0,
) -> None:
    """A trainer's first line (rank 0, stderr): the steps, what one step is, the schedule.

    The effective batch is spelled out as train-seg's is not ``--batch`` (it accumulates
    to the reference's 64). ``accum`` None: a trainer that never accumulates (train-cls).
    """
    n = info.world_size
    parts = [f"batch {batch}", *([f"accum {accum}"] if accum is not None else [])]
    parts.append(f"{n} process" if n == 1 else f"{n} processes")
    steps = f"{iters} step" if iters == 1 else f"{iters} steps"
    line = (
        f"{trainer}: {steps} of {batch * (accum or 1) * n} {unit} ({' x '.join(parts)}), "
        f"{schedule}; {examples} training {unit}"
    )
    if start:
        line += f"; resuming after step {start}"
    log(info, line)


class Progress:
    """On rank 0: a tqdm bar (loss, lr, examples/s) on a terminal, plain lines in a log,
    and metrics.csv rows every ``log_every`` steps and at the last.

    In a log (stderr no terminal) a line follows the first step, then every
    ``log_every`` steps or `PLAIN_LINE_S` seconds, whichever comes first: a CPU step can
    take most of a minute, and a log silent for ``log_every`` of them looks hung. Loss and
    examples/s are averages since the last metrics row.
    """

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
        self.total, self.desc = total, desc
        self.plain = info.is_main and not is_terminal()
        self.bar = tqdm(
            total=total, initial=start, desc=desc, unit="step",
            disable=not info.is_main or self.plain, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        self._loss_sum, self._steps, self._examples = 0.0, 0, 0
        self._t0 = self._line_t = time.perf_counter()
        self._line_shown = False
        self.last: dict[str, float] = {}

    def step(self, step: int, epoch: int, loss: float, lr: float, examples: int) -> None:
        """Account one optimizer step (``examples`` over all ranks); log when due."""
        self._loss_sum += loss
        self._steps += 1
        self._examples += examples
        self.bar.update(1)
        now = time.perf_counter()
        row_due = step % self.log_every == 0 or step == self.total  # the last: always
        line_due = self.plain and (
            row_due or not self._line_shown or now - self._line_t >= PLAIN_LINE_S
        )
        if not (row_due or line_due):
            return
        row = {
            "step": step, "epoch": epoch, "loss": self._loss_sum / self._steps, "lr": lr,
            "examples_per_s": self._examples / max(now - self._t0, 1e-9),
        }  # fmt: skip
        if line_due:
            print(
                f"{self.desc} step {step}/{self.total} epoch {epoch:.2f} "
                f"loss {row['loss']:.4f} lr {lr:.2e} ex/s {row['examples_per_s']:.1f}",
                file=sys.stderr,
                flush=True,
            )
            self._line_shown, self._line_t = True, now
        if not row_due:
            return
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


# ---------------------------------------------------------------- the step loop


def train_steps(
    train_model: nn.Module,
    micro_loss: Callable[[dict[str, Tensor]], Tensor],
    batches: Iterator[dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    ckpt: Checkpointer,
    *,
    step: int,
    iters: int,
    accum: int,
    global_batch: int,
    epoch_size: int,
    after_step: StepHook | None = None,
    on_step: StepHook | None = None,
) -> int:
    """Optimizer steps ``step + 1 .. iters``; returns the step reached.

    One step: ``accum`` micro-batches from ``batches``, the gradient of the mean of their
    ``micro_loss`` (DDP syncs on the last only), a stop when the loss over all ranks is not
    finite, the optimizer and scheduler steps, then ``progress``, ``after_step`` (train-cls
    validates there), a checkpoint when one is due, and ``on_step`` (the tests' hook).
    Ctrl-C checkpoints the last finished step before it propagates, wherever it lands
    (`ddn.train.interrupt`): --resume goes on from there as if never stopped.
    """
    info = ckpt.info
    buffers = BufferSnapshot(train_model)
    mid_step = False
    try:
        while step < iters:
            buffers.take()
            mid_step = True
            optimizer.zero_grad(set_to_none=True)
            losses = []
            for micro in range(accum):
                with no_sync(train_model, micro < accum - 1):
                    loss = micro_loss(next(batches))
                    (loss / accum).backward()
                losses.append(loss.detach())
            total = sum(losses, torch.zeros((), device=losses[0].device))
            loss_value = all_reduce_mean(total / accum, info).item()
            check_finite(loss_value, step + 1, ckpt.run, ckpt.latest)
            with deferred_interrupt():  # never a half-applied update
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                mid_step = False
            progress.step(step, step * global_batch / epoch_size, loss_value, lr, global_batch)
            if after_step is not None:
                after_step(step)
            ckpt.maybe_save(step)
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        if mid_step:  # BN saw batches of a step that --resume will redo
            buffers.restore()
        ckpt.maybe_save(step, force=True)
        if info.is_main:
            progress.bar.write(f"interrupted at step {step}: saved {ckpt.latest}; add --resume")
        raise
    finally:
        progress.close()
    return step


def strong_optimizer(
    model: nn.Module,
    cfg: Any,
    iters: int,
    decay_step: int,
    resume: Resume | None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, int]:
    """The segmenter optimiser, one x0.1 decay at ``decay_step``, restored from ``resume``.

    ``cfg.optimizer``: "sgd" with momentum (the reference), or "adamw" (a tiny segmenter
    trained from scratch in a few hundred steps; ``momentum`` is then unused). Shared by
    train-seg and the DeconvNet baseline so both train under the same recipe. Returns
    the optimiser, its scheduler and the step to continue from.
    """
    from ddn.train.schedule import LRSchedule

    params, lr, decay = model.parameters(), cfg.lr, cfg.weight_decay
    optimizer: torch.optim.Optimizer
    if getattr(cfg, "optimizer", "sgd") == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRSchedule(iters, 0, "step", (decay_step,), gamma=0.1)
    )
    step = restore_state(resume, model, optimizer, scheduler) if resume else 0
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
