"""Starting a run on every rank: its config.json, its lock, the checkpoint to resume
from, its metrics.csv. The trainers (train-cls, train-seg, the DeconvNet baseline) call
these in this order before their first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ddn import __version__
from ddn.train.checkpoint import Resume, read_resume
from ddn.train.distributed import DistInfo, barrier
from ddn.train.run_files import METRICS, MetricsLog, open_run
from pipeline.lock import exclusive_dir


def run_config(cfg: Any, trainer: str, **resolved: Any) -> dict[str, Any]:
    """config.json: every field of the ``cfg`` dataclass, then what the trainer resolved.

    ``resolved`` overrides fields in place (a dict keeps a key's first position) and adds
    the rest in the order given, so the file reads the same from run to run.
    """
    data = str(Path(cfg.data).resolve())
    return {**asdict(cfg), "trainer": trainer, "data": data, **resolved, "ddn_version": __version__}


def open_run_on_all_ranks(
    run: Path,
    config: dict[str, Any],
    resume: bool,
    info: DistInfo,
    held: ExitStack,
    wait: bool = False,
) -> Resume | None:
    """Rank 0 locks the run directory into ``held`` (to the end of the run; a second writer
    stops, or with ``wait`` waits), then creates or checks it; every rank gets the
    checkpoint to resume. Locked here, not earlier: a run refused before leaves no directory.

    The others look only after the barrier: rank 0 may refuse the run, must have written
    config.json before anyone trains, and has moved torn checkpoints aside (so that all
    ranks read the same one).
    """
    found = None
    if info.is_main:
        held.enter_context(exclusive_dir(run, "run directory", wait))
        open_run(run, config, resume)
        found = read_resume(run, config) if resume else None
    barrier(info)
    if not info.is_main and resume:
        found = read_resume(run, config, warn=False)
    return found


def open_metrics(
    run: Path, info: DistInfo, step: int, latest: Path | None, extra: Sequence[str] = ()
) -> MetricsLog | None:
    """metrics.csv on rank 0: the training columns, then ``extra``; a resume keeps its rows."""
    if not info.is_main:
        return None
    columns = ["step", "epoch", "loss", "lr", "examples_per_s", *extra]
    return MetricsLog(run / METRICS, columns, step if latest else None)
