"""Classification metrics: average precision per class and their mean (mAP).

AP is the area under the precision-recall curve as a step function,
AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds (scikit-learn's
``average_precision_score``; tied scores form one threshold, so the result does not
depend on the order of ties). A class with no positive example has no recall: its AP
is NaN and it is left out of the mean (PASCAL VOC's classification mAP does the same
for classes absent from a test set).
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: ``scores`` (N,) any real values, ``labels`` (N,) 0/1."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ")
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # The last index of each run of equal scores: one point of the curve per threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of each column of ``scores`` / ``labels`` (N, C); NaN for classes without positives."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"expected two (N, C) arrays, got {scores.shape} and {labels.shape}")
    return np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP over the classes that have positives, per-class AP with NaN for the others)."""
    ap = average_precision_per_class(scores, labels)
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap


def format_ap_table(classes: list[str], ap: np.ndarray, mean: float) -> str:
    """A small text table: one line per class (blank AP for classes absent from val)."""
    width = max([len(c) for c in classes] + [len("mAP")])
    lines = [f"{'class':<{width}}  AP"]
    lines += [
        f"{c:<{width}}  {'' if np.isnan(v) else f'{v:.3f}'}"
        for c, v in zip(classes, ap, strict=True)
    ]
    lines.append(f"{'mAP':<{width}}  {'' if np.isnan(mean) else f'{mean:.3f}'}")
    return "\n".join(lines)
