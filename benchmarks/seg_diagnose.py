"""Why a DecoupledNet run labels too few (or too many) object pixels: where the errors come from.

Given a prepared directory and a classifier + segmenter pair, it measures

- on ``--crops`` of the segmenter's own training crops (seeded sample, no flip): the mean
  foreground probability on object pixels and on background pixels, and the share of
  object pixels it labels (p > 0.5): does the segmenter fit its training task?
- on the val images, as `ddn eval` runs them: how often the classifier picks the right
  labels (recall and precision of the picked labels at ``--threshold``), the object share
  of the input, and for the true labels it picked the mean foreground probability on
  the class's own pixels and on the background: does the figure/ground carry over to
  the scale and context of inference?
- the mIoU `ddn eval` gives, and the mIoU with each val image's true labels given to
  the segmenter in place of the classifier's pick (``segment(..., labels=)``): how much
  of the error is the label decision, how much the segmenter.

Prints a JSON object as its last line.

    python benchmarks/seg_diagnose.py --data PREP --cls CLS_RUN --seg SEG_RUN
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddn.confusion import ConfusionMatrix  # noqa: E402
from ddn.inference import segment as segment_images  # noqa: E402
from ddn.models import normalize  # noqa: E402
from ddn.train.seg import segment  # noqa: E402
from ddn.train.strong import WARP_RATIO  # noqa: E402
from ddn.trained_runs import load_models  # noqa: E402
from pipeline.readers import CropDataset, ValDataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cls", type=Path, required=True)
    p.add_argument("--seg", type=Path, required=True)
    p.add_argument("--crops", type=int, default=128, help="Training crops to measure.")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@torch.no_grad()
def training_fit(models, data: Path, count: int, seed: int) -> dict[str, float]:
    size = models.classifier.input_size
    crops = CropDataset(data, round(size * WARP_RATIO), size, flip=False, seed=seed)
    picks = np.random.default_rng(seed).choice(len(crops), min(count, len(crops)), replace=False)
    fg_p, bg_p, hits, objects = [], [], 0, 0
    for start in range(0, len(picks), 16):
        items = [crops[int(i)] for i in picks[start : start + 16]]
        images = normalize(torch.stack([it["image"] for it in items]))
        subsets = torch.stack([it["subset"] for it in items])
        target = torch.stack([it["target"] for it in items])
        logits = segment(models.classifier, models.classifier, models.segmenter, images,
                         subsets, amp=False)  # fmt: skip
        p = logits.float().softmax(1)[:, 1]
        fg_p.append(p[target == 1])
        bg_p.append(p[target == 0])
        hits += int((p[target == 1] > 0.5).sum())
        objects += int((target == 1).sum())
    fg, bg = torch.cat(fg_p), torch.cat(bg_p)
    return {
        "crops": len(picks),
        "object_share": objects / max(1, objects + len(bg)),
        "mean_p_fg_on_objects": float(fg.mean()) if len(fg) else float("nan"),
        "mean_p_fg_on_background": float(bg.mean()) if len(bg) else float("nan"),
        "objects_labelled": hits / max(1, objects),
    }


def inference_fit(models, data: Path, threshold: float) -> tuple[dict[str, float], ConfusionMatrix]:
    """The figures above, and the confusion matrix of these predictions (`ddn eval`'s)."""
    val = ValDataset(data)
    confusion = ConfusionMatrix(len(val.classes))
    picked_true = picked = true = 0
    fg_on_obj, fg_on_bg, labelled, obj_pixels, share = [], [], 0, 0, []
    for i in range(len(val)):
        item = val[i]
        mask = item["mask"]
        truth = {int(c) for c in np.unique(mask) if c not in (0, 255)}
        (pred,) = segment_images(models.classifier, models.segmenter, [item["image"]], threshold,
                                 keep_maps=True)  # fmt: skip
        confusion.update(mask, pred.pred)
        chosen = set(pred.labels)
        picked_true += len(chosen & truth)
        picked += len(chosen)
        true += len(truth)
        side = max(mask.shape)
        for row, c in enumerate(pred.labels):
            if c not in truth:
                continue
            fg = pred.foreground[row]
            fg_on_obj.append(float(fg[mask == c].mean()))
            fg_on_bg.append(float(fg[mask == 0].mean()) if (mask == 0).any() else np.nan)
            share.append(float((mask == c).sum() / side**2))
        objects = (mask != 0) & (mask != 255)
        labelled += int((pred.pred[objects] != 0).sum())
        obj_pixels += int(objects.sum())
    figures = {
        "images": len(val),
        "label_recall": picked_true / max(1, true),
        "label_precision": picked_true / max(1, picked),
        "mean_fg_on_own_class_pixels": float(np.nanmean(fg_on_obj)) if fg_on_obj else np.nan,
        "mean_fg_on_background": float(np.nanmean(fg_on_bg)) if fg_on_bg else np.nan,
        "median_object_share_of_input": float(np.median(share)) if share else np.nan,
        "object_pixels_labelled_as_object": labelled / max(1, obj_pixels),
    }
    return figures, confusion


@torch.no_grad()
def true_label_miou(models, data: Path, picked: ConfusionMatrix) -> dict[str, object]:
    """mIoU and per-class IoU (in %) with the classifier's picks (`picked`, from
    `inference_fit`) and with each image's true labels given to the segmenter."""
    val = ValDataset(data)
    given = ConfusionMatrix(len(val.classes))
    for start in range(0, len(val), 16):
        items = [val[i] for i in range(start, min(start + 16, len(val)))]
        truth = [[int(c) + 1 for c in np.flatnonzero(it["labels"])] for it in items]
        preds = segment_images(models.classifier, models.segmenter,
                               [it["image"] for it in items], labels=truth)  # fmt: skip
        for it, p in zip(items, preds, strict=True):
            given.update(it["mask"], p.pred)

    def per_class(cm: ConfusionMatrix) -> dict[str, float]:
        iou = cm.iou()
        return {name: round(100 * float(v), 1) for name, v in zip(val.classes, iou, strict=True)}

    return {
        "miou_picked_labels": 100 * picked.miou(),
        "miou_true_labels": 100 * given.miou(),
        "miou_objects_picked_labels": 100 * picked.miou_objects(),
        "miou_objects_true_labels": 100 * given.miou_objects(),
        "iou_picked_labels": per_class(picked),
        "iou_true_labels": per_class(given),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    models = load_models(args.cls, args.seg, torch.device("cpu"))
    result = {
        "training_crops": training_fit(models, args.data, args.crops, args.seed),
    }
    result["val_inference"], picked = inference_fit(models, args.data, args.threshold)
    result["val_miou"] = true_label_miou(models, args.data, picked)
    for part, values in result.items():
        print(part)
        for key, value in values.items():
            print(
                f"  {key:34s} {value:.3f}" if isinstance(value, float) else f"  {key:34s} {value}"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
