"""CropDataset through train-seg's DataLoader: throughput and each worker's own memory.

`measure_workers` runs in a freshly spawned interpreter, so that the process the
workers fork from holds what train-seg's does for its loader (torch, the reader, the
crop order, the foreground-share sample of `ddn.train.strong.resolve_fg_weight`) and
not the benchmark's other loaders or its first reader's filled cache: pages of the
parent that a forked worker inherits count in the worker's resident memory.

The batches are train-seg's: `StepBatchSampler` (groups and window from
`ddn.train.strong.crop_order`) through `ddn.train.loop.make_loader` (`EpochItems`,
prefetch 4, non-persistent fork workers). Every 16th item a worker reads its
/proc/self/status; VmHWM is the peak resident set of the worker process over its whole
life, pages shared with the parent included (the figure compared with
--max-worker-rss-gib). smaps_rollup's private pages (every 1024th item) tell how much
of it is the worker's own rather than inherited.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import time
from pathlib import Path
from typing import Any

import torch

from ddn.train.distributed import DistInfo, StepBatchSampler
from ddn.train.loop import make_loader
from ddn.train.strong import crop_order, resolve_fg_weight
from pipeline.readers import CropDataset

STATUS_EVERY = 16
SMAPS_EVERY = 1024


def proc_kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """The ``keys`` fields (kB) of a /proc status-like file."""
    out = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0])
    return out


class MemoryReporting(torch.utils.data.Dataset):
    """A CropDataset whose items also carry the serving process's memory figures (KiB;
    -1 where not read this time) and its cache's decode count."""

    def __init__(self, dataset: CropDataset) -> None:
        self.dataset = dataset
        self.calls = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        self.calls += 1
        status = {"VmHWM": -1, "VmRSS": -1, "RssAnon": -1, "RssFile": -1, "RssShmem": -1}
        if self.calls % STATUS_EVERY == 1:
            status.update(proc_kib("/proc/self/status", tuple(status)))
        private = -1
        if self.calls % SMAPS_EVERY == 1:
            rollup = proc_kib("/proc/self/smaps_rollup", ("Private_Clean", "Private_Dirty"))
            private = sum(rollup.values())
        cache = self.dataset.image_cache
        item.update(status, private=private, pid=os.getpid(), decodes=cache.misses,
                    hits=cache.hits, cache_kib=cache.bytes >> 10)  # fmt: skip
        return item


def measure_workers(
    prepared: Path, workers: int, batch: int, examples: int, seed: int
) -> dict[str, Any]:
    """Examples/s of ``workers`` DataLoader workers over ``examples`` examples of
    train-seg's order, and each worker's memory (module doc). Call in a fresh process."""
    # train-seg's workers are forked (Linux's default); a spawned process would hand its
    # own start method (spawn) on to the DataLoader, whose workers would then re-import
    # torch each (0.4 GiB of their own) instead of sharing the parent's pages.
    multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    dataset = CropDataset(prepared, seed=seed)
    resolve_fg_weight("auto", dataset, seed)  # train-seg's parent samples crops before forking
    groups, window = crop_order(dataset, DistInfo())
    steps = math.ceil(examples / batch)
    sampler = StepBatchSampler(len(dataset), batch, 1, steps, 0, seed, groups=groups,
                               window=window)  # fmt: skip
    parent = proc_kib("/proc/self/status", ("VmRSS", "RssAnon", "RssFile", "RssShmem"))
    # A forked worker's cache counters start from the parent's (its foreground sample).
    inherited = {"decodes": dataset.image_cache.misses, "hits": dataset.image_cache.hits}
    loader = make_loader(MemoryReporting(dataset), sampler, workers, torch.device("cpu"))
    per_worker: dict[int, dict[str, int]] = {}
    served = 0
    start = time.perf_counter()
    report = start
    for got in loader:
        served += len(got["index"])
        for k, pid in enumerate(got["pid"].tolist()):
            mine = per_worker.setdefault(pid, {})
            for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "private",
                        "decodes", "hits", "cache_kib"):  # fmt: skip
                value = int(got[key][k])
                if value >= 0:  # -1: not read for this item
                    peak = key in ("VmHWM", "private", "decodes", "hits")
                    mine[key] = max(mine.get(key, 0), value) if peak else value
        if time.perf_counter() - report > 30:
            report = time.perf_counter()
            hwm = max(w.get("VmHWM", 0) for w in per_worker.values()) / 2**20
            print(f"  workers: {served}/{examples} examples, {served / (report - start):.0f}"
                  f" ex/s, peak worker RSS so far {hwm:.2f} GiB", flush=True)  # fmt: skip
    seconds = time.perf_counter() - start
    for mine in per_worker.values():
        for key, count in inherited.items():
            mine[key] -= count
    return {"workers": workers, "batch": batch, "examples": served, "seconds": seconds,
            "eps": served / seconds, "window": window, "parent_kib": parent,
            "per_worker": list(per_worker.values())}  # fmt: skip


def _run(results: Any, args: tuple) -> None:
    results.put(measure_workers(*args))


def measure_in_fresh_process(
    prepared: Path, workers: int, batch: int, examples: int, seed: int
) -> dict[str, Any]:
    """`measure_workers` in a spawned interpreter (module doc); its result."""
    # A Process, not a Pool: a pool's processes are daemons, which may not fork workers.
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_run, args=(results, (prepared, workers, batch, examples, seed)))
    proc.start()
    try:
        while True:
            try:
                return results.get(timeout=5)
            except queue.Empty:
                if not proc.is_alive():
                    died = f"the worker measurement died (exit {proc.exitcode})"
                    raise RuntimeError(died) from None
    finally:
        proc.join()
