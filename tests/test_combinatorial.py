import numpy as np
import pytest

from pipeline.combinatorial import box_counts, image_crops, label_subsets, select_boxes
from pipeline.combinatorial import summed_area_table as sat_of
from pipeline.shards import ORIGIN_PROPOSAL, ORIGIN_RANDOM, ORIGIN_WHOLE, subset_classes


def _inside_count(mask: np.ndarray, box) -> int:
    """Direct pixel counting: foreground pixels whose centre lies in the box."""
    h, w = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    return int((mask & inside).sum())


def _fg(h=60, w=80, rect=(20, 15, 50, 40)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = rect
    m[y0:y1, x0:x1] = True
    return m


# --- label_subsets -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_all_subsets_uncapped(k):
    labels = tuple(range(3, 3 + k))
    subsets = label_subsets(labels, None, np.random.default_rng(0))
    assert subsets == list(range(1, 2**k))


def test_bitmask_meaning_matches_shard_encoding():
    labels = (2, 7, 15)
    multi_hot = np.zeros(20, np.uint8)
    multi_hot[np.array(labels) - 1] = 1
    got = {b: subset_classes(multi_hot, b) for b in label_subsets(labels, None, None)}
    assert got[0b001] == [2] and got[0b010] == [7] and got[0b100] == [15]
    assert got[0b101] == [2, 15] and got[0b111] == [2, 7, 15]


def test_cap_keeps_singletons_and_full_set_then_samples():
    labels = tuple(range(1, 7))  # 63 subsets
    a = label_subsets(labels, 20, np.random.default_rng(3))
    b = label_subsets(labels, 20, np.random.default_rng(3))
    assert a == b and len(a) == 20 and len(set(a)) == 20
    assert a[:7] == [1, 2, 4, 8, 16, 32, 63]
    rest = a[7:]
    assert rest == sorted(rest)
    assert all(2 <= bin(m).count("1") <= 5 for m in rest)
    others = {frozenset(label_subsets(labels, 20, np.random.default_rng(s))[7:]) for s in range(5)}
    assert len(others) > 1, "the sample must depend on the seed"


def test_cap_not_reached_returns_all():
    assert label_subsets((1, 2, 3), 7, np.random.default_rng(0)) == list(range(1, 8))


def test_cap_below_singletons_plus_full_keeps_them_all():
    got = label_subsets((1, 2, 3, 4), 3, np.random.default_rng(0))
    assert got == [1, 2, 4, 8, 15]


def test_cap_with_many_labels_uses_rejection_sampling():
    labels = tuple(range(1, 41))
    got = label_subsets(labels, 60, np.random.default_rng(0))
    assert len(got) == 60 and len(set(got)) == 60
    assert got[40] == 2**40 - 1
    assert all(2 <= bin(m).count("1") < 40 for m in got[41:])


def test_too_many_or_unsorted_labels_raise():
    with pytest.raises(ValueError, match="63"):
        label_subsets(tuple(range(1, 65)), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="increasing"):
        label_subsets((3, 1), None, np.random.default_rng(0))
    assert label_subsets((), None, np.random.default_rng(0)) == []


# --- counting ----------------------------------------------------------------------------


def test_box_counts_match_direct_counting_including_fractional_and_outside_boxes():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) < 0.3
    boxes = np.concatenate(
        [rng.uniform(-10, 50, (200, 2)), rng.uniform(-10, 50, (200, 2))], axis=1
    ).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    got = box_counts(sat_of(mask), boxes)
    want = [_inside_count(mask, b) for b in boxes]
    np.testing.assert_array_equal(got, want)


# --- select_boxes ------------------------------------------------------------------------


