"""VOC 2012 (+ SBD train_aug) adapter: on the real horse photos and on tiny trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from pipeline.datasets import VOC_CLASSES, load_dataset, voc
from pipeline.datasets.voc import load_voc
from pipeline.errors import UserError
from pipeline.imageio import classes_in, load_label_map

HORSES = Path(__file__).parents[1].parent / "shared" / "data" / "voc_horses"


def _png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not decoded by adapters \xff\xd9")


def _lines(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def make_voc(base: Path, train: list[str], val: list[str], jpeg_extra=()) -> Path:
    """base/VOCdevkit/VOC2012 with images + masks (mask value = position + 1) for train/val."""
    root = base / "VOCdevkit" / "VOC2012"
    for n, i in enumerate(train + val):
        _touch(root / "JPEGImages" / f"{i}.jpg")
        _png(root / "SegmentationClass" / f"{i}.png", np.full((3, 4), n + 1))
    for i in jpeg_extra:
        _touch(root / "JPEGImages" / f"{i}.jpg")
    _lines(root / "ImageSets" / "Segmentation" / "train.txt", train)
    _lines(root / "ImageSets" / "Segmentation" / "val.txt", val)
    return root


def make_sbd(base: Path, train: list[str], val: list[str], masks: dict[str, np.ndarray]) -> Path:
    """base/benchmark_RELEASE/dataset with cls/<id>.mat (struct GTcls.Segmentation)."""
    ds = base / "benchmark_RELEASE" / "dataset"
    for i in train + val:
        _touch(ds / "img" / f"{i}.jpg")
        seg = masks.get(i, np.zeros((3, 4), np.uint8))
        (ds / "cls").mkdir(parents=True, exist_ok=True)
        savemat(str(ds / "cls" / f"{i}.mat"), {"GTcls": {"Segmentation": seg}})
    _lines(ds / "train.txt", train)
    _lines(ds / "val.txt", val)
    return ds


@pytest.fixture
def horses() -> Path:
    if not (HORSES / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir():
        pytest.skip(f"real VOC horse photos not present at {HORSES}")
    return HORSES


@pytest.mark.parametrize("level", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_real_horses_from_any_root_level(horses: Path, level: str):
    ds = load_voc(horses / level if level else horses)
    assert ds.name == "voc"
    assert ds.classes == ["background", *VOC_CLASSES]
    assert ds.classes[13] == "horse" and ds.num_classes == 20
    assert (len(ds.train), len(ds.val)) == (277, 50)
    assert ds.info["train_split"] == "VOC train"
    assert not {r.id for r in ds.train} & {r.id for r in ds.val}
    for r in ds.train[:5] + ds.val[:5]:
        assert r.image.is_file() and r.mask.is_file() and r.labels is None
        assert r.image.name == f"{r.id}.jpg" and r.mask.name == f"{r.id}.png"
    assert 13 in classes_in(load_label_map(ds.train[0].mask))


def test_load_dataset_dispatches_voc(horses: Path):
    ds = load_dataset("voc", root=horses, sbd_root=None)
    assert len(ds.train) == 277


def test_unknown_adapter_is_user_error():
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", root=".")


def test_classes_txt_of_synthetic_data_wins(tmp_path: Path):
    root = make_voc(tmp_path, ["a"], ["b"])
    (root / "classes.txt").write_text("background\ncircle\nsquare\n")
    ds = load_voc(tmp_path / "VOCdevkit")
    assert ds.classes == ["background", "circle", "square"]
    assert [r.id for r in ds.train] == ["a"] and [r.id for r in ds.val] == ["b"]


def test_train_aug_union_minus_val(tmp_path: Path):
    voc_root = make_voc(tmp_path / "voc", ["a", "b"], ["c", "d"], jpeg_extra=["e"])
    seg_e = np.array([[0, 15, 15, 0], [0, 15, 255, 0], [0, 0, 0, 0]], np.uint8)
    sbd = make_sbd(tmp_path / "sbd", ["e", "c", "b"], ["f", "d"], {"e": seg_e})
    ds = load_voc(tmp_path / "voc", sbd_root=tmp_path / "sbd")

    assert [r.id for r in ds.train] == ["a", "b", "e", "f"]  # c, d are VOC val
    assert [r.id for r in ds.val] == ["c", "d"]
    by_id = {r.id: r for r in ds.train}
    # VOC's own PNG wins where it exists; SBD's .mat fills the rest.
    assert by_id["b"].mask == voc_root / "SegmentationClass" / "b.png"
    assert by_id["e"].mask == sbd / "cls" / "e.mat"
    assert by_id["e"].image == voc_root / "JPEGImages" / "e.jpg"
    assert by_id["f"].image == sbd / "img" / "f.jpg"
    # The .mat written by scipy's savemat round-trips through the label loader.
    np.testing.assert_array_equal(load_label_map(by_id["e"].mask), seg_e)
    assert ds.info["train"] == 4 and ds.info["train_masks_from_sbd"] == 2
    assert ds.info["sbd_train"] == 3 and ds.info["sbd_val"] == 2


@pytest.mark.parametrize("level", ["", "benchmark_RELEASE", "benchmark_RELEASE/dataset"])
def test_sbd_root_levels(tmp_path: Path, level: str):
    make_voc(tmp_path / "voc", ["a"], ["b"])
    make_sbd(tmp_path / "sbd", ["x"], ["b"], {})
    sbd_root = tmp_path / "sbd" / level if level else tmp_path / "sbd"
    ds = load_voc(tmp_path / "voc", sbd_root=sbd_root)
    assert [r.id for r in ds.train] == ["a", "x"]


def test_official_count_is_asserted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    make_voc(tmp_path / "voc", ["a", "b"], ["c"])
    make_sbd(tmp_path / "sbd", ["b", "e"], ["c"], {})
    counts = {"voc_train": 2, "voc_val": 1, "sbd_train": 2, "sbd_val": 1}
    monkeypatch.setattr(voc, "OFFICIAL_COUNTS", counts)
    monkeypatch.setattr(voc, "TRAIN_AUG_COUNT", 3)  # a, b, e
    assert len(load_voc(tmp_path / "voc", tmp_path / "sbd").train) == 3
    monkeypatch.setattr(voc, "TRAIN_AUG_COUNT", 4)
    with pytest.raises(UserError, match="train_aug has 3 images, expected 4"):
        load_voc(tmp_path / "voc", tmp_path / "sbd")


@pytest.mark.parametrize("bad_id", ["../escape", "/etc/passwd", "a/../../x"])
def test_unsafe_id_names_the_list_file(tmp_path: Path, bad_id: str):
    root = make_voc(tmp_path, ["a"], ["b"])
    _lines(root / "ImageSets" / "Segmentation" / "train.txt", ["a", bad_id])
    with pytest.raises(UserError, match=r"train\.txt: id") as e:
        load_voc(tmp_path)
    assert "\n" not in str(e.value)


def test_unsafe_id_in_sbd_list(tmp_path: Path):
    make_voc(tmp_path / "voc", ["a"], ["b"])
    sbd = make_sbd(tmp_path / "sbd", ["x"], ["y"], {})
    _lines(sbd / "val.txt", ["../../y"])
    with pytest.raises(UserError, match=r"dataset/val\.txt: id"):
        load_voc(tmp_path / "voc", tmp_path / "sbd")


def test_missing_pieces_are_one_line_errors(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_voc(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no VOC2012 found"):
        load_voc(tmp_path)
    root = make_voc(tmp_path, ["a"], ["b"])
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(UserError, match=r"val\.txt: split/list file not found"):
        load_voc(tmp_path)
    _lines(root / "ImageSets" / "Segmentation" / "val.txt", ["b"])
    with pytest.raises(UserError, match="no SBD dataset found"):
        load_voc(tmp_path, sbd_root=tmp_path)
    for p in (root / "SegmentationClass").iterdir():
        p.unlink()
    (root / "SegmentationClass").rmdir()
    with pytest.raises(UserError, match="SegmentationClass"):
        load_voc(tmp_path)


def test_bad_classes_txt(tmp_path: Path):
    root = make_voc(tmp_path, ["a"], ["b"])
    (root / "classes.txt").write_text("circle\nsquare\n")
    with pytest.raises(UserError, match=r"classes\.txt: line 1 must be 'background'"):
        load_voc(tmp_path)
