"""prepare throughput: images/s per process, share of time in proposals, 1 -> 2 jobs.

    python benchmarks/bench_prepare.py [--images 40]

Every image is strong (full), so each one gets proposals + combinatorial crops, the
expensive part of `ddn prepare`. Last line: JSON summary; exit 1 when scaling < 1.7.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import VOC_HORSES, benchmark_dataset  # noqa: E402
from pipeline.build import CropSettings  # noqa: E402
from pipeline.prepare import ShardSettings, SplitSettings, prepare  # noqa: E402
from pipeline.proposals import ProposalConfig  # noqa: E402

TARGET = 1.7


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--strong-shard-size", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = benchmark_dataset(tmp, args.images)
        n = len(ds.train)
        crops = CropSettings(ProposalConfig(method="edgebox"))
        seconds, manifests = {}, {}
        for jobs in (1, 2):
            t = time.perf_counter()
            manifests[jobs] = prepare(
                ds,
                tmp / f"jobs{jobs}",
                SplitSettings(strong_per_class=None),
                crops,
                ShardSettings(strong_shard_size=args.strong_shard_size, jobs=jobs),
            )
            seconds[jobs] = time.perf_counter() - t
    # Measured inside the 1-job run's workers: time in propose() / time building shards.
    shards = manifests[1]["shards"]
    proposal_share = sum(s["proposal_seconds"] for s in shards) / sum(s["seconds"] for s in shards)
    summary = {
        "images": n,
        "source": "voc_horses" if VOC_HORSES.is_dir() else "synthetic 320px",
        "images_per_s_1_job": round(n / seconds[1], 2),
        "images_per_s_2_jobs": round(n / seconds[2], 2),
        "scaling_1_to_2": round(seconds[1] / seconds[2], 3),
        "proposal_share": round(proposal_share, 3),
        "target_scaling": TARGET,
    }
    summary["pass"] = summary["scaling_1_to_2"] >= TARGET
    print(
        f"1 job: {seconds[1]:.1f} s, 2 jobs: {seconds[2]:.1f} s for {n} strong images; "
        f"proposals take {summary['proposal_share']:.0%} of shard building"
    )
    print(json.dumps(summary))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
