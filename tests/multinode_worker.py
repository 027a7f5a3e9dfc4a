"""One rank of tests/test_multinode.py: a few train-seg steps, then this rank's weights.

Started by torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
``python tests/multinode_worker.py PREPARED CLS_RUN OUT``.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddn.train.seg import train_seg  # noqa: E402
from tests.trainutil import seg_config  # noqa: E402

prepared, cls_run, out = map(Path, sys.argv[1:4])
torch.set_num_threads(1)
seg = train_seg(seg_config(prepared, cls_run, out / "seg", iters=3, batch=2, accum=2))
torch.save(seg.model.state_dict(), out / f"seg-rank{os.environ['RANK']}.pt")
