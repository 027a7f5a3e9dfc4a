"""The whole pipeline on real photographs: ``../shared/data/voc_horses`` at a reduced size.

The Weizmann horses in PASCAL VOC layout (277 train / 50 val photographs, one VOC class:
horse = 13) with the ImageNet VGG-16 conv weights in ``../shared/weights``. The script
runs the real ``ddn`` commands, one after the other, and times each:

1. ``ddn prepare`` once per strong count (``--strong`` 5 and 10 horse images; the weak
   set is every train image either way, val the 50 val images);
2. ``ddn train-cls`` once (VGG-16 from the ImageNet convs, input ``--input-size``);
3. ``ddn train-seg`` per strong count (bridge + segmenter, full width: it unpools
   with the classifier's switches);
4. ``ddn eval --json`` per strong count, with palette PNGs and overlays.

Writes ``OUT/horses.md`` (commands, times, horse IoU and mIoU) and ``OUT/horses.json``;
the last line printed is the JSON summary. Finished steps are reused when re-run with
the same ``--out``. Exits non-zero when ``--min-horse-iou`` is given and a run is below
it. CPU defaults: 128 px inputs, 30 classifier steps (the weak labels are all
"horse") and 100 segmenter steps of 8 crops (``benchmarks/RESULTS.md`` has the time).

    python benchmarks/real_horses.py --out data/horses
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HORSE = "horse"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/horses"))
    p.add_argument("--root", type=Path, default=SHARED / "data" / "voc_horses")
    p.add_argument("--weights", type=Path,
                   default=SHARED / "weights" / "vgg16_imagenet_features.pth")  # fmt: skip
    p.add_argument("--strong", default="5,10", help="Comma-separated strong image counts.")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--cls-iters", type=int, default=30)
    p.add_argument("--cls-batch", type=int, default=16)
    p.add_argument("--seg-iters", type=int, default=100)
    p.add_argument("--seg-batch", type=int, default=8)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-horse-iou", type=float, help="Fail when a run's horse IoU is lower.")
    return p.parse_args(argv)


def ddn(args: list[str], log: list[dict[str, Any]], capture: bool = False) -> str:
    """Run one `ddn` command (as `python -m cli.main`), log it and its wall time."""
    shown = "ddn " + shlex.join(args)
    print(f"\n$ {shown}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    seconds = round(time.perf_counter() - start, 1)
    log.append({"command": shown, "seconds": seconds})
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {shown}")
    return done.stdout or ""


def _resume(run: Path) -> list[str]:
    # An interrupted run left checkpoints: continue it instead of starting over.
    return ["--resume"] if any(run.glob("checkpoint-*.pt")) else []


def run(args: argparse.Namespace) -> dict[str, Any]:
    for path in (args.root, args.weights):
        if not path.exists():
            sys.exit(f"{path}: not found (the real photographs and weights live in ../shared)")
    out: Path = args.out.resolve()
    counts = [int(v) for v in args.strong.split(",") if v]
    log: list[dict[str, Any]] = []
    common = ["--device", args.device, "--workers", str(args.workers), "--seed", str(args.seed)]
    preps = {}
    for n in counts:
        preps[n] = out / f"prep-{n}"
        # Re-running the same prepare resumes (finished shards are kept), so it is cheap.
        ddn(["prepare", str(preps[n]), "--dataset", "voc", "--root", str(args.root),
             "--strong-per-class", str(n), "--seed", str(args.seed), "--jobs", "2"],
            log)  # fmt: skip
    cls = out / "cls"
    if not (cls / "model.pt").is_file():
        # The weak set is the same in every prep dir: one classifier serves every count.
        ddn(["train-cls", "--data", str(preps[counts[0]]), "--out", str(cls),
             "--weights", str(args.weights), "--input-size", str(args.input_size),
             "--batch", str(args.cls_batch), "--iters", str(args.cls_iters),
             *common, *_resume(cls)], log)  # fmt: skip
    results: dict[str, Any] = {}
    for n in counts:
        seg = out / f"seg-{n}"
        if not (seg / "model.pt").is_file():
            ddn(["train-seg", "--data", str(preps[n]), "--cls", str(cls), "--out", str(seg),
                 "--batch", str(args.seg_batch), "--accum", "1",
                 "--iters", str(args.seg_iters), "--bn-batches", "20", *common,
                 *_resume(seg)], log)  # fmt: skip
        metrics = json.loads(ddn(["eval", "--data", str(preps[n]), "--cls", str(cls),
                                  "--seg", str(seg), "--json", "--save-pred",
                                  str(out / f"eval-{n}"), "--overlays", "8",
                                  "--device", args.device], log, capture=True))  # fmt: skip
        results[str(n)] = {
            "horse_iou": metrics["per_class"][HORSE],
            "background_iou": metrics["per_class"]["background"],
            "miou": metrics["miou"],
            "pixel_acc": metrics["pixel_acc"],
            "cls_map": metrics["cls_map"],
        }
    return {
        "results": results,
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "commands": log,
        "seconds": round(sum(c["seconds"] for c in log), 1),
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| strong images | horse IoU | background IoU | mIoU | pixel acc. |",
             "|---|---|---|---|---|"]  # fmt: skip
    for n, r in summary["results"].items():
        lines.append(f"| {n} | {100 * r['horse_iou']:.1f} | {100 * r['background_iou']:.1f} | "
                     f"{100 * r['miou']:.1f} | {100 * r['pixel_acc']:.1f} |")  # fmt: skip
    lines += ["", "| command | seconds |", "|---|---|"]
    lines += [f"| `{c['command']}` | {c['seconds']} |" for c in summary["commands"]]
    lines += ["", f"Total {summary['seconds'] / 60:.1f} min of commands run this time."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run(args)
    (args.out / "horses.md").write_text(markdown(summary))
    (args.out / "horses.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))
    print(json.dumps(summary))
    low = [n for n, r in summary["results"].items()
           if args.min_horse_iou is not None and r["horse_iou"] < args.min_horse_iou]  # fmt: skip
    if low:
        sys.exit(f"horse IoU below {args.min_horse_iou} with {', '.join(low)} strong images")


if __name__ == "__main__":
    main()
