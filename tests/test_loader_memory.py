"""What keeps a forked DataLoader worker's resident memory small: pages its parent holds
when it forks count in the worker's resident set (benchmarks/bench_loader.py --workers)."""

from __future__ import annotations

import subprocess
import sys

from ddn.train.strong import foreground_share
from pipeline.readers import CropDataset
from tests.trainutil import make_prepared


def test_the_foreground_sample_leaves_no_source_in_the_readers_cache(tmp_path):
    crops = CropDataset(make_prepared(tmp_path, images=20, per_class=3))
    foreground_share(crops, samples=30, seed=1)
    assert crops.image_cache.misses > 0  # it did decode sources
    assert len(crops.image_cache) == 0 and crops.image_cache.bytes == 0


def test_train_seg_modules_leave_torchvision_unimported():
    # torchvision adds ~90 MB of the process's own memory and ~80 MB of libraries; only
    # the GPU crop path needs it, and imports it when it cuts.
    code = "import sys, ddn.train.seg, ddn.train.strong; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
