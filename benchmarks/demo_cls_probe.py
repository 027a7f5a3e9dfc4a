"""Probes of the demo's classifier recipe (issue 10's demo target): one `ddn train-cls` run
with the demo's settings except those named, or the cost of one of its steps.

    python benchmarks/demo_cls_probe.py --data PREP --out RUN --iters 500 [--crop-scale 1.0]
        [--batch 8 --lr 1e-3] [--width 0.25] [--decay cosine] [--warmup N] [--val-every 250]
        [--input-size 96] [--weight-decay 0.05] [--wsd-tail 0.4]
    python benchmarks/demo_cls_probe.py --time-step [--input-size 96] [--batch 64]
                                                          # ms per step, conv share
    python benchmarks/demo_cls_probe.py --split-map DEMO_DIR   # cls mAP: weak split vs val

``--crop-scale LO`` sets the smallest area share of the classifier's random resized crop
(the trainer's 0.5; 1.0 leaves flips only). It is not a train-cls option: it patches
`pipeline.readers.random_resized_crop_box` in this process, which the forked DataLoader
workers inherit. Prints the validation rows (step, val mAP) and a JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import ddn.train.schedule as schedule  # noqa: E402
import pipeline.readers as readers  # noqa: E402
from cli.demo import CLASSIFIER_RECIPE  # noqa: E402
from cli.demo import command as demo_command  # noqa: E402
from ddn.train.cls import train_cls  # noqa: E402
from ddn.train.config import ClsConfig  # noqa: E402
from ddn.train.schedule import DECAYS  # noqa: E402

# The demo's classifier: its recipe and its default size.
_SIZE = {p.name: p.default for p in demo_command.params if p.name in ("width", "input_size")}
DEMO = {**CLASSIFIER_RECIPE, **_SIZE, "device": "cpu"}


def time_step(width: float, batch: int, size: int, steps: int = 10) -> dict[str, float]:
    """Forward + backward + AdamW step of the demo's classifier on a random batch."""
    from ddn.models import Classifier

    torch.manual_seed(0)
    model = Classifier(5, DEMO["arch"], width, size)
    opt = torch.optim.AdamW(model.parameters(), lr=DEMO["lr"])
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 5) > 0.7).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    ms = (time.perf_counter() - start) / steps * 1000
    with torch.profiler.profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv_bwd = sum(e.self_cpu_time_total for e in events if e.key == "aten::convolution_backward")
    return {
        "input_size": size, "batch": batch, "ms_per_step": ms,
        "examples_per_s": batch / ms * 1000, "conv_backward_share": conv_bwd / total,
    }  # fmt: skip


def split_map(demo_dir: Path) -> dict[str, float]:
    """mAP of a demo run's classifier on its training images (no augmentation) and on val:
    whether more steps or more images would serve it (no gap: steps)."""
    from ddn.train.cls import evaluate, make_val_loader
    from ddn.trained_runs import load_classifier

    model, _, config = load_classifier(demo_dir / "cls", "cpu")
    out = {}
    for source in ("weak", "val"):
        images = readers.WeakDataset(
            demo_dir / "prepared", config["input_size"], train=False, source=source
        )
        loader = make_val_loader(images, 64, DEMO["workers"])
        out[source] = evaluate(model, loader, torch.device("cpu"), amp=False)[0]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--crop-scale", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=DEMO["batch"])
    p.add_argument("--lr", type=float, default=DEMO["lr"])
    p.add_argument("--width", type=float, default=DEMO["width"])
    p.add_argument("--decay", default=DEMO["decay"], choices=DECAYS)
    p.add_argument("--warmup", type=int, default=None, help="[default: the trainer's]")
    p.add_argument("--weight-decay", type=float, default=None, help="[default: the demo's]")
    p.add_argument("--wsd-tail", type=float, default=None, help="[default: WSD_TAIL]")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-step", action="store_true")
    p.add_argument("--split-map", type=Path, metavar="DEMO_DIR", help="train vs val mAP")
    # The probes of RESULTS before 2026-12-02 ran at the then default, 96 (--input-size 96).
    p.add_argument("--input-size", type=int, default=DEMO["input_size"])
    args = p.parse_args(argv)
    if args.time_step:
        print(json.dumps(time_step(args.width, args.batch, args.input_size)))
        return
    if args.split_map:
        print(json.dumps(split_map(args.split_map)))
        return
    if args.data is None or args.out is None:
        p.error("--data and --out are needed (or --time-step, or --split-map)")
    if args.wsd_tail is not None:  # read by LRSchedule at each step
        schedule.WSD_TAIL = args.wsd_tail
    readers.random_resized_crop_box = functools.partial(
        readers.random_resized_crop_box, scale=(args.crop_scale, 1.0)
    )
    started = time.time()
    settings = {**DEMO, "batch": args.batch, "lr": args.lr, "width": args.width}
    settings |= {"decay": args.decay, "warmup": args.warmup, "input_size": args.input_size}
    if args.weight_decay is not None:
        settings["weight_decay"] = args.weight_decay
    result = train_cls(
        ClsConfig(
            data=str(args.data),
            out=str(args.out),
            iters=args.iters,
            seed=args.seed,
            val_every=args.val_every,
            tensorboard=False,
            **settings,
        )
    )
    rows = [line.split(",") for line in (args.out / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("val_map")
    curve = {int(r[0]): float(r[column]) for r in rows[1:] if r[column]}
    for step, value in curve.items():
        print(f"step {step:6d}  val mAP {100 * value:.1f}")
    print(
        json.dumps(
            {
                "val_map": result.val_map,
                "curve": curve,
                "seconds": round(time.time() - started),
                "crop_scale": args.crop_scale,
            }
        )
    )


if __name__ == "__main__":
    main()
