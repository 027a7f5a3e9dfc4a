"""Segmentation metrics from a confusion matrix (the classifier's mAP: `ddn.metrics`).

The confusion matrix is over the C+1 classes (0 background, k class k), rows the ground
truth, columns the prediction; pixels labelled 255 (ignore) are not counted. It is
accumulated with one `np.bincount` per image, so evaluation memory does not grow with
the data set.

IoU of class k = TP / (TP + FP + FN). A class absent from both the ground truth and the
predictions of the whole evaluation has no IoU (0/0): it is NaN and left out of the
means (`np.nanmean`), as in the VOC devkit, rather than counted as 0 or 1.
"""

from __future__ import annotations

import warnings

import numpy as np

IGNORE = 255


class ConfusionMatrix:
    """Accumulates (ground truth, prediction) label maps over `num_classes` = C+1 classes."""

    def __init__(self, num_classes: int, ignore: int = IGNORE) -> None:
        if num_classes < 2:
            raise ValueError(f"need background and at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.ignore = ignore
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (or any arrays of equal shape) of class indices."""
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ")
        keep = gt != self.ignore
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        n = self.num_classes
        if g.size and (g.max() >= n or g.min() < 0):
            raise ValueError(f"ground truth has values outside 0..{n - 1} and {self.ignore}")
        if p.size and (p.max() >= n or p.min() < 0):
            raise ValueError(f"prediction has values outside 0..{n - 1}")
        self.matrix += np.bincount(g * n + p, minlength=n * n).reshape(n, n)

    def iou(self) -> np.ndarray:
        """Per-class IoU (C+1,); NaN for a class in neither ground truth nor prediction."""
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """Mean IoU over all C+1 classes, background included (the paper's figure)."""
        return _nanmean(self.iou())

    def miou_objects(self) -> float:
        """Mean IoU over the C object classes (background left out)."""
        return _nanmean(self.iou()[1:])

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted (non-ignored) pixels; NaN when nothing was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():  # all-NaN -> NaN, without numpy's RuntimeWarning
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))
