"""Region proposals for combinatorial cropping: EdgeBoxes, selective search, or none.

The paper takes its N_p sub-images per label subset "from EdgeBox region proposals
plus random sampling" without giving parameters; this module produces the candidate
boxes, :mod:`pipeline.combinatorial` picks the ones that enclose each subset.

EdgeBoxes (Zitnick & Dollar, ECCV 2014) is OpenCV's ``cv2.ximgproc.EdgeBoxes``. It needs
an edge map in [0, 1] and an edge orientation map. The structured edge detector that
normally provides them needs ``model.yml.gz`` (opencv_extra, not in the wheel); pass its
path as ``edge_model``. Without it the maps come from image gradients: Gaussian
smoothing, Sobel on each RGB channel keeping the strongest channel per pixel, magnitude
normalised to [0, 1], orientation = gradient direction mod pi (EdgeBoxes' grouping
affinity treats orientation as the edge normal, which is what the gradient direction
is), thinned by non-maximum suppression across the edge.

All boxes are float32 ``x0, y0, x1, y1`` with x1, y1 exclusive (pixel i spans [i, i+1)),
sorted by descending score.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.settings import setting

METHODS = ("edgebox", "selective-search", "random")

# OpenCV's EdgeBoxes default minBoxArea is 1000 px, tuned for ~500x375 PASCAL images;
# as a fraction of the image area it means the same thing at any resolution.
_OPENCV_MIN_BOX_AREA_FRACTION = 1000 / (500 * 375)


@dataclass(frozen=True)
class ProposalConfig:
    """How candidate boxes are generated; recorded in the manifest.

    ``max_boxes`` 1000 (OpenCV's default is 10000): only proposals that enclose a
    subset's foreground are used, and how many of those exist is set by ``beta`` (NMS
    removes the looser boxes around each tight one), not by ``max_boxes``. Measured on
    40 horse photos (gradient edges, 0.95 enclosure): 1000 and 10000 boxes give the same
    enclosing boxes per image (median 2; beta 0.9 gives ~5) and the same best IoU with
    the object (0.84), at 0.25 vs 0.29 s. EdgeBoxes aims at tight boxes, so most of the
    N_p boxes per subset end up random; selective search yields more enclosing boxes
    (median 14) but fewer tight ones.
    ``min_box_frac`` is the smallest box as a fraction of the image area (0.0053 ~
    OpenCV's 1000 px on a 500x375 image). ``edge_sigma`` is the Gaussian smoothing
    (pixels) before gradient edges. ``ss_max_side`` bounds the longest side of the
    downscaled copy selective search runs on.
    """

    method: str = setting("edgebox", help="Region proposals for the combinatorial crops.")
    edge_model: str | None = setting(
        None, help="OpenCV structured-edge model.yml.gz; without it edges come from gradients."
    )
    alpha: float = setting(0.65, help="EdgeBoxes: step size of the box search.")
    beta: float = setting(0.75, help="EdgeBoxes: NMS threshold between boxes.")
    min_score: float = setting(0.01, help="EdgeBoxes: minimum box score.")
    max_boxes: int = setting(1000, help="EdgeBoxes: candidate boxes per image.")
    min_box_frac: float = _OPENCV_MIN_BOX_AREA_FRACTION
    max_aspect_ratio: float = 3.0
    edge_sigma: float = 1.0
    ss_max_side: int = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(
                f"unknown proposal method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if self.max_boxes < 1:
            raise UserError(f"max_boxes must be at least 1, got {self.max_boxes}")
        if not 0 <= self.min_box_frac < 1:
            raise UserError(f"min_box_frac must be in [0, 1), got {self.min_box_frac}")

    @property
    def edges(self) -> str | None:
        """Which edge maps EdgeBoxes runs on: 'structured', 'gradient', or None."""
        if self.method != "edgebox":
            return None
        return "structured" if self.edge_model else "gradient"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["edges"] = self.edges
        return d


def set_single_thread() -> None:
    """One OpenCV thread: call inside each joblib worker so N workers use N cores."""
    cv2.setNumThreads(1)


def propose(
    image_rgb: np.ndarray, cfg: ProposalConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate boxes (N,4) float32 x0,y0,x1,y1 and scores (N,) float32, best first."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image_rgb.shape}")
    if cfg.method == "random":
        return _empty()
    if cfg.method == "selective-search":
        boxes, scores = _selective_search(image_rgb, cfg, rng)
    else:
        boxes, scores = _edge_boxes(image_rgb, cfg)
    h, w = image_rgb.shape[:2]
    # EdgeBoxes applies minBoxArea/maxAspectRatio while searching but its box refinement
    # can leave them, and selective search has no such limits: enforce both here.
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ok = (bw > 0) & (bh > 0) & (bw * bh >= cfg.min_box_frac * h * w)
    ok &= np.maximum(bw, bh) <= cfg.max_aspect_ratio * np.minimum(bw, bh)
    boxes, scores = _sorted(boxes[ok], scores[ok])
    return boxes[: cfg.max_boxes], scores[: cfg.max_boxes]


# --- EdgeBoxes -------------------------------------------------------------------------


def _edge_boxes(image_rgb: np.ndarray, cfg: ProposalConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.edge_model:
        edges, orientation = structured_edges(image_rgb, cfg.edge_model)
    else:
        edges, orientation = gradient_edges(image_rgb, cfg.edge_sigma)
    h, w = edges.shape
    eb = cv2.ximgproc.createEdgeBoxes(
        alpha=cfg.alpha,
        beta=cfg.beta,
        minScore=cfg.min_score,
        maxBoxes=cfg.max_boxes,
        maxAspectRatio=cfg.max_aspect_ratio,
        minBoxArea=max(1.0, cfg.min_box_frac * h * w),
    )
    return normalize_edgeboxes_output(eb.getBoundingBoxes(edges, orientation))


def normalize_edgeboxes_output(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """``getBoundingBoxes``' (x,y,w,h boxes, scores) as x0,y0,x1,y1 boxes and flat scores.

    Scores come as (N,1) in OpenCV 4.x and (N,) in 5.x; no boxes come as ``((), None)``.
    """
    rects, scores = result
    rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    if len(rects) == 0:
        return _empty()
    if scores is None:
        raise ValueError("EdgeBoxes returned boxes without scores")
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(scores) != len(rects):
        raise ValueError(f"EdgeBoxes returned {len(rects)} boxes but {len(scores)} scores")
    return _xywh_to_xyxy(rects), scores


def gradient_edges(image_rgb: np.ndarray, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Thin edge map in [0, 1] and orientation in [0, pi), both float32 HxW.

    The stand-in for the structured edge detector when its model file is absent.
    """
    img = image_rgb.astype(np.float32) / 255.0
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    mag2 = gx * gx + gy * gy
    # The channel with the strongest gradient decides, so a red/green boundary of equal
    # brightness is still an edge.
    best = np.argmax(mag2, axis=2)[..., None]
    gx = np.take_along_axis(gx, best, axis=2)[..., 0]
    gy = np.take_along_axis(gy, best, axis=2)[..., 0]
    mag = np.sqrt(np.take_along_axis(mag2, best, axis=2)[..., 0])
    top = float(mag.max())
    if top <= 1e-6:
        zeros = np.zeros(mag.shape, np.float32)
        return zeros, zeros.copy()
    mag /= top
    orientation = np.mod(np.arctan2(gy, gx), np.pi).astype(np.float32)
    return non_max_suppression(mag, orientation), orientation


def non_max_suppression(mag: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Keep pixels that are a maximum of ``mag`` across the edge (along the gradient).

    EdgeBoxes groups 8-connected edge pixels into segments, so edges must be one pixel
    wide. Like Dollar's ``edgesNms``, each pixel is compared with the magnitude
    interpolated one pixel away on both sides along ``orientation``, which also thins
    diagonal edges (a 4-neighbour comparison leaves them two pixels wide). Ties (a
    blurred step edge straddling two pixels) keep only the pixel on the negative side.
    """
    h, w = mag.shape
    mag = mag.astype(np.float32)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dx, dy = np.cos(orientation).astype(np.float32), np.sin(orientation).astype(np.float32)

    def shifted(sign: float) -> np.ndarray:
        return cv2.remap(
            mag,
            xs + sign * dx,
            ys + sign * dy,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )

    keep = (mag >= shifted(1.0)) & (mag > shifted(-1.0))
    return np.where(keep, mag, 0).astype(np.float32)


_SED_CACHE: dict[str, Any] = {}


def structured_edges(image_rgb: np.ndarray, model_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Structured-forest edges (thinned) and orientation, as Dollar's EdgeBoxes uses."""
    detector = _structured_detector(model_path)
    edges = detector.detectEdges(image_rgb.astype(np.float32) / 255.0)
    orientation = detector.computeOrientation(edges)
    return detector.edgesNms(edges, orientation), orientation


def _structured_detector(model_path: str) -> Any:
    # Loading the forest takes ~1 s: once per process (each joblib worker has its own).
    path = os.path.abspath(os.path.expanduser(model_path))
    if path not in _SED_CACHE:
        if not os.path.isfile(path):
            raise UserError(f"{model_path}: structured edge model not found (--edge-model)")
        try:
            _SED_CACHE[path] = cv2.ximgproc.createStructuredEdgeDetection(path)
        except cv2.error as e:
            raise UserError(
                f"{model_path}: not a readable structured edge model (expected OpenCV's "
                f"model.yml.gz): {str(e).strip().splitlines()[-1]}"
            ) from None
    return _SED_CACHE[path]


# --- selective search ------------------------------------------------------------------


def _selective_search(
    image_rgb: np.ndarray, cfg: ProposalConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    h, w = image_rgb.shape[:2]
    scale = min(1.0, cfg.ss_max_side / max(h, w))
    small = image_rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    ss.switchToSelectiveSearchFast()
    # OpenCV ranks regions with C rand() (level x rand, as in the paper); seed it so the
    # ranking is reproducible.
    _seed_c_rand(int(rng.integers(0, 2**31 - 1)))
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)
    boxes = _xywh_to_xyxy(rects) / scale
    boxes = np.minimum(boxes, np.array([w, h, w, h], np.float32))
    # Rank-based score: OpenCV returns regions best (lowest rank) first.
    scores = 1.0 - np.arange(len(boxes), dtype=np.float32) / max(len(boxes), 1)
    return boxes, scores


def _seed_c_rand(seed: int) -> None:
    # Without a process-wide C library handle (e.g. Windows) the box set is the same,
    # only the order of the regions may differ between runs.
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))


# --- helpers ---------------------------------------------------------------------------


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)


def _xywh_to_xyxy(rects: np.ndarray) -> np.ndarray:
    out = rects.astype(np.float32).copy()
    out[:, 2:] += out[:, :2]
    return out


def _sorted(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    return (
        boxes[order].astype(np.float32).reshape(-1, 4),
        scores[order].astype(np.float32).reshape(-1),
    )
