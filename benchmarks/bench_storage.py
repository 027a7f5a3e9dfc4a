"""Storage per training example: geometry-only shards vs --materialize 320.

    python benchmarks/bench_storage.py [--images 20]

Geometry-only is measured with the real N_p = 200 (source images are amortised over
the crops that share them). The pixel run stores far fewer crops (N_p = 10) to keep
the disk use small; its bytes per example are dominated by the 320x320 pixels, so a
smaller N_p only makes the pixel figure (and so the ratio) slightly conservative.
Last line: JSON summary; exit 1 when the ratio is below 1000.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import benchmark_dataset  # noqa: E402
from pipeline.build import CropSettings  # noqa: E402
from pipeline.prepare import ShardSettings, SplitSettings, prepare  # noqa: E402
from pipeline.proposals import ProposalConfig  # noqa: E402

TARGET = 1000.0


def strong_bytes_per_example(manifest: dict) -> float:
    strong = [s for s in manifest["shards"] if s["kind"] == "strong"]
    return sum(s["bytes"] for s in strong) / sum(s["crops"] for s in strong)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = benchmark_dataset(tmp, args.images)
        split = SplitSettings(strong_per_class=None)
        geo = prepare(
            ds,
            tmp / "geometry",
            split,
            CropSettings(ProposalConfig(method="random"), per_subset=200),
            ShardSettings(jobs=2),
        )
        pix = prepare(
            ds,
            tmp / "pixels",
            split,
            CropSettings(ProposalConfig(method="random"), per_subset=10, materialize=320),
            ShardSettings(jobs=2),
        )
    g, p = strong_bytes_per_example(geo), strong_bytes_per_example(pix)
    summary = {
        "images": len(ds.train),
        "geometry_bytes_per_example": round(g, 1),
        "materialized_320_bytes_per_example": round(p, 1),
        "ratio": round(p / g, 1),
        "target": TARGET,
    }
    summary["pass"] = summary["ratio"] >= TARGET
    print(f"geometry-only: {g:.0f} B/example; --materialize 320: {p:.0f} B/example")
    print(json.dumps(summary))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
