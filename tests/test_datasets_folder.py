"""Folder-format adapter: classes.txt, images/, masks/, labels.csv, splits/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.datasets import load_dataset
from pipeline.datasets.folder import load_folder
from pipeline.errors import UserError


def make_folder(root: Path, images=("a.jpg", "b.PNG", "c.jpeg", "d.JPG"), masks=("a", "b")):
    """a, b have masks; c, d are weak-only (labels.csv)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncat\ndog\nhorse\n")
    for name in images:
        (root / "images" / name).write_bytes(b"pixels decoded later")
    for i in masks:
        (root / "masks" / f"{i}.png").write_bytes(b"mask decoded later")
    (root / "images" / "notes.txt").write_text("ignored: not an image")
    (root / "labels.csv").write_text("c,dog;cat\nd,horse\n")
    return root


def test_layout_without_splits(tmp_path: Path):
    root = make_folder(tmp_path / "ds")
    ds = load_dataset("folder", root=root)
    assert ds.name == "folder" and ds.classes == ["background", "cat", "dog", "horse"]
    assert [r.id for r in ds.train] == ["a", "b", "c", "d"] and ds.val == []
    a, b, c, d = ds.train
    assert a.image == root / "images" / "a.jpg" and a.mask == root / "masks" / "a.png"
    assert a.labels is None  # derived from the mask later
    assert b.image.name == "b.PNG"
    assert c.mask is None and c.labels == (1, 2)
    assert d.mask is None and d.labels == (3,)
    assert ds.info["with_mask"] == 2 and ds.info["weak_only"] == 2
    assert "every image is train" in ds.info["splits"]


def test_labels_csv_header_blank_lines_and_mask_plus_row(tmp_path: Path):
    root = make_folder(tmp_path / "ds")
    (root / "labels.csv").write_text("id,labels\nc,dog\n\nd,\na,horse\n")
    by_id = {r.id: r for r in load_folder(root).train}
    assert by_id["c"].labels == (2,)
    assert by_id["d"].labels == ()  # a weak image with no objects: a negative example
    assert by_id["a"].labels == (3,) and by_id["a"].mask is not None


def test_unknown_class_in_csv_names_file_and_line(tmp_path: Path):
    root = make_folder(tmp_path / "ds")
    (root / "labels.csv").write_text("c,dog\nd,zebra\n")
    with pytest.raises(UserError, match=r"labels\.csv:2: class 'zebra' is not an object class"):
        load_folder(root)
    (root / "labels.csv").write_text("c,dog\ne,cat\n")
    with pytest.raises(UserError, match=r"labels\.csv:2: id 'e' has no image"):
        load_folder(root)


def test_image_without_any_annotation(tmp_path: Path):
    root = make_folder(tmp_path / "ds")
    (root / "labels.csv").write_text("c,dog\n")
    with pytest.raises(UserError, match=r"images/d\.JPG: no annotation"):
        load_folder(root)


def test_duplicate_ids(tmp_path: Path):
    root = make_folder(tmp_path / "ds", images=("a.jpg", "a.png", "b.png", "c.jpg", "d.jpg"))
    with pytest.raises(UserError, match=r"two images share the id 'a' \(a\.jpg and a\.png\)"):
        load_folder(root)


def test_splits(tmp_path: Path):
    root = make_folder(tmp_path / "ds")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("d\na\n# comment\n")
    (root / "splits" / "val.txt").write_text("b\n")
    ds = load_folder(root)
    assert [r.id for r in ds.train] == ["d", "a"] and [r.id for r in ds.val] == ["b"]
    assert ds.info["unused"] == 1
    (root / "splits" / "train.txt").unlink()  # val only: the rest is train
    ds = load_folder(root)
    assert [r.id for r in ds.train] == ["a", "c", "d"]


def test_val_image_without_a_mask_says_val_needs_masks(tmp_path: Path):
    root = make_folder(tmp_path / "ds")
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("b\nc\n")  # c has labels.csv labels only
    with pytest.raises(UserError, match=r"images/c\.jpeg: a val image needs a mask") as e:
        load_folder(root)
    assert "1 val image(s) have none" in str(e.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("../a\n", r"val\.txt: id '\.\./a' reaches outside"),
        ("/etc/passwd\n", r"val\.txt: id '/etc/passwd' is not a plain relative name"),
        ("zz\n", r"val\.txt: id 'zz' has no image"),
        ("b\nb\n", r"val\.txt: id 'b' is listed more than once"),
        ("a\n", r"val\.txt: 1 ids are also in train\.txt"),
    ],
)
def test_bad_split_files(tmp_path: Path, content: str, message: str):
    root = make_folder(tmp_path / "ds")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\n")
    (root / "splits" / "val.txt").write_text(content)
    with pytest.raises(UserError, match=message):
        load_folder(root)


def test_symlinked_images_are_fine(tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "x.jpg").write_bytes(b"elsewhere")
    root = make_folder(tmp_path / "ds")
    os.symlink(store / "x.jpg", root / "images" / "x.jpg")
    (root / "labels.csv").write_text("c,dog\nd,cat\nx,cat\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("x\na\n")
    assert [r.id for r in load_folder(root).train] == ["x", "a"]


@pytest.mark.parametrize(
    "classes, message",
    [
        ("cat\ndog\n", "line 1 must be 'background'"),
        ("background\ncat\n\ndog\n", "line 3 is blank"),
        ("background\ncat\ncat\n", "class 'cat' appears on lines 2 and 3"),
        ("background\n", "needs .background. on line 1 and at least one class"),
    ],
)
def test_bad_classes_txt(tmp_path: Path, classes: str, message: str):
    root = make_folder(tmp_path / "ds")
    (root / "classes.txt").write_text(classes)
    with pytest.raises(UserError, match=r"classes\.txt: " + message):
        load_folder(root)


def test_missing_pieces(tmp_path: Path):
    with pytest.raises(UserError, match="dataset folder not found"):
        load_folder(tmp_path / "none")
    root = make_folder(tmp_path / "ds")
    (root / "classes.txt").unlink()
    with pytest.raises(UserError, match=r"classes\.txt: class list not found"):
        load_folder(root)
