"""TensorBoard event files beside metrics.csv: every metrics row, and train-seg's crops.

With ``--tensorboard`` (the default) rank 0 writes, through
`torch.utils.tensorboard.SummaryWriter`, into the run directory:

- each metrics.csv row's values as scalars at its step (`tag`): ``train/loss``,
  ``train/lr``, ``train/examples_per_s``, and train-cls's ``val/mAP`` and
  ``val_AP/<class>``. A blank cell (the AP of a class absent from val) is left out, and so
  is the epoch: it is the step on another scale, and a validation row repeats it;
- train-seg and its DeconvNet baseline: at the first step of a run (or of its
  resumption) and every `IMAGE_EVERY` steps, ``train/crops``, a grid of the step's first
  `IMAGE_CROPS` training crops (top row, 0-1), their targets under them and the network's
  output on them at the bottom. train-seg shows both in grey (0 black, foreground white,
  ignored pixels mid-grey; the output is the foreground probability), the baseline as
  label maps in the VOC colours (its argmax).

TensorBoard is an optional extra (``pip install 'ddn[tensorboard]'``): without it a run
trains as before, after one note saying how to get the events. A resumed run opens a new
event file whose first event tells TensorBoard to drop what the earlier files hold past
the resumed step (``purge_step``), as metrics.csv drops its rows: each step shows once. A
write that fails (a full disk) costs the events, never the run: one warning, then none.
"""

from __future__ import annotations

import numbers
import re
import sys
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddn.train.run_files import MetricsLog
from pipeline.cropping import IGNORE
from pipeline.synth import voc_colormap

IMAGE_EVERY = 200  # steps between train-seg's crop grids
IMAGE_CROPS = 4  # crops in a grid
NOT_INSTALLED = (
    "note: TensorBoard is not installed, so no event files are written beside metrics.csv; "
    "pip install 'ddn[tensorboard]' to get them (--no-tensorboard hides this note)"
)
_STAMP = re.compile(r"^events\.out\.tfevents\.(\d+)\.")
_NOT_SCALARS = frozenset({"step", "epoch"})


def tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column."""
    if column == "val_map":
        return "val/mAP"
    if column.startswith("ap_"):
        return f"val_AP/{column[3:]}"
    return f"train/{column}"


class Board:
    """A run's TensorBoard writer, or a stand-in that does nothing (other ranks,
    --no-tensorboard, TensorBoard not installed, a failed write), so that the trainers
    call it alike everywhere."""

    def __init__(self, writer: Any = None, run: Path | None = None, start: int = 0) -> None:
        self.writer, self.run = writer, run
        self._next = start + 1  # the step the next micro-batches belong to
        self._first = start + 1
        self._kept: tuple[Tensor, Tensor, Tensor] | None = None
        # A run that stops on an error never reaches close(): close when it is dropped.
        self._close = weakref.finalize(self, writer.close) if writer is not None else None

    def scalars(self, row: Mapping[str, Any]) -> None:
        """A metrics row's numbers at its step (`MetricsLog.write` calls this)."""
        if self.writer is None:
            return
        step = int(row["step"])
        values = {
            tag(k): float(v)
            for k, v in row.items()
            if k not in _NOT_SCALARS and isinstance(v, numbers.Real) and v == v
        }
        self._write(lambda w: [w.add_scalar(k, v, step) for k, v in values.items()])

    def images_due(self, step: int) -> bool:
        return self.writer is not None and (step == self._first or step % IMAGE_EVERY == 0)

    def keep_crops(self, images: Tensor, target: Tensor, logits: Tensor) -> None:
        """Remember a micro-batch's first crops (0..255 images), targets and output logits
        when the step they belong to shows its crops."""
        if self._kept is None and self.images_due(self._next):
            n = IMAGE_CROPS
            self._kept = (images[:n].detach(), target[:n].detach(), logits[:n].detach())

    def show_crops(self, step: int) -> None:
        """After optimizer step ``step``: its kept crops as ``train/crops`` (a `StepHook`)."""
        kept, self._kept, self._next = self._kept, None, step + 1
        if kept is not None and self.writer is not None:
            grid = crop_grid(*kept)
            self._write(lambda w: w.add_image("train/crops", grid, step))

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def _write(self, add: Any) -> None:
        # Flushed at once: a run watched live shows each row as it comes, and a run that
        # stops on an error has lost no event.
        try:
            add(self.writer)
            self.writer.flush()
        except OSError as e:
            print(
                f"warning: {self.run}: could not write TensorBoard events "
                f"({e.strerror or e}); training goes on without them",
                file=sys.stderr,
                flush=True,
            )
            self.writer = None


def open_board(metrics: MetricsLog | None, run: Path, step: int, enabled: bool) -> Board:
    """The run's `Board`, its scalars fed by ``metrics`` (None: not rank 0), starting after
    ``step`` (0, or the step resumed from; later events of earlier files are purged)."""
    if metrics is None or not enabled:
        return Board()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(NOT_INSTALLED, file=sys.stderr, flush=True)
        return Board()
    _wait_for_a_later_second(run)
    try:
        writer = SummaryWriter(str(run), purge_step=step + 1)
    except OSError as e:
        print(
            f"warning: {run}: cannot write TensorBoard events ({e.strerror or e}); "
            "training goes on without them",
            file=sys.stderr,
            flush=True,
        )
        return Board()
    board = Board(writer, run, step)
    metrics.mirror(board)
    return board


def _wait_for_a_later_second(run: Path, longest: float = 2.0) -> None:
    """Wait, when needed, until the clock's second is past every event file's in ``run``.

    TensorBoard reads a directory's event files in name order, and a name starts with the
    second it was opened in, then the host, the process id and a counter, which do not sort
    by time. A file opened in the same second as an earlier one (a resume right after a
    stop, as in the tests) could sort before it; its purge would then be read first and
    purge nothing. A stamp further ahead than ``longest`` (a clock put back) is not waited for.
    """
    stamps = [int(m.group(1)) for p in run.iterdir() if (m := _STAMP.match(p.name))]
    if not stamps:
        return
    wait = max(stamps) + 1 - time.time()
    if 0 < wait <= longest:
        time.sleep(wait)


def crop_grid(images: Tensor, target: Tensor, logits: Tensor) -> Tensor:
    """(3, H, W) in 0-1: the crops on the top row, their targets under them, the output
    at the bottom; grey for a 2-class output (its foreground probability), else VOC colours."""
    from torchvision.utils import make_grid

    images, target, logits = images.cpu().float(), target.cpu().long(), logits.cpu().float()
    pictures = (images / 255).clamp(0, 1)
    if logits.shape[1] == 2:
        truth = torch.where(target == IGNORE, 0.5, target.clamp(max=1).float())
        truth = truth[:, None].expand(-1, 3, -1, -1)
        output = logits.softmax(1)[:, 1:].expand(-1, 3, -1, -1)
    else:
        truth, output = _colours(target), _colours(logits.argmax(1))
    n = images.shape[0]
    return make_grid(torch.cat([pictures, truth, output]), nrow=n, padding=2, pad_value=1.0)


def _colours(labels: Tensor) -> Tensor:
    """(N, H, W) class indices -> (N, 3, H, W) VOC colours in 0-1."""
    cmap = torch.from_numpy(voc_colormap()).float() / 255
    return cmap[labels.clamp(0, 255)].permute(0, 3, 1, 2)
