"""Confusion matrix and IoU metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddn.confusion import ConfusionMatrix

# 4 classes (0 background, 1..3); class 3 is in neither ground truth nor prediction.
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], np.uint8)
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 1]], np.uint8)
# Counted pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,1); (255, 2) ignored.
EXPECTED = np.array([[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_hand_computed_case():
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    assert cm.matrix.tolist() == EXPECTED.tolist()
    iou = cm.iou()
    # IoU = TP / (row + column - TP): 1/(2+2-1), 3/(3+4-3), 1/(2+1-1), 0/0
    assert iou[:3] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)  # NaN class left out
    assert cm.miou_objects() == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_predicted_but_absent_class_counts_as_zero():
    cm = ConfusionMatrix(4)
    cm.update(GT, np.where(PRED == 2, 3, PRED).astype(np.uint8))
    iou = cm.iou()
    assert iou[2] == 0 and iou[3] == 0  # both enter the mean: 0/1 is defined
    assert cm.miou() == pytest.approx((iou[0] + iou[1]) / 4)


def test_accumulates_over_images():
    split = ConfusionMatrix(4)
    split.update(GT[:1], PRED[:1])
    split.update(GT[1:], PRED[1:])
    whole = ConfusionMatrix(4)
    whole.update(GT, PRED)
    assert np.array_equal(split.matrix, whole.matrix)


def test_nothing_counted_and_bad_values():
    cm = ConfusionMatrix(3)
    cm.update(np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8))
    assert cm.matrix.sum() == 0
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    with pytest.raises(ValueError, match="prediction has values"):
        cm.update(np.zeros((1, 2), np.uint8), np.array([[0, 3]], np.uint8))
    with pytest.raises(ValueError, match="ground truth has values"):
        cm.update(np.array([[0, 7]], np.uint8), np.zeros((1, 2), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
