"""Two processes (gloo, CPU) as torchrun would start them: sharding and identical weights."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ddn.train.cls import train_cls
from ddn.train.distributed import DistInfo, IndexStream, StepBatchSampler
from ddn.train.seg import train_seg
from tests.trainutil import cls_config, make_prepared, seg_config


def test_ranks_split_each_global_batch_like_a_distributed_sampler():
    n, batch, accum, steps = 23, 3, 2, 5
    ranks = [list(StepBatchSampler(n, batch, accum, steps, 0, 7, DistInfo(r, 2))) for r in (0, 1)]
    single = list(StepBatchSampler(n, batch * 2, accum, steps, 0, 7))
    for m in range(steps * accum):
        both = ranks[0][m] + ranks[1][m]
        assert len(set(both)) == len(both) == 2 * batch  # disjoint shards of one batch
        assert both == single[m]  # together: the single-process stream
    stream = IndexStream(n, 7)
    assert sorted(i for i, _ in stream.take(0, n)) == list(range(n))  # an epoch is a permutation
    assert {e for _, e in stream.take(n - 1, 2)} == {0, 1}  # batches may straddle epochs
    resumed = list(StepBatchSampler(n, batch, accum, steps, 3, 7, DistInfo(1, 2)))
    assert resumed == ranks[1][3 * accum :]  # resuming skips exactly the consumed steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, ports: list[int], prep: Path, out: Path) -> None:
    # What torchrun sets; the trainers read nothing else.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1")  # fmt: skip
    torch.set_num_threads(1)
    os.environ["MASTER_PORT"] = str(ports[0])
    cls = train_cls(cls_config(prep, out / "cls", iters=3, batch=4))
    torch.save(cls.model.state_dict(), out / f"cls-rank{rank}.pt")
    os.environ["MASTER_PORT"] = str(ports[1])
    seg = train_seg(seg_config(prep, out / "cls", out / "seg", iters=3, batch=2, accum=2))
    torch.save(seg.model.state_dict(), out / f"seg-rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    prep = make_prepared(tmp_path / "data", images=40)
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, [_free_port(), _free_port()], prep, out), nprocs=2, join=True)

    cls0, cls1 = (torch.load(out / f"cls-rank{r}.pt", weights_only=True) for r in (0, 1))
    # Parameters are all-reduced every step. (BN running stats are each rank's own until
    # DDP broadcasts rank 0's at the next forward; model.pt holds rank 0's.)
    params = [k for k in cls0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(cls0[k], cls1[k]) for k in params)
    seg0, seg1 = (torch.load(out / f"seg-rank{r}.pt", weights_only=True) for r in (0, 1))
    # Everything, BN statistics included: re-estimated on each rank's share, then averaged.
    assert [k for k in seg0 if not torch.equal(seg0[k], seg1[k])] == []
    saved = torch.load(out / "seg" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], seg0[k]) for k in seg0)
    config = json.loads((out / "seg" / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 2 * 2 * 2
    with (out / "seg" / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]  # rank 0 only
    if importlib.util.find_spec("tensorboard") is not None:  # events too: rank 0's alone
        assert len(list((out / "seg").glob("events.out.tfevents.*"))) == 1
