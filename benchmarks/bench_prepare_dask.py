"""prepare on a Dask cluster against local joblib: shards/s with --jobs 1 and 2, and with a
`distributed.LocalCluster` of 1 and 2 worker processes (one thread each), side by side.

    python benchmarks/bench_prepare_dask.py [--images 48] [--strong-shard-size 4]

The same synthetic set (320 px, every image strong, EdgeBoxes, N_p = 200) goes into a
fresh directory per run. A cluster run's time counts connecting and the worker check, not
starting the cluster (printed apart). "task s" sums the shard tasks' own times: about the
same in every run on an idle machine, it grows when the runs share the cores with other
work. Last line: JSON summary; exit 1 only when a cluster run's shards differ from the
local ones (sha256 per shard), not for speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.build import CropSettings  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.prepare import ShardSettings, SplitSettings, prepare  # noqa: E402
from pipeline.proposals import ProposalConfig  # noqa: E402
from pipeline.synth import generate  # noqa: E402

TIMED = ("seconds", "proposal_seconds")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--strong-shard-size", type=int, default=4)
    args = ap.parse_args()
    from distributed import LocalCluster  # the dask extra: pip install 'ddn[dask]'

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "synth", images=args.images, classes=5, size=320, seed=0, val_fraction=0)
        ds = load_dataset("voc", root=tmp / "synth")

        def run(name: str, **settings) -> tuple[float, float, list[dict]]:
            """Wall seconds, seconds inside the shard tasks, the untimed manifest entries."""
            shards = ShardSettings(strong_shard_size=args.strong_shard_size, **settings)
            crops = CropSettings(ProposalConfig(method="edgebox"))
            t = time.perf_counter()
            manifest = prepare(ds, tmp / name, SplitSettings(strong_per_class=None), crops, shards)
            seconds = time.perf_counter() - t
            in_tasks = sum(e["seconds"] for e in manifest["shards"])
            return (
                seconds,
                in_tasks,
                [{k: v for k, v in e.items() if k not in TIMED} for e in manifest["shards"]],
            )

        results, startup = {}, {}
        for jobs in (1, 2):
            results[f"--jobs {jobs}"] = run(f"jobs{jobs}", jobs=jobs)
        for workers in (1, 2):
            t = time.perf_counter()
            with LocalCluster(
                n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=":0"
            ) as cluster:
                name = f"dask {workers} worker{'s' * (workers > 1)}"
                startup[name] = time.perf_counter() - t
                # --jobs 1 for the driver's mask scan, as in the --jobs 1 run
                results[name] = run(
                    f"dask{workers}", jobs=1, backend="dask", scheduler=cluster.scheduler_address
                )
    reference = results["--jobs 1"][2]
    shards = len(reference)
    strong = sum(e["images"] for e in reference if e["kind"] == "strong")
    print(f"{strong} strong images (of {args.images}) in {shards} shards, synthetic 320 px")
    print(f"{'run':<16} {'seconds':>8} {'shards/s':>9} {'strong/s':>9} {'task s':>7}  same shards")
    summary: dict = {"images": args.images, "strong": strong, "shards": shards, "runs": {}}
    for name, (seconds, in_tasks, entries) in results.items():
        same = entries == reference
        print(
            f"{name:<16} {seconds:8.1f} {shards / seconds:9.2f} {strong / seconds:9.2f} "
            f"{in_tasks:7.1f}  {'yes' if same else 'NO'}"
        )
        summary["runs"][name] = {
            "seconds": round(seconds, 2),
            "shards_per_s": round(shards / seconds, 3),
            "task_seconds": round(in_tasks, 2),
            "same_shards": same,
        }
    for name, seconds in startup.items():
        print(f"({name}: cluster started in {seconds:.1f} s, not counted)")
    summary["pass"] = all(r["same_shards"] for r in summary["runs"].values())
    print(json.dumps(summary))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