def _proposals():
    # (box, score): 0 and 2 enclose the fg (20,15)-(50,40); 1 cuts it in half; 3 is a
    # duplicate of 0 after rounding with a lower score; 4 encloses 96%.
    boxes = np.array(
        [
            [18, 12, 55, 44],
            [0, 0, 35, 60],
            [10, 10, 60, 50],
            [18.2, 11.9, 54.8, 44.3],
            [20, 15, 50, 39],
        ],
        np.float32,
    )
    scores = np.array([0.5, 0.99, 0.7, 0.45, 0.2], np.float32)
    return boxes, scores


def test_select_boxes_encloses_orders_and_dedupes():
    fg = _fg()
    boxes, scores = _proposals()
    out, origin = select_boxes(fg, boxes, scores, 30, 0.95, np.random.default_rng(0))
    assert out.shape == (30, 4) and out.dtype == np.float32 and origin.dtype == np.uint8
    # Proposals first, by descending score; the non-enclosing top-scored one never taken;
    # the rounded duplicate of box 0 dropped; the 96% box kept.
    np.testing.assert_array_equal(out[:3], boxes[[2, 0, 4]])
    assert list(origin[:3]) == [ORIGIN_PROPOSAL] * 3
    assert np.all(origin[3:] == ORIGIN_RANDOM)
    total = fg.sum()
    for b in out:
        assert _inside_count(fg, b) >= 0.95 * total
    keys = {tuple(k) for k in np.rint(out).astype(int).tolist()}
    assert len(keys) == 30


def test_random_boxes_grow_the_tight_box_within_margin():
    fg = _fg()
    out, origin = select_boxes(
        fg, np.zeros((0, 4)), np.zeros(0), 50, 0.95, np.random.default_rng(1), "margin"
    )
    assert np.all(origin == ORIGIN_RANDOM)
    tight = np.array([20, 15, 50, 40], np.float32)
    side = np.array([30, 25, 30, 25], np.float32)
    grow = (out - tight) * np.array([-1, -1, 1, 1])
    assert np.all(grow >= 0) and np.all(grow <= 0.5 * side + 1e-4)
    assert np.all(out[:, 2:] <= 50 + 15 + 1e-4)


@pytest.mark.parametrize("rule", ["scales", "margin"])
def test_random_boxes_may_extend_past_the_image(rule):
    fg = _fg(rect=(0, 0, 30, 20))
    out, _ = select_boxes(
        fg, np.zeros((0, 4)), np.zeros(0), 40, 0.95, np.random.default_rng(2), rule
    )
    assert (out[:, 0] < 0).any() and (out[:, 1] < 0).any()
    assert all(_inside_count(fg, b) == fg.sum() for b in out)


def test_scale_boxes_span_from_the_tight_box_to_the_padded_square():
    # A 10x8 object in a 60x200 image: the padded square is 200 wide, 20x the object.
    fg = _fg(h=60, w=200, rect=(100, 30, 110, 38))
    out, origin = select_boxes(
        fg, np.zeros((0, 4)), np.zeros(0), 400, 0.95, np.random.default_rng(3), "scales"
    )
    assert np.all(origin == ORIGIN_RANDOM) and len(out) == 400
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    assert np.all(w >= 10 - 1e-3) and np.all(w <= 200 + 1e-3)
    assert np.all(h >= 8 - 1e-3) and np.all(h <= 200 + 1e-3)
    # Log-uniform in scale: about half the boxes below sqrt(20) ~ 4.5x the object's width.
    ratio = np.log(w / 10) / np.log(20)
    assert 0.4 < np.mean(ratio < 0.5) < 0.6
    assert (ratio > 0.9).sum() > 20 and (ratio < 0.1).sum() > 20
    # The same t for both sides: the aspect moves from the object's to square together.
    np.testing.assert_allclose(np.log(w / 10) / np.log(20), np.log(h / 8) / np.log(25), atol=1e-4)
    assert all(_inside_count(fg, b) == fg.sum() for b in out)


