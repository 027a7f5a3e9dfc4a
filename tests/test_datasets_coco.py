"""COCO adapter: a tiny instances json with polygons, RLE and crowd regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.datasets import load_dataset
from pipeline.datasets.coco import load_coco
from pipeline.errors import UserError
from pipeline.imageio import paint_coco_mask
from pipeline.records import CocoMask

H, W = 10, 12


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def rle(y0: int, y1: int, x0: int, x1: int, compressed: bool) -> dict:
    m = np.zeros((H, W), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    if not compressed:  # the uncompressed form COCO uses for crowd regions
        flat = m.flatten(order="F")
        counts, cur, run = [], 0, 0
        for v in flat:
            if v != cur:
                counts.append(run)
                cur, run = v, 0
            run += 1
        counts.append(run)
        return {"size": [H, W], "counts": counts}
    r = mask_utils.encode(m)
    return {"size": r["size"], "counts": r["counts"].decode()}


def ann(id_, image_id, cat, seg, area, iscrowd=0) -> dict:
    return {
        "id": id_,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": seg,
        "area": area,
        "iscrowd": iscrowd,
    }


def coco_json(tmp_path: Path, name="train.json", **override) -> Path:
    data = {
        "images": [
            {"id": 3, "file_name": "c.jpg", "height": H, "width": W},
            {"id": 1, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "sub/b.jpg", "height": H, "width": W},
        ],
        # ids out of order on purpose: classes follow category id order.
        "categories": [
            {"id": 18, "name": "dog"},
            {"id": 1, "name": "person"},
            {"id": 5, "name": "airplane"},
        ],
        "annotations": [
            # image 1: small dog listed first, on top of a large person; crowd band on top.
            ann(11, 1, 18, rect(2, 2, 4, 4), 4.0),
            ann(10, 1, 1, rect(0, 0, 8, 8), 64.0),
            ann(12, 1, 1, rle(0, 2, 6, 12, compressed=False), 12.0, iscrowd=1),
            ann(14, 1, 5, [[1, 1, 2, 2]], 0.0),  # degenerate polygon: dropped
            # image 3: equal areas overlapping; the higher annotation id is painted last.
            ann(21, 3, 5, rle(0, 4, 0, 4, compressed=True), 16.0),
            ann(20, 3, 18, rle(2, 6, 2, 6, compressed=True), 16.0),
        ],
    }
    data.update(override)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    for img in data["images"]:
        p = tmp_path / "images" / img["file_name"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not decoded")
    return path


def test_classes_records_and_painting(tmp_path: Path, capsys: pytest.CaptureFixture):
    ds = load_coco(tmp_path / "images", coco_json(tmp_path))
    assert capsys.readouterr().out == ""  # pycocotools' chatter is suppressed
    assert ds.classes == ["background", "person", "airplane", "dog"]
    assert [r.id for r in ds.train] == ["1", "2", "3"] and ds.val == []
    r1, r2, r3 = ds.train
    assert r2.image == (tmp_path / "images" / "sub" / "b.jpg").resolve()
    assert r1.labels == (1, 3)  # crowd and degenerate annotations give no labels
    assert r2.labels == () and r2.mask == CocoMask(H, W, ())
    assert isinstance(r1.mask, CocoMask) and (r1.mask.height, r1.mask.width) == (H, W)
    assert [a[0] for a in r1.mask.anns] == [1, 1, 3]  # by area: 64 person, 12 crowd, 4 dog

    m1 = paint_coco_mask(r1.mask)
    assert m1[5, 5] == 1  # person
    assert m1[3, 3] == 3  # dog painted over the person
    assert m1[1, 7] == 255 and m1[1, 11] == 255  # crowd -> ignore, even over the person
    assert m1[9, 11] == 0

    m3 = paint_coco_mask(r3.mask)
    assert m3[1, 1] == 2 and m3[5, 5] == 3
    assert m3[3, 3] == 2  # tie on area: annotation 21 (airplane) painted after 20
    assert r3.labels == (2, 3)


def test_category_subset_with_voc_names(tmp_path: Path):
    ds = load_dataset(
        "coco",
        root=tmp_path / "images",
        ann=coco_json(tmp_path),
        categories=["dog", "aeroplane"],
    )
    assert ds.classes == ["background", "dog", "aeroplane"]  # order and spelling as given
    r1 = ds.train[0]
    assert r1.labels == (1,)  # the person is not a chosen class
    m1 = paint_coco_mask(r1.mask)
    assert m1[3, 3] == 1 and m1[5, 5] == 0 and m1[1, 7] == 0
    assert ds.train[2].labels == (1, 2)


def test_unknown_category_lists_valid_ones(tmp_path: Path):
    path = coco_json(tmp_path)
    with pytest.raises(
        UserError, match=r"train\.json: no category 'unicorn'; valid: person, airplane, dog$"
    ):
        load_coco(tmp_path / "images", path, categories=["unicorn"])
    with pytest.raises(UserError, match="already chosen"):
        load_coco(tmp_path / "images", path, categories=["airplane", "aeroplane"])


def test_val_split(tmp_path: Path):
    train = coco_json(tmp_path)
    val = coco_json(
        tmp_path, "val.json", images=[{"id": 7, "file_name": "a.jpg", "height": H, "width": W}]
    )
    ds = load_coco(tmp_path / "images", train, val_ann=val)
    assert [r.id for r in ds.val] == ["7"] and ds.info["val"] == 1
    assert ds.val[0].image == (tmp_path / "images" / "a.jpg").resolve()
    other = coco_json(tmp_path, "other.json", categories=[{"id": 1, "name": "person"}])
    with pytest.raises(UserError, match=r"other\.json: its categories differ"):
        load_coco(tmp_path / "images", train, val_ann=other)


def test_malformed_json(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(UserError, match=r"bad\.json: not a readable json file"):
        load_coco(tmp_path, bad)
    with pytest.raises(UserError, match=r"nope\.json: annotation file not found"):
        load_coco(tmp_path, tmp_path / "nope.json")
    no_anns = coco_json(tmp_path, "x.json")
    data = json.loads(no_anns.read_text())
    del data["annotations"]
    no_anns.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"x\.json: missing the 'annotations' list"):
        load_coco(tmp_path, no_anns)
    data["annotations"] = [{"id": 1, "image_id": 1}]
    no_anns.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"x\.json: annotations\[0\] lacks 'category_id'"):
        load_coco(tmp_path, no_anns)


def test_file_name_escaping_root(tmp_path: Path):
    path = coco_json(
        tmp_path, images=[{"id": 1, "file_name": "../../etc/passwd", "height": H, "width": W}]
    )
    with pytest.raises(UserError, match=r"train\.json: id '\.\./\.\./etc/passwd'"):
        load_coco(tmp_path / "images", path)
