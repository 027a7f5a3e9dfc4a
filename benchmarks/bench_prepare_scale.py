"""`ddn prepare` at COCO-like counts on one machine: time per image per core, and the
driver's peak memory as the image count grows.

    python benchmarks/bench_prepare_scale.py --images 2000,20000 --jobs 2

For each count N: a synthetic set of N training images (VOC layout, `pipeline.synth`,
reused from --workdir when it is already there), then `ddn prepare` of it with
``--strong-per-class`` chosen so that N/10 images are strong (COCO's 118k with 11.8k
strong is the shape of the target). Each prepare runs in a fresh subprocess, so its
peak resident memory (``ru_maxrss`` of the driver alone: joblib's workers are other
processes) is the driver's and nothing else's.

The driver should hold per image only what the manifest needs (an id, paths, its
labels): the last column divides the growth of the driver's peak between the smallest
and the largest N by the images added. Exit code 1 when that exceeds
``--max-driver-kib-per-image``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_prepare(root: Path, out: Path, strong_per_class: int, jobs: int) -> dict:
    """The prepare of one count, in this process (called in a subprocess by main)."""
    from ddn.data import prepare

    started = time.perf_counter()
    manifest = prepare(
        out, dataset="voc", root=root, strong_per_class=strong_per_class, jobs=jobs,
        overwrite=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    shards = manifest["shards"]

    def task_seconds(split: str) -> float:
        return sum(s["seconds"] for s in shards if s["kind"] == split)

    return {
        "wall_s": round(wall, 1),
        "driver_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "images": {
            k: sum(s["images"] for s in shards if s["kind"] == k) for k in ("weak", "strong", "val")
        },  # fmt: skip
        "crops": sum(s.get("crops", 0) for s in shards),
        "task_s": {k: round(task_seconds(k), 1) for k in ("weak", "strong", "val")},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="2000,20000", help="comma-separated counts")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--size", type=int, default=160, help="synthetic image side (px)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("data/bench_prepare_scale"))
    ap.add_argument("--max-driver-kib-per-image", type=float, default=4.0)
    ap.add_argument("--child", nargs=4, metavar=("ROOT", "OUT", "SPC", "JOBS"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args()
    if args.child:
        root, out, spc, jobs = args.child
        print(json.dumps(run_prepare(Path(root), Path(out), int(spc), int(jobs))))
        return 0

    from pipeline.synth import generate

    rows = []
    for n in [int(v) for v in args.images.split(",")]:
        data = args.workdir / f"synth{n}"
        t = time.perf_counter()
        if not (data / "done").is_file():  # the set is a pure function of its arguments
            generate(data, images=n, classes=args.classes, size=args.size, seed=0,
                     val_fraction=0.0)  # fmt: skip
            (data / "done").write_text("")
        synth_s = time.perf_counter() - t
        spc = max(1, n // 10 // args.classes)
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(data), str(args.workdir / f"prep{n}"),
             str(spc), str(args.jobs)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        row = {"n": n, "synth_s": round(synth_s, 1), "strong_per_class": spc,
               **json.loads(child.stdout.strip().splitlines()[-1])}  # fmt: skip
        row["s_per_image_per_core"] = round(row["wall_s"] * args.jobs / n, 4)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        "\n| images | strong | crops | prepare wall s | s / image / core | strong task s "
        "| weak task s | driver peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['images']['strong']:,} | {r['crops']:,} | {r['wall_s']} | "
              f"{r['s_per_image_per_core']} | {r['task_s']['strong']} | {r['task_s']['weak']} "
              f"| {r['driver_peak_mib']} |")  # fmt: skip
    ok = True
    if len(rows) > 1:
        grow = (rows[-1]["driver_peak_mib"] - rows[0]["driver_peak_mib"]) * 1024
        per_image = grow / (rows[-1]["n"] - rows[0]["n"])
        ok = per_image <= args.max_driver_kib_per_image
        print(f"\ndriver peak grew {grow / 1024:.1f} MiB for {rows[-1]['n'] - rows[0]['n']:,} "
              f"images: {per_image:.2f} KiB per image (limit {args.max_driver_kib_per_image}):"
              f" {'pass' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