@pytest.mark.parametrize("scales_from", [0.75, 1.0])
def test_scales_from_keeps_the_boxes_near_the_scale_of_inference(scales_from):
    fg = _fg(h=60, w=200, rect=(100, 30, 110, 38))  # 10 px wide; the padded square is 20x
    draw = dict(n=300, enclose=0.95, rng=np.random.default_rng(3), random_boxes="scales")
    out, _ = select_boxes(fg, np.zeros((0, 4)), np.zeros(0), **draw, scales_from=scales_from)
    t = np.log((out[:, 2] - out[:, 0]) / 10) / np.log(20)
    if scales_from == 1.0:  # the padded square's size, placed anywhere it holds the object
        assert np.allclose(t, 1, atol=1e-4) and len(np.unique(np.rint(out), axis=0)) == 300
    else:
        assert t.min() >= scales_from - 1e-4 and 0.4 < np.mean(t < 0.875) < 0.6
    assert all(_inside_count(fg, b) == fg.sum() for b in out)
    # The default draws below the bound (the case above could not pass by accident).
    base, _ = select_boxes(
        fg, np.zeros((0, 4)), np.zeros(0), **draw | {"rng": np.random.default_rng(3)}
    )
    assert (np.log((base[:, 2] - base[:, 0]) / 10) / np.log(20) < 0.5).sum() > 100


def test_scales_from_zero_draws_the_boxes_of_the_default():
    fg = _fg()
    args = (fg, np.zeros((0, 4)), np.zeros(0), 50, 0.95)
    a, _ = select_boxes(*args, np.random.default_rng(5))
    b, _ = select_boxes(*args, np.random.default_rng(5), scales_from=0.0)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule, value", [("scales", 1.5), ("scales", -0.1), ("margin", 0.5)])
def test_scales_from_out_of_range_or_without_scales_is_refused(rule, value):
    with pytest.raises(ValueError, match="scales_from"):
        select_boxes(_fg(), np.zeros((0, 4)), np.zeros(0), 5, 0.95,
                     np.random.default_rng(0), rule, scales_from=value)  # fmt: skip


def test_whole_image_box_comes_first_and_is_the_padded_square():
    fg = _fg(h=60, w=80)
    boxes, scores = _proposals()
    out, origin = select_boxes(
        fg, boxes, scores, 10, 0.95, np.random.default_rng(0), whole_image=True
    )
    assert len(out) == 11 and origin[0] == ORIGIN_WHOLE and np.all(origin[1:] != ORIGIN_WHOLE)
    np.testing.assert_array_equal(out[0], [0, 0, 80, 80])
    assert len({tuple(k) for k in np.rint(out).astype(int).tolist()}) == 11


@pytest.mark.parametrize("rule", ["scales", "margin"])
def test_object_filling_a_square_image_still_yields_n_distinct_boxes(rule):
    fg = np.ones((40, 40), bool)
    out, _ = select_boxes(
        fg, np.zeros((0, 4)), np.zeros(0), 200, 0.95, np.random.default_rng(0), rule, True
    )
    assert len({tuple(k) for k in np.rint(out).astype(int).tolist()}) == 201
    assert all(_inside_count(fg, b) == fg.sum() for b in out)


