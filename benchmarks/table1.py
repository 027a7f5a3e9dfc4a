"""The paper's Table 1 on the synthetic dataset: DecoupledNet vs -Str vs DeconvNet.

For each strong count (``--per-class``, default 5 and 10 per class; ``--full`` adds
every mask) the script trains and evaluates (mIoU over C+1 classes on the val split,
with `ddn.evaluation.evaluate_models`, the code behind ``ddn eval``):

- **DecoupledNet**: classifier on every training image's labels (the weak set; one run
  shared by all rows), then bridge + segmenter on the strong crops;
- **DecoupledNet-Str**: the same, with the classifier trained on the strong images'
  labels only (``weak_from="strong"``); at ``full`` the strong set is every image, so
  it is the DecoupledNet classifier (the paper's two numbers coincide there too);
- **DeconvNet**: the (C+1)-class baseline on the same strong crops (`train_deconvnet`).

Writes ``OUT/table1.md`` (the paper's layout: rows are methods, columns strong counts)
and ``OUT/table1.json``; the last line printed is the JSON summary: mIoU per cell, the
margins DecoupledNet - Str, DecoupledNet - DeconvNet and Str - DeconvNet per column,
``claim_holds`` (DecoupledNet above both at every non-full count) and the timings.
Finished runs are reused when the script is re-run with the same ``--out``; ``--methods``
runs some rows only (margins needing a missing row are left out; the claim is null).

Defaults are CPU-sized: 5 classes, 1,500 synthetic images at 96 px, VGG-16-BN at 1/8
width, 96 px inputs, 600 steps per network. On CUDA (``--device auto`` finds it) the
defaults become full-size: VGG-16 at width 1, 320 px images and inputs, ImageNet
weights, 1,000 images, 500 classifier steps of 32 and 300 segmenter steps of 64 crops
(~6.5 min on an H200, benchmarks/RESULTS.md); ``--reference-schedule`` trains as long
as the reference instead (its segmenter iteration table, 4,000 classifier steps: ~55
min). Either can be overridden option by option.

    python benchmarks/table1.py --out data/table1                      # CPU defaults
    python benchmarks/table1.py --out /tmp/t1 --images 600 --steps 200 # quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddn.evaluation import evaluate_models, json_safe  # noqa: E402
from ddn.train.cls import ClsConfig, train_cls  # noqa: E402
from ddn.train.deconvnet import DeconvConfig, train_deconvnet  # noqa: E402
from ddn.train.seg import SegConfig, train_seg  # noqa: E402
from ddn.trained_runs import load_for_inference, resolve_device  # noqa: E402
from pipeline.build import CropSettings  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.prepare import ShardSettings, SplitSettings, prepare  # noqa: E402
from pipeline.proposals import ProposalConfig  # noqa: E402
from pipeline.synth import generate  # noqa: E402

METHODS = ("DecoupledNet", "DecoupledNet-Str", "DeconvNet")
PAPER = {  # VOC 2012 val mIoU (%), the paper's Table 1, for the markdown footer
    "DecoupledNet": {5: 53.1, 10: 57.4, 25: 62.1, "full": 67.5},
    "DecoupledNet-Str": {5: 32.7, 10: 41.7, 25: 50.3, "full": 67.5},
    "DeconvNet": {5: 15.3, 10: 21.5, 25: 38.6, "full": 67.1},
}
CPU_DEFAULTS = dict(images=1500, size=96, arch="vgg16_bn", width=0.125, input_size=96,
                    weights="none", cls_iters=600, seg_iters=600, batch=16)  # fmt: skip
GPU_DEFAULTS = dict(images=1000, size=320, arch="vgg16", width=1.0, input_size=320,
                    weights="imagenet", cls_iters=500, seg_iters=300, batch=64)  # fmt: skip
# seg_iters None: the reference's iteration table for the strong count (ddn.train.schedule).
REFERENCE_SCHEDULE = dict(cls_iters=4000, seg_iters=None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/table1"))
    p.add_argument("--per-class", default="5,10", help="Comma-separated strong counts.")
    p.add_argument("--full", action="store_true", help="Also the every-mask column.")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--images", type=int, help="Synthetic images (20%% become val).")
    p.add_argument("--size", type=int, help="Synthetic image side (px).")
    p.add_argument("--arch", choices=("vgg16", "vgg16_bn"))
    p.add_argument("--width", type=float, help="VGG-16 channel fraction.")
    p.add_argument("--input-size", type=int, help="Network input side (multiple of 32).")
    p.add_argument("--weights", help="Encoder init: imagenet, none or a .pth.")
    p.add_argument("--steps", type=int, help="Steps for every network (sets both below).")
    p.add_argument("--cls-iters", type=int, help="Classifier steps.")
    p.add_argument("--seg-iters", type=int, help="Segmenter and DeconvNet steps "
                   "[CPU: 600; CUDA: the reference table].")  # fmt: skip
    p.add_argument("--reference-schedule", action="store_true",
                   help="Train as long as the reference (4,000 classifier steps, the "
                   "segmenter iteration table); for the full-size models.")  # fmt: skip
    p.add_argument("--batch", type=int, help="Crops per segmenter / DeconvNet step.")
    p.add_argument("--proposals", type=int, default=200, help="Boxes per label subset (N_p).")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="Parallel prepare workers.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="Comma-separated rows to run (e.g. after a fix to one).")  # fmt: skip
    args = p.parse_args(argv)
    names = [m for m in args.methods.split(",") if m]
    if not names or set(names) - set(METHODS):
        p.error(f"--methods: expected some of {','.join(METHODS)}, got {args.methods!r}")
    args.methods = [m for m in METHODS if m in names]
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.steps is not None:
        args.cls_iters = args.cls_iters or args.steps
        args.seg_iters = args.seg_iters or args.steps
    defaults = dict(GPU_DEFAULTS if cuda else CPU_DEFAULTS)
    if args.reference_schedule:
        defaults |= REFERENCE_SCHEDULE
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cuda = cuda
    args.columns = [int(v) for v in args.per_class.split(",") if v] + (
        ["full"] if args.full else []
    )
    return args


def _prepare(args: argparse.Namespace, data: Path, column: int | str, weak_from: str) -> Path:
    per_class = None if column == "full" else int(column)
    out = args.out / f"prep-{column}-{weak_from}"
    ds = load_dataset("voc", root=data)
    if weak_from == "strong":
        # Only the -Str classifier reads this directory, and train-cls validates after
        # every epoch: with 5 x C images that is every step. Its val mAP is measured on
        # the shared val split by the evaluation (cls_map) instead.
        ds.val = []
    prepare(
        ds,
        out,
        SplitSettings(strong_per_class=per_class, weak_from=weak_from, seed=args.seed),
        CropSettings(ProposalConfig(method="edgebox"), per_subset=args.proposals, seed=args.seed),
        ShardSettings(jobs=args.jobs),
        dataset_config={"root": str(data.resolve())},
    )
    return out


def _done(run: Path) -> bool:
    return (run / "model.pt").is_file()


def _resume(run: Path) -> bool:
    return any(run.glob("checkpoint-*.pt"))


def _classifier(args: argparse.Namespace, prep: Path, run: Path) -> Path:
    if not _done(run):
        train_cls(ClsConfig(
            data=str(prep), out=str(run), arch=args.arch, width=args.width,
            input_size=args.input_size, batch=32, iters=args.cls_iters, weights=args.weights,
            device=args.device, workers=args.workers, seed=args.seed, resume=_resume(run),
            **classifier_optimizer(args.weights),
        ))  # fmt: skip
    return run


def classifier_optimizer(weights: str) -> dict[str, Any]:
    """AdamW for a classifier from scratch, the reference's SGD with a 10x head for a
    pretrained one (``imagenet`` or a state dict).

    Tiny models from scratch learn far faster with AdamW (tests/test_train_cls.py), but
    AdamW at lr 1e-3 drove the ImageNet-initialised VGG-16 (no BN) to a constant output
    within 60 steps on the GPU (benchmarks/RESULTS.md, Table 1 at full size)."""
    if weights == "none":
        return dict(optimizer="adamw", lr=1e-3, head_lr_mult=1.0)
    return dict(optimizer="sgd", lr=1e-3)


def _segmenter(args: argparse.Namespace, prep: Path, cls: Path, run: Path) -> Path:
    if not _done(run):
        train_seg(SegConfig(
            data=str(prep), cls=str(cls), out=str(run), batch=args.batch,
            accum=None if args.cuda else 1, iters=args.seg_iters, bn_batches=20,
            device=args.device, workers=args.workers, seed=args.seed, resume=_resume(run),
        ))  # fmt: skip
    return run


def _deconvnet(args: argparse.Namespace, prep: Path, run: Path) -> Path:
    if not _done(run):
        train_deconvnet(DeconvConfig(
            data=str(prep), out=str(run), arch=args.arch, width=args.width,
            input_size=args.input_size, batch=args.batch, accum=None if args.cuda else 1,
            iters=args.seg_iters, bn_batches=20, weights=args.weights, device=args.device,
            workers=args.workers, seed=args.seed, resume=_resume(run),
        ))  # fmt: skip
    return run


def _miou(args: argparse.Namespace, prep: Path, seg: Path, cls: Path | None) -> dict[str, Any]:
    models = load_for_inference(cls, seg, resolve_device(args.device))
    return evaluate_models(prep, models, workers=args.workers, overlays=0)


def run_table(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn, *a):
        start = time.perf_counter()
        result = fn(*a)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    out: Path = args.out
    data = out / "synth"
    if not (data / "VOCdevkit").is_dir():
        timed("synth", generate, data, args.images, args.classes, args.size, args.seed)
    data = data / "VOCdevkit" / "VOC2012"
    preps = {c: timed(f"prepare-{c}", _prepare, args, data, c, "all") for c in args.columns}
    methods = args.methods
    # The weak classifier serves DecoupledNet, and -Str at full (its strong set is everything).
    weak_cls = None
    if "DecoupledNet" in methods or ("DecoupledNet-Str" in methods and "full" in args.columns):
        weak_cls = timed("cls-weak", _classifier, args, preps[args.columns[0]], out / "cls-weak")
    results: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods}
    for c in args.columns:
        prep = preps[c]
        runs: dict[str, tuple[Path, Path | None]] = {}

        def segmenter(name: str, cls: Path, prep: Path = prep) -> tuple[Path, Path]:
            return timed(name, _segmenter, args, prep, cls, out / name), cls

        if "DecoupledNet" in methods:
            runs["DecoupledNet"] = segmenter(f"seg-{c}", weak_cls)
        if "DecoupledNet-Str" in methods and c == "full":
            # The -Str classifier is the weak one at full: the same run, not a second copy.
            runs["DecoupledNet-Str"] = runs.get("DecoupledNet") or segmenter(f"seg-{c}", weak_cls)
        elif "DecoupledNet-Str" in methods:
            str_prep = timed(f"prepare-{c}-str", _prepare, args, data, c, "strong")
            str_cls = timed(f"cls-str-{c}", _classifier, args, str_prep, out / f"cls-str-{c}")
            runs["DecoupledNet-Str"] = segmenter(f"seg-str-{c}", str_cls)
        if "DeconvNet" in methods:
            name = f"deconvnet-{c}"
            runs["DeconvNet"] = (timed(name, _deconvnet, args, prep, out / name), None)
        for method, (seg, cls) in runs.items():
            r = results[method][str(c)] = timed(f"eval-{method}-{c}", _miou, args, prep, seg, cls)
            # One line per cell as it lands: a run cut short still shows what it measured.
            print(
                f"table1: {method} @ {c}: mIoU {100 * r['miou']:.1f} "
                f"(objects {100 * r['miou_objects']:.1f})",
                flush=True,
            )
    return summarize(args, results, timings, time.perf_counter() - t0)


MARGINS = {  # name: (minuend, subtrahend)
    "decoupled_minus_str": ("DecoupledNet", "DecoupledNet-Str"),
    "decoupled_minus_deconvnet": ("DecoupledNet", "DeconvNet"),
    "str_minus_deconvnet": ("DecoupledNet-Str", "DeconvNet"),
}


def summarize(args, results, timings, seconds: float) -> dict[str, Any]:
    """The JSON summary; with a subset of --methods, the margins and claims that need a
    missing row are left out (claim_holds / str_above_deconvnet become null)."""
    miou = {m: {c: round(r["miou"], 4) for c, r in cols.items()} for m, cols in results.items()}
    margins = {
        c: {name: round(miou[a][c] - miou[b][c], 4)
            for name, (a, b) in MARGINS.items() if a in miou and b in miou}
        for c in map(str, args.columns)
    }  # fmt: skip
    small = [c for c in map(str, args.columns) if c != "full"]
    # A cell whose model labels no pixel as an object scores background IoU / (C+1): a
    # margin over it says nothing about the method, so the summary names such cells.
    no_objects = {m: [c for c, r in cols.items() if not r["miou_objects"]]
                  for m, cols in results.items()}  # fmt: skip
    return {
        "miou": miou,
        "no_object_pixels": {m: cells for m, cells in no_objects.items() if cells},
        # The classifiers' val mAP: how much the weak labels add (-Str sees strong only).
        "cls_map": {m: {c: r["cls_map"] for c, r in results[m].items()}
                    for m in METHODS[:2] if m in results},
        "margins": margins,
        "claim_holds": all(
            margins[c]["decoupled_minus_str"] > 0 and margins[c]["decoupled_minus_deconvnet"] > 0
            for c in small
        ) if len(results) == len(METHODS) else None,
        "str_above_deconvnet": {c: margins[c]["str_minus_deconvnet"] > 0 for c in small}
        if "str_minus_deconvnet" in next(iter(margins.values())) else None,
        "setting": {k: getattr(args, k) for k in ("classes", "images", "size", "arch", "width",
                    "input_size", "weights", "cls_iters", "seg_iters", "batch", "proposals",
                    "seed")} | {"device": "cuda" if args.cuda else "cpu"},  # fmt: skip
        "seconds": round(seconds, 1),
        "timings": timings,
    }  # fmt: skip


def markdown(summary: dict[str, Any]) -> str:
    cols = list(next(iter(summary["miou"].values())))
    head = ["| Method | " + " | ".join(f"{c}" + ("" if c == "full" else " / class") for c in cols)
            + " |", "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    rows = [f"| {m} | " + " | ".join(f"{100 * summary['miou'][m][c]:.1f}" for c in cols) + " |"
            for m in summary["miou"]]  # fmt: skip
    s = summary["setting"]
    notes = [
        "",
        f"mIoU (%) over {s['classes'] + 1} classes (incl. background) on the synthetic val split;"
        f" {s['images']} images at {s['size']} px, {s['arch']} width {s['width']}, input "
        f"{s['input_size']}, {s['cls_iters']} classifier / "
        f"{s['seg_iters'] or 'the reference table of'} segmenter steps, "
        f"{s['device']}, {summary['seconds'] / 60:.1f} min.",
        *([f"DecoupledNet above -Str and DeconvNet at every small count: "
           f"{summary['claim_holds']}; -Str above DeconvNet: {summary['str_above_deconvnet']}."]
          if summary["claim_holds"] is not None else []),
        *(f"WARNING: {m} labelled no pixel as an object at {', '.join(cells)}: those cells "
          "are background IoU / (C+1), a collapsed model, not a baseline."
          for m, cells in summary["no_object_pixels"].items()),
        "",
        "Paper (VOC 2012 val): " + "; ".join(
            f"{m} " + " / ".join(f"{v}" for v in PAPER[m].values()) for m in METHODS)
        + " (5 / 10 / 25 / full).",
    ]  # fmt: skip
    return "\n".join(head + rows + notes) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run_table(args)
    (args.out / "table1.md").write_text(markdown(summary))
    (args.out / "table1.json").write_text(json.dumps(json_safe(summary), indent=1) + "\n")
    print(markdown(summary))
    print(json.dumps(json_safe(summary)))


if __name__ == "__main__":
    main()
