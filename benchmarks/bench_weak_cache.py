"""The classifier's reader with and without its decoded-image cache (target >= 3x).

    python benchmarks/bench_weak_cache.py [--images 400] [--size 64] [--workdir DIR]

Builds a synthetic set the way `ddn demo` does (``--size`` px images, prepared with the
real `ddn prepare` code), then times `WeakDataset` training examples (random resized
crop + flip at ``--size``) over one epoch after a first one: with the cache every
image is already decoded, without it (``cache_bytes=0``) each example decodes its
image again, as before the cache. The two run alternately, three times; the figure is
each one's best. Last line: JSON summary; exit 1 when the cached epoch is less than 3x
faster per example.
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
from pipeline.readers import WeakDataset  # noqa: E402
from pipeline.synth import generate  # noqa: E402

TARGET = 3.0


def epoch_ms(dataset: WeakDataset) -> float:
    """ms per example of the dataset's second epoch (the first fills a cache)."""
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
    return (time.perf_counter() - start) / len(dataset) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data, prepared = work / "data", work / "prepared"
        generate(data, images=args.images, classes=5, size=args.size, seed=0)
        prepare(
            load_dataset("voc", root=data), prepared, SplitSettings(),
            CropSettings(ProposalConfig(method="edgebox")), ShardSettings(jobs=1),
            dataset_config={"root": str(data)}, overwrite=True,
        )  # fmt: skip
        runs: dict[str, list[float]] = {"cached": [], "decoded": []}
        for _ in range(3):
            for name, budget in (("cached", None), ("decoded", 0)):
                kw = {} if budget is None else {"cache_bytes": budget}
                runs[name].append(epoch_ms(WeakDataset(prepared, args.size, **kw)))
    best = {name: min(times) for name, times in runs.items()}
    ratio = best["decoded"] / best["cached"]
    print(f"ms per example: cached {best['cached']:.3f}, decoded {best['decoded']:.3f}")
    print(f"speed-up {ratio:.1f}x (target >= {TARGET}x): {'pass' if ratio >= TARGET else 'FAIL'}")
    print(json.dumps({"size": args.size, "images": args.images, **best, "ratio": ratio}))
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
