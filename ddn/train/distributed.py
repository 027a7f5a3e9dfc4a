"""torchrun / DDP set-up and the seeded, resumable, sharded index stream.

Launch on N GPUs with ``torchrun --nproc_per_node N -m cli.main train-seg ...`` (or
``--nnodes``/``--rdzv-endpoint`` for several machines; the run directory must then be
on a file system every node sees). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK;
without them the trainers run as a single process.

The data order is a pure function of (seed, stream, epoch): `IndexStream` concatenates
one seeded permutation of the dataset per epoch, and global position ``p`` of that
stream is example ``perm_e[p mod n]`` of epoch ``e = p // n`` (windowed by source image
where the sources outgrow the readers' cache: `IndexStream`). Optimizer step ``s``
consumes positions ``[s*G, (s+1)*G)`` with G = batch x accum x world size; within a
step, micro-batch m of rank r takes the ``batch`` positions starting at
``s*G + (m*world + r)*batch``. So every example of a global batch goes to exactly one
rank (what DistributedSampler does), the order does not depend on the number of
DataLoader workers, and resuming at step s just starts the stream at s: nothing is
replayed or skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes metrics and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``t`` over ranks (in place); ``t`` itself when not distributed."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def no_sync(model: torch.nn.Module, skip: bool):
    """DDP's no_sync for the micro-batches before the last of a gradient accumulation."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else nullcontext()


class IndexStream:
    """Epoch-wise seeded permutations of ``range(n)``, concatenated (see module doc).

    With ``groups`` (one id per example, e.g. the source image of each crop) and
    ``window`` > 0 the permutation is windowed (quasi-random, FFCV's QUASI_RANDOM
    idea): the groups are shuffled and cut into windows of ``window`` groups, and the
    examples of one window are shuffled among themselves, window after window. An epoch
    still holds every example once, and the order is still a pure function of (seed,
    stream, epoch); but a batch draws from the ``window`` groups of one window (of two
    where it straddles a boundary, when a window holds at least a batch of examples, as
    ~200 crops per image do), so a reader's per-worker cache of decoded sources is
    reused before it is evicted.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        stream: int = 0,
        groups: np.ndarray | None = None,
        window: int = 0,
    ) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        if groups is not None and len(groups) != n:
            raise ValueError(f"{len(groups)} group ids for {n} examples")
        self.n, self.seed, self.stream = n, seed, stream
        self.groups = None if groups is None or window < 1 else np.asarray(groups, np.int64)
        self.window = window
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng((self.seed, self.stream, epoch))
            if self.groups is None:
                perm = rng.permutation(self.n)
            else:
                ids, group = np.unique(self.groups, return_inverse=True)
                rank = np.empty(len(ids), np.int64)
                rank[rng.permutation(len(ids))] = np.arange(len(ids))
                # Sort by window, then by a random key: a shuffle within each window.
                perm = np.lexsort((rng.random(self.n), rank[group] // self.window))
            self._cache = (epoch, perm)
        return self._cache[1]

    def take(self, start: int, count: int) -> list[tuple[int, int]]:
        """(index, epoch) of stream positions start..start+count-1."""
        out = []
        for p in range(start, start + count):
            epoch, offset = divmod(p, self.n)
            out.append((int(self.permutation(epoch)[offset]), epoch))
        return out


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """The micro-batches of one rank for optimizer steps ``start_step..total_steps-1``.

    Yields lists of (index, epoch); wrap the dataset in `EpochItems` to serve them.
    """

    def __init__(
        self,
        n: int,
        batch: int,
        accum: int,
        total_steps: int,
        start_step: int = 0,
        seed: int = 0,
        info: DistInfo = DistInfo(),
        stream: int = 0,
        groups: np.ndarray | None = None,
        window: int = 0,
    ) -> None:
        self.stream = IndexStream(n, seed, stream, groups, window)
        self.batch, self.accum, self.info = batch, accum, info
        self.start_step, self.total_steps = start_step, total_steps

    @property
    def global_batch(self) -> int:
        return self.batch * self.accum * self.info.world_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        world, rank = self.info.world_size, self.info.rank
        for step in range(self.start_step, self.total_steps):
            for m in range(self.accum):
                start = step * self.global_batch + (m * world + rank) * self.batch
                yield self.stream.take(start, self.batch)


def epoch_of_step(step: int, global_batch: int, n: int) -> int:
    """The epoch the first example of optimizer step ``step`` belongs to."""
    return step * global_batch // n


class EpochItems(Dataset):
    """Serves (index, epoch) keys: sets the dataset's epoch, then returns its item.

    The readers' randomness is a function of (seed, epoch, index); carrying the epoch
    with each key makes that hold inside DataLoader workers too (even persistent ones,
    whose dataset copies a ``set_epoch`` in the main process would not reach), and
    lets one batch straddle an epoch boundary.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
