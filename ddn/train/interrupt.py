"""Ctrl-C at any point of a training step leaves a checkpoint of the last finished step.

Two ways a step can be caught half done:
- in the forward passes: batch norm has already moved its running statistics (and
  ``num_batches_tracked``) for a step that will be redone after --resume, so the resumed
  run would count that batch twice. `BufferSnapshot` keeps the buffers as they were at
  the start of the step and puts them back before the checkpoint is written;
- in the optimizer / scheduler update: some parameters stepped, others not.
  `deferred_interrupt` holds Ctrl-C until that short block is through.
The forward and backward passes are not deferred as a whole: DataLoader workers exit
on the same Ctrl-C, so a step that still needs a batch could not finish.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block to its end; a Ctrl-C that came meanwhile is raised after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class BufferSnapshot:
    """A copy of a model's buffers (BN statistics), taken by `take`, put back by `restore`."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def take(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)  # one launch, not one per buffer

    @torch.no_grad()
    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)
