"""Cutting one training example out of a source image, as the reference code does.

A box (x0, y0, x1, y1) in source pixels (pixel i spans [i, i+1)) is warped to a
``size`` x ``size`` square, aspect not kept: output pixel u samples the source at
x = x0 + (u + 0.5) * (x1 - x0) / size (continuous coordinates). The image is sampled
bilinearly with 0 outside the image, the label map by nearest neighbour with 255
(ignore) outside. The GPU crop path (roi_align, aligned=True) samples the same points.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

IGNORE = 255


def _sample_points(lo: float, hi: float, size: int) -> np.ndarray:
    step = (hi - lo) / size
    return lo + (np.arange(size, dtype=np.float64) + 0.5) * step


def warp_image(image: np.ndarray, box: Iterable[float], size: int) -> np.ndarray:
    """Bilinear warp of ``box`` of an HxWx3 uint8 image to size x size x 3 (0 outside)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    # cv2 works in pixel-centre coordinates, hence the -0.5.
    m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
    return cv2.warpAffine(
        image,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def warp_labels(labels: np.ndarray, box: Iterable[float], size: int) -> np.ndarray:
    """Nearest-neighbour warp of ``box`` of an HxW label map (255 outside the image)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = labels.shape
    xs = np.floor(_sample_points(x0, x1, size)).astype(np.int64)
    ys = np.floor(_sample_points(y0, y1, size)).astype(np.int64)
    out = labels[np.clip(ys, 0, h - 1)[:, None], np.clip(xs, 0, w - 1)[None, :]]
    outside = ((ys < 0) | (ys >= h))[:, None] | ((xs < 0) | (xs >= w))[None, :]
    return np.where(outside, np.uint8(IGNORE), out).astype(np.uint8)


def binary_target(labels: np.ndarray, subset: Iterable[int]) -> np.ndarray:
    """Figure/ground target for subset P: 1 where the class is in P, 0 else, 255 kept."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(subset)] = 1
    lut[IGNORE] = IGNORE
    return lut[labels]


def warp_example(
    image: np.ndarray, labels: np.ndarray, box: Iterable[float], subset: Iterable[int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image crop (size x size x 3) and its 0/1/255 target for subset P."""
    box = tuple(box)
    return warp_image(image, box, size), binary_target(warp_labels(labels, box, size), subset)
