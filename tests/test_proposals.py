import json

import cv2
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.proposals import (
    ProposalConfig,
    gradient_edges,
    non_max_suppression,
    normalize_edgeboxes_output,
    propose,
    set_single_thread,
)

H, W = 120, 160
DARK_RECT = (30, 25, 80, 75)  # x0, y0, x1, y1 (exclusive)
RED_RECT = (105, 40, 145, 100)


def _scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((H, W, 3), 170, np.float32) + rng.normal(0, 3, (H, W, 3))
    x0, y0, x1, y1 = DARK_RECT
    img[y0:y1, x0:x1] = 30
    x0, y0, x1, y1 = RED_RECT
    img[y0:y1, x0:x1] = (220, 40, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(boxes: np.ndarray, gt: tuple[int, int, int, int]) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], gt[2]) - np.maximum(boxes[:, 0], gt[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], gt[3]) - np.maximum(boxes[:, 1], gt[1]), 0, None)
    inter = ix * iy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter)


@pytest.mark.parametrize("method", ["edgebox", "selective-search", "random"])
def test_propose_shapes_order_and_extent(method):
    boxes, scores = propose(_scene(), ProposalConfig(method=method), np.random.default_rng(1))
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (len(boxes),)
    if method == "random":
        assert len(boxes) == 0
        return
    assert len(boxes) > 0
    assert np.all(np.diff(scores) <= 0), "scores must be sorted descending"
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert boxes[:, :2].min() >= 0
    assert boxes[:, 2].max() <= W and boxes[:, 3].max() <= H


def test_edgebox_finds_isolated_rectangle():
    boxes, _ = propose(_scene(), ProposalConfig(), np.random.default_rng(0))
    assert _iou(boxes[:20], DARK_RECT).max() > 0.7
    assert _iou(boxes[:20], RED_RECT).max() > 0.7


def test_min_box_frac_scales_with_image_area():
    cfg = ProposalConfig(min_box_frac=0.05)
    boxes, _ = propose(_scene(), cfg, np.random.default_rng(0))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert len(boxes) > 0 and areas.min() >= 0.05 * H * W * 0.9


def test_selective_search_is_reproducible_with_same_seed():
    img, cfg = _scene(), ProposalConfig(method="selective-search")
    a = propose(img, cfg, np.random.default_rng(5))
    b = propose(img, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_uniform_image_gives_empty_arrays():
    flat = np.full((64, 64, 3), 90, np.uint8)
    boxes, scores = propose(flat, ProposalConfig(), np.random.default_rng(0))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32


@pytest.mark.parametrize("score_shape", [(3, 1), (3,)])  # OpenCV 4.x, 5.x
def test_normalize_edgeboxes_output_both_opencv_shapes(score_shape):
    rects = np.array([[1, 2, 10, 20], [0, 0, 5, 5], [3, 3, 4, 4]], np.int32)
    scores = np.array([0.5, 0.9, 0.1], np.float32).reshape(score_shape)
    boxes, flat = normalize_edgeboxes_output((rects, scores))
    np.testing.assert_array_equal(boxes[0], [1, 2, 11, 22])  # x1 = x + w
    np.testing.assert_allclose(flat, [0.5, 0.9, 0.1])
    assert flat.shape == (3,)


def test_normalize_edgeboxes_output_empty():
    boxes, scores = normalize_edgeboxes_output(((), None))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_opencv_empty_edge_map_really_returns_empty_tuple():
    # Guards the assumption normalize_edgeboxes_output handles.
    eb = cv2.ximgproc.createEdgeBoxes()
    z = np.zeros((50, 50), np.float32)
    boxes, scores = normalize_edgeboxes_output(eb.getBoundingBoxes(z, z))
    assert len(boxes) == 0 and len(scores) == 0


def test_missing_edge_model_is_a_user_error(tmp_path):
    missing = tmp_path / "nope" / "model.yml.gz"
    with pytest.raises(UserError, match="model.yml.gz"):
        propose(_scene(), ProposalConfig(edge_model=str(missing)), np.random.default_rng(0))


def test_unreadable_edge_model_is_a_user_error(tmp_path):
    bad = tmp_path / "model.yml.gz"
    bad.write_bytes(b"this is not a forest")
    with pytest.raises(UserError, match=str(bad)):
        propose(_scene(), ProposalConfig(edge_model=str(bad)), np.random.default_rng(0))


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="edgebox"):
        ProposalConfig(method="sliding-window")


def test_config_dict_is_json_and_records_edge_source():
    d = ProposalConfig().to_dict()
    assert json.loads(json.dumps(d))["edges"] == "gradient"
    assert ProposalConfig(edge_model="m.yml.gz").to_dict()["edges"] == "structured"
    assert ProposalConfig(method="random").to_dict()["edges"] is None
    assert d["max_boxes"] == 1000 and d["alpha"] == 0.65 and d["beta"] == 0.75


def test_gradient_edges_are_thin_normalised_and_oriented():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 200  # vertical step edge between columns 19 and 20
    edges, orientation = gradient_edges(img, sigma=1.0)
    assert edges.dtype == np.float32 and orientation.dtype == np.float32
    assert edges.max() == pytest.approx(1.0) and edges.min() >= 0
    rows = edges[5:35]
    assert np.all((rows > 0.1).sum(axis=1) == 1), "NMS must leave a one-pixel-wide edge"
    assert set(np.flatnonzero(rows[0] > 0.1)) <= {19, 20}
    # Gradient along x: orientation ~ 0 (or ~pi, the same direction mod pi).
    o = orientation[20, 19:21]
    assert np.all(np.minimum(o, np.pi - o) < 0.1)


def test_nms_keeps_diagonal_ridge_maximum():
    mag = np.zeros((9, 9), np.float32)
    for d, v in ((-1, 0.5), (0, 1.0), (1, 0.5)):
        mag += np.eye(9, k=d, dtype=np.float32) * v
    # A diagonal line from top-left to bottom-right (three pixels thick when seen along
    # rows): the gradient points at 135 degrees; only the centre diagonal survives.
    orientation = np.full((9, 9), 3 * np.pi / 4, np.float32)
    thin = non_max_suppression(mag, orientation)
    np.testing.assert_array_equal(thin > 0, np.eye(9, dtype=bool))


def test_set_single_thread():
    before = cv2.getNumThreads()
    try:
        set_single_thread()
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
