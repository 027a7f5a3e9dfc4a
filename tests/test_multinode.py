"""Training past one machine: two torchrun "nodes" (one process each) that meet through
c10d rendezvous on loopback, as two hosts would through ``--rdzv-endpoint HOST:PORT``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_ddp import _free_port
from tests.trainutil import cls_run_for, make_prepared

WORKER = Path(__file__).with_name("multinode_worker.py")


@pytest.mark.slow
def test_two_nodes_through_c10d_rendezvous_end_with_identical_weights(tmp_path, tmp_path_factory):
    prepared = make_prepared(tmp_path / "data", images=40)
    cls_run = cls_run_for(prepared, tmp_path_factory)
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    # GLOO_SOCKET_IFNAME: gloo would otherwise pick the host's first interface, which a
    # sandbox may not route to itself.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "ddn-test",
                "--local_addr",
                "127.0.0.1",
                str(WORKER),
                str(prepared),
                str(cls_run),
                str(out),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs
    rank0, rank1 = (torch.load(out / f"seg-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    config = json.loads((out / "seg" / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 2 * 2 * 2
    saved = torch.load(out / "seg" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