def test_select_boxes_is_deterministic_given_the_seed():
    fg = _fg()
    boxes, scores = _proposals()
    a = select_boxes(fg, boxes, scores, 25, 0.95, np.random.default_rng(7))
    b = select_boxes(fg, boxes, scores, 25, 0.95, np.random.default_rng(7))
    c = select_boxes(fg, boxes, scores, 25, 0.95, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_more_enclosing_proposals_than_n_takes_the_best():
    fg = _fg()
    boxes = np.array([[19 - i, 14, 51, 41] for i in range(10)], np.float32)
    scores = np.arange(10, dtype=np.float32)
    out, origin = select_boxes(fg, boxes, scores, 4, 0.95, np.random.default_rng(0))
    np.testing.assert_array_equal(out, boxes[[9, 8, 7, 6]])
    assert np.all(origin == ORIGIN_PROPOSAL)


def test_empty_foreground_gives_no_boxes():
    out, origin = select_boxes(
        np.zeros((10, 10), bool), *_proposals(), 20, 0.95, np.random.default_rng(0)
    )
    assert out.shape == (0, 4) and origin.shape == (0,)


@pytest.mark.parametrize("rule", ["scales", "margin"])
def test_tiny_foreground_still_yields_n_distinct_boxes(rule):
    fg = np.zeros((30, 30), bool)
    fg[10, 12] = True
    out, _ = select_boxes(
        fg, np.zeros((0, 4)), np.zeros(0), 200, 0.95, np.random.default_rng(0), rule
    )
    assert len(out) == 200
    assert len({tuple(k) for k in np.rint(out).astype(int).tolist()}) == 200
    assert all(_inside_count(fg, b) == 1 for b in out)


# --- image_crops -------------------------------------------------------------------------


def test_image_crops_covers_every_subset_and_encloses_its_foreground():
    lm = np.zeros((60, 90), np.uint8)
    lm[5:25, 5:30] = 3
    lm[30:55, 40:70] = 8
    lm[10:20, 60:85] = 11
    lm[0, :] = 255  # ignore pixels are never foreground
    labels = (3, 8, 11)
    rng = np.random.default_rng(0)
    proposals = np.array([[0, 0, 90, 60], [4, 4, 31, 26], [39, 29, 71, 56]], np.float32)
    scores = np.array([0.3, 0.9, 0.8], np.float32)
    table = image_crops(lm, labels, proposals, scores, 12, 0.95, None, rng)
    assert len(table) == 12 * 7
    assert table.image.dtype == np.int32 and np.all(table.image == 0)
    assert table.subset.dtype == np.uint64 and table.box.dtype == np.float32
    assert sorted(set(table.subset.tolist())) == list(range(1, 8))
    for bits in range(1, 8):
        rows = table.subset == bits
        assert rows.sum() == 12
        classes = [c for j, c in enumerate(labels) if bits >> j & 1]
        fg = np.isin(lm, classes)
        for b in table.box[rows]:
            assert _inside_count(fg, b) >= 0.95 * fg.sum()
    # The class-3 box (score 0.9) leads subset {3}; the whole-image box serves {3, 8, 11}.
    first = table.box[table.subset == 1][0]
    np.testing.assert_array_equal(first, proposals[1])
    assert table.origin[table.subset == 7][0] == ORIGIN_PROPOSAL
    again = image_crops(lm, labels, proposals, scores, 12, 0.95, None, np.random.default_rng(0))
    np.testing.assert_array_equal(again.box, table.box)


def test_image_crops_respects_subset_cap():
    lm = np.zeros((40, 40), np.uint8)
    for j, c in enumerate((1, 2, 4, 5, 6)):
        lm[j * 8 : j * 8 + 6, 5:35] = c
    table = image_crops(
        lm, (1, 2, 4, 5, 6), np.zeros((0, 4)), np.zeros(0), 3, 0.95, 10, np.random.default_rng(0)
    )
    assert len(set(table.subset.tolist())) == 10 and len(table) == 30


def test_image_crops_whole_image_leads_every_subset():
    lm = np.zeros((30, 50), np.uint8)
    lm[2:10, 3:12] = 4
    lm[15:28, 30:45] = 9
    table = image_crops(
        lm, (4, 9), np.zeros((0, 4)), np.zeros(0), 5, 0.95, None, np.random.default_rng(0),
        whole_image=True,
    )  # fmt: skip
    assert len(table) == 3 * 6
    for bits in (1, 2, 3):
        rows = np.flatnonzero(table.subset == bits)
        assert table.origin[rows[0]] == ORIGIN_WHOLE and (table.origin[rows[1:]] == 1).all()
        np.testing.assert_array_equal(table.box[rows[0]], [0, 0, 50, 50])
