"""train-seg throughput (examples/s) at 320 px with the full VGG-16 model (width 1).

Runs the real trainer (`ddn.train.seg.train_seg`) for ``--warmup`` + ``--steps``
optimizer steps and times the last ``--steps`` (step boundaries come from its
``on_step`` hook, after the loss has been read back, so GPU work is finished). The
strong set is ../shared's real photographs when present (else synthetic 320 px images),
prepared with random boxes; the classifier is a random full-size VGG-16 (its weights do
not change the cost).

On CPU one variant: float32, DataLoader crop path. On CUDA: the default (GPU crop path,
bf16 autocast, channels_last), then one change at a time: the CPU DataLoader crop path,
float32, no channels_last, and torch.compile.

    python benchmarks/bench_train_seg.py                        # CPU: batch 2, 3 steps
    python benchmarks/bench_train_seg.py --batch 64 --steps 10  # on a GPU

The last line is a JSON summary (examples/s per variant). The reference trained at
about 5 examples/s on a 2015 GPU; the goal on an H100 is 500 or more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import benchmark_dataset  # noqa: E402
from ddn.models import Classifier  # noqa: E402
from ddn.train.run_files import save_model  # noqa: E402
from ddn.train.seg import SegConfig, train_seg  # noqa: E402
from pipeline.build import CropSettings  # noqa: E402
from pipeline.prepare import ShardSettings, SplitSettings, prepare  # noqa: E402
from pipeline.proposals import ProposalConfig  # noqa: E402

CUDA_VARIANTS = {
    "gpu_crops_bf16_channels_last": {},
    "cpu_dataloader_crops": {"crop_path": "cpu"},
    "float32": {"amp": False},
    "no_channels_last": {"channels_last": False},
    "compile": {"compile": True},
}


def make_inputs(work: Path, images: int, size: int, width: float) -> tuple[Path, Path]:
    """A prepared strong set and a classifier run directory in ``work``."""
    ds = benchmark_dataset(work, images)
    prep = work / "prep"
    prepare(
        ds, prep,
        SplitSettings(strong_per_class=images, allow_short=True, seed=0),
        CropSettings(ProposalConfig(method="random"), per_subset=50, seed=0),
        ShardSettings(strong_shard_size=images, jobs=1),
    )  # fmt: skip
    classes = ds.classes[1:]
    model = Classifier(len(classes), "vgg16", width, size)
    cls_run = work / "cls"
    cls_run.mkdir()
    save_model(cls_run, model.state_dict(), {**model.config(), "classes": classes,
                                             "trainer": "train-cls"})  # fmt: skip
    return prep, cls_run


def measure(prep: Path, cls_run: Path, out: Path, args, **overrides) -> float:
    """Examples/s over the timed steps of one train-seg run."""
    times: list[float] = []
    cfg = SegConfig(
        data=str(prep), cls=str(cls_run), out=str(out), batch=args.batch, accum=1,
        iters=args.warmup + args.steps, bn_batches=0, device=args.device,
        workers=args.workers, log_every=10**9, ckpt_every=10**9,
    )  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    train_seg(cfg, on_step=lambda step: times.append(time.perf_counter()))
    return args.batch * args.steps / (times[-1] - times[args.warmup - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=320, help="input (crop) size")
    ap.add_argument("--width", type=float, default=1.0, help="1.0 = VGG-16")
    ap.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 32 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (3 CPU, 10 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (1 CPU, 3 CUDA)")
    ap.add_argument("--images", type=int, default=20, help="strong images")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--variants", default=None, help="comma-separated CUDA variants to run")
    args = ap.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.batch = args.batch or (32 if cuda else 2)
    args.steps = args.steps or (10 if cuda else 3)
    args.warmup = args.warmup or (3 if cuda else 1)
    if not cuda:
        args.workers = min(args.workers, 1)  # 2-core machines: a worker beside the math

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep, cls_run = make_inputs(work, args.images, args.size, args.width)
        if cuda:
            names = args.variants.split(",") if args.variants else list(CUDA_VARIANTS)
            variants = {name: CUDA_VARIANTS[name] for name in names}
        else:
            variants = {"cpu_float32": {"crop_path": "cpu"}}
        for name, overrides in variants.items():
            results[name] = round(measure(prep, cls_run, work / name, args, **overrides), 2)
            print(f"{name:32s} {results[name]:9.2f} examples/s", file=sys.stderr)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    summary = {
        "device": device, "size": args.size, "width": args.width, "batch": args.batch,
        "timed_steps": args.steps, "examples_per_s": results,
    }  # fmt: skip
    base = results.get("gpu_crops_bf16_channels_last")
    if base:
        # speed of each variant relative to the default (< 1: the default is faster)
        summary["relative_to_default"] = {k: round(v / base, 2) for k, v in results.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
