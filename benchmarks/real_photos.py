"""DecoupledNet vs its two baselines on real photographs, through the real ``ddn`` commands.

For each strong count (``--per-class``, default 5) and each method (``--methods``):

- **DecoupledNet**: ``ddn prepare`` (weak = every training image), ``ddn train-cls`` on the
  weak set (one run shared by every count), ``ddn train-seg`` on the strong crops;
- **DecoupledNet-Str**: the same with ``prepare --weak-from strong``: the classifier sees
  only the strong images' labels (the paper's Table 1 row);
- **DeconvNet**: ``ddn train-seg --baseline deconvnet`` on the strong crops (a (C+1)-class
  encoder-decoder, no classifier);

then ``ddn eval --json`` on the val split. Every network starts from the ImageNet VGG-16
convolutions in ``--weights``. Defaults: ``../shared/data/msrc_things`` (folder format,
15 object classes, multi-label, background-only images) at 128 px, sized for an hour on
an idle 2-core CPU (61 min measured; ``benchmarks/RESULTS.md`` has the times).

Writes ``OUT/real_photos.md`` (per-class IoU table, mIoU, margins, classifier mAP, the
commands and their times) and ``OUT/real_photos.json``; the last line printed is the JSON
summary. Finished steps are reused when re-run with the same ``--out``. Exits non-zero
when a target is missed: DecoupledNet at least ``--min-deconvnet-margin`` mIoU points above
DeconvNet and ``--min-str-margin`` above -Str at every count, and labelling some object
pixel. ``--prepare-args`` / ``--seg-args`` / ``--cls-args`` pass extra options through
(e.g. ``--seg-args "--fg-weight 1"`` for the reference's plain loss).

    python benchmarks/real_photos.py --out data/msrc
    python benchmarks/real_photos.py --out data/horses --dataset voc \\
        --root ../shared/data/voc_horses --per-class 5,10 --methods DecoupledNet
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
METHODS = ("DecoupledNet", "DecoupledNet-Str", "DeconvNet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/real_photos"))
    p.add_argument("--dataset", default="folder", choices=("folder", "voc", "coco"))
    p.add_argument("--root", type=Path, default=SHARED / "data" / "msrc_things")
    p.add_argument("--ann", type=Path, help="coco: the train instances json.")
    p.add_argument("--val-ann", type=Path, help="coco: the val instances json.")
    p.add_argument("--weights", default=str(SHARED / "weights" / "vgg16_imagenet_features.pth"),
                   help="Encoder init of the classifiers and DeconvNet: a .pth, imagenet "
                   "or none.")  # fmt: skip
    p.add_argument("--arch", default="vgg16", choices=("vgg16", "vgg16_bn"))
    p.add_argument("--width", type=float, default=1.0, help="VGG-16 channel fraction.")
    p.add_argument("--per-class", default="5", help="Comma-separated strong counts.")
    p.add_argument("--methods", default=",".join(METHODS), help="Comma-separated rows to run.")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--cls-iters", type=int, default=100)
    p.add_argument("--cls-batch", type=int, default=16)
    p.add_argument("--seg-iters", type=int, default=150)
    p.add_argument("--seg-batch", type=int, default=8)
    p.add_argument("--prepare-args", default="", help="Extra `ddn prepare` options.")
    p.add_argument("--cls-args", default="", help="Extra `ddn train-cls` options.")
    p.add_argument("--seg-args", default="", help="Extra `ddn train-seg` options (all rows).")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests
    p.add_argument("--jobs", type=int, default=2, help="Parallel prepare workers.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-deconvnet-margin", type=float, default=10.0)
    p.add_argument("--min-str-margin", type=float, default=5.0)
    args = p.parse_args(argv)
    names = [m for m in args.methods.split(",") if m]
    if not names or set(names) - set(METHODS):
        p.error(f"--methods: expected some of {','.join(METHODS)}, got {args.methods!r}")
    args.methods = [m for m in METHODS if m in names]
    args.counts = [v.strip() for v in args.per_class.split(",") if v.strip()]
    return args


class Runner:
    """Runs `ddn` commands (as ``python -m cli.main``) and keeps their wall times.

    ``in_process``: through the same click group in this process instead (the tests: it
    saves an interpreter and a torch import per command; the benchmark's figures come
    from separate processes, as a user runs them).
    """

    def __init__(self, in_process: bool = False) -> None:
        self.log: list[dict[str, Any]] = []
        self.in_process = in_process

    def __call__(self, args: list[str], capture: bool = False) -> str:
        shown = "ddn " + shlex.join(args)
        print(f"\n$ {shown}", flush=True)
        start = time.perf_counter()
        run = _in_process if self.in_process else _subprocess
        code, stdout = run(args, capture)
        self.log.append({"command": shown, "seconds": round(time.perf_counter() - start, 1)})
        if code:
            sys.exit(f"failed ({code}): {shown}")
        return stdout


def _subprocess(args: list[str], capture: bool) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        stdout=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout or ""


def _in_process(args: list[str], capture: bool) -> tuple[int, str]:
    from cli.main import cli

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out if capture else sys.stdout):
            cli.main(args, prog_name="ddn", standalone_mode=False)
    except SystemExit as e:  # the group turns user errors into sys.exit(2)
        return int(e.code or 0), out.getvalue()
    return 0, out.getvalue()


def _resume(run: Path) -> list[str]:
    # An interrupted run left checkpoints: continue it instead of starting over.
    return ["--resume"] if any(run.glob("checkpoint-*.pt")) else []


def _dataset_args(args: argparse.Namespace) -> list[str]:
    out = ["--dataset", args.dataset, "--root", str(args.root)]
    if args.dataset == "coco":
        out += ["--ann", str(args.ann)] + (["--val-ann", str(args.val_ann)] if args.val_ann else [])
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    weights_file = args.weights not in ("imagenet", "none")
    for path in (args.root, *([Path(args.weights)] if weights_file else [])):
        if not path.exists():
            sys.exit(f"{path}: not found (the real photographs and weights live in ../shared)")
    out: Path = args.out.resolve()
    ddn = Runner(in_process=args.in_process)
    common = ["--device", args.device, "--workers", str(args.workers), "--seed", str(args.seed)]
    size = ["--input-size", str(args.input_size)]
    net = ["--arch", args.arch, "--width", str(args.width), "--weights", str(args.weights)]
    seg_steps = ["--batch", str(args.seg_batch), "--accum", "1", "--iters", str(args.seg_iters),
                 "--bn-batches", "20", *shlex.split(args.seg_args)]  # fmt: skip

    def prepare(count: str, weak_from: str) -> Path:
        prep = out / f"prep-{count}-{weak_from}"
        # Re-running the same prepare resumes (finished shards are kept), so it is cheap.
        ddn(["prepare", str(prep), *_dataset_args(args), "--strong-per-class", count,
             "--weak-from", weak_from, "--seed", str(args.seed), "--jobs", str(args.jobs),
             *shlex.split(args.prepare_args)])  # fmt: skip
        return prep

    def classifier(prep: Path, run_dir: Path) -> Path:
        if not (run_dir / "model.pt").is_file():
            ddn(["train-cls", "--data", str(prep), "--out", str(run_dir), *net, *size,
                 "--batch", str(args.cls_batch),
                 "--iters", str(args.cls_iters), *shlex.split(args.cls_args), *common,
                 *_resume(run_dir)])  # fmt: skip
        return run_dir

    def evaluate(prep: Path, seg: Path, cls: Path | None, name: str) -> dict[str, Any]:
        runs = (["--cls", str(cls)] if cls else []) + ["--seg", str(seg)]
        text = ddn(["eval", "--data", str(prep), *runs, "--json", "--save-pred",
                    str(out / f"eval-{name}"), "--overlays", "8", "--device", args.device],
                   capture=True)  # fmt: skip
        return json.loads(text)

    results: dict[str, dict[str, Any]] = {}
    for count in args.counts:
        prep_all = prepare(count, "all")
        cell: dict[str, Any] = {}
        if "DecoupledNet" in args.methods:
            cls = classifier(prep_all, out / "cls")  # the weak set is the same for every count
            seg = out / f"seg-{count}"
            if not (seg / "model.pt").is_file():
                ddn(["train-seg", "--data", str(prep_all), "--cls", str(cls), "--out", str(seg),
                     *seg_steps, *common, *_resume(seg)])  # fmt: skip
            cell["DecoupledNet"] = evaluate(prep_all, seg, cls, f"decoupled-{count}")
        if "DecoupledNet-Str" in args.methods:
            prep_str = prepare(count, "strong")
            cls = classifier(prep_str, out / f"cls-str-{count}")
            seg = out / f"seg-str-{count}"
            if not (seg / "model.pt").is_file():
                ddn(["train-seg", "--data", str(prep_str), "--cls", str(cls), "--out", str(seg),
                     *seg_steps, *common, *_resume(seg)])  # fmt: skip
            # Scored on the same val images as the other rows (the val split does not
            # depend on --weak-from).
            cell["DecoupledNet-Str"] = evaluate(prep_str, seg, cls, f"str-{count}")
        if "DeconvNet" in args.methods:
            seg = out / f"deconvnet-{count}"
            if not (seg / "model.pt").is_file():
                ddn(["train-seg", "--baseline", "deconvnet", "--data", str(prep_all),
                     "--out", str(seg), *net, *size, *seg_steps,
                     *common, *_resume(seg)])  # fmt: skip
            cell["DeconvNet"] = evaluate(prep_all, seg, None, f"deconvnet-{count}")
        results[count] = cell
    return summarize(args, results, ddn.log)


def summarize(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], log: list[dict[str, Any]]
) -> dict[str, Any]:
    """mIoU per cell, the margins, the targets and whether they hold."""
    margins: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    for count, cell in results.items():
        miou = {m: 100 * r["miou"] for m, r in cell.items()}
        margins[count] = {}
        if "DecoupledNet" not in miou:
            continue
        decoupled = cell["DecoupledNet"]
        if not decoupled["miou_objects"]:
            failures.append(f"{count}/class: DecoupledNet labels no object pixel")
        for other, key, target in (
            ("DeconvNet", "over_deconvnet", args.min_deconvnet_margin),
            ("DecoupledNet-Str", "over_str", args.min_str_margin),
        ):
            if other in miou:
                margin = round(miou["DecoupledNet"] - miou[other], 1)
                margins[count][key] = margin
                if margin < target:
                    failures.append(f"{count}/class: DecoupledNet - {other} = {margin} < {target}")
    # A model that labels no object pixel scores background IoU / (C+1): name such cells.
    no_objects = [f"{m} at {count}/class" for count, cell in results.items()
                  for m, r in cell.items() if not r["miou_objects"]]  # fmt: skip
    return {
        "results": results,
        "margins": margins,
        "no_object_pixels": no_objects,
        "failures": failures,
        "targets_met": not failures,
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "commands": log,
        "seconds": round(sum(c["seconds"] for c in log), 1),
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    for count, cell in summary["results"].items():
        methods = list(cell)
        lines += [f"### {count} strong images per class", "",
                  "| class | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * len(methods)]  # fmt: skip
        names = list(next(iter(cell.values()))["per_class"])
        for name in names:
            ious = [cell[m]["per_class"][name] for m in methods]
            lines.append(f"| {name} | " + " | ".join(_pct(v) for v in ious) + " |")
        for key, label in (("miou", "**mIoU**"), ("miou_objects", "mIoU objects"),
                           ("pixel_acc", "pixel acc."), ("cls_map", "classifier mAP")):  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(_pct(cell[m][key]) for m in methods) + " |")
        margins = summary["margins"].get(count, {})
        if margins:
            lines += ["", "Margins (mIoU points): " + ", ".join(
                f"DecoupledNet - {'DeconvNet' if k == 'over_deconvnet' else '-Str'} {v:+.1f}"
                for k, v in margins.items())]  # fmt: skip
        lines.append("")
    lines += ["| command | seconds |", "|---|---|"]
    lines += [f"| `{c['command']}` | {c['seconds']} |" for c in summary["commands"]]
    lines += ["", f"Total {summary['seconds'] / 60:.1f} min of commands run this time."]
    if summary["no_object_pixels"]:
        lines += ["", "No object pixel labelled: " + ", ".join(summary["no_object_pixels"])]
    if summary["failures"]:
        lines += ["", "Targets missed: " + "; ".join(summary["failures"])]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "—" if value is None or value != value else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run(args)
    (args.out / "real_photos.md").write_text(markdown(summary))
    (args.out / "real_photos.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))
    print(json.dumps(summary))
    if summary["failures"]:
        sys.exit("targets missed: " + "; ".join(summary["failures"]))


if __name__ == "__main__":
    main()
