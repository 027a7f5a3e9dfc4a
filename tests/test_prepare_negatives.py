"""Background-only images (no object) are data: a negative (all-zero labels row) in the
weak set, kept and scored in val, never strong; `--negatives drop` leaves them out. On
each adapter: VOC (PNG and SBD .mat), folder (mask or empty labels.csv row) and COCO."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from pipeline.errors import UserError
from pipeline.inspect import format_summary, summarize
from pipeline.manifest import read_manifest, shard_paths, write_manifest
from pipeline.splits import read_strong_list, select_strong
from tests.conftest import voc2012
from tests.test_datasets_voc import make_sbd
from tests.test_prepare import FAST
from tests.test_prepare_bad_input import assert_one_line_error, train_ids

FINAL = re.compile(r"prepared .*: (\d+) weak.*, (\d+) strong \(\d+ crops\), (\d+) val images")


def prepare(out: Path, *args: str):
    return CliRunner().invoke(cli, ["prepare", str(out), *FAST, *args])


def make_negative(png: Path) -> None:
    """Every object pixel becomes background; ignore (255) stays."""
    mask = np.array(Image.open(png))
    mask[mask != 255] = 0
    Image.fromarray(mask).save(png)


def rows(out: Path, kind: str) -> dict[str, list[int]]:
    """Image id -> labels row, over the shards of one kind."""
    found = {}
    for p in shard_paths(out, read_manifest(out), kind):
        with h5py.File(p) as f:
            for image_id, row in zip(f["image_ids"].asstr()[()], f["labels"][()], strict=True):
                found[image_id] = row.tolist()
    return found


def split_ids(out: Path, kind: str) -> list[str]:
    return (out / "splits" / f"{kind}.txt").read_text().split()


def check_counts(out: Path, output: str) -> dict:
    """prepare's final line, the manifest, the split files, the shards and `ddn inspect`
    all give the same counts; returns the inspect summary."""
    m = read_manifest(out)
    counts = map(int, FINAL.search(output).groups())
    printed = dict(zip(("weak", "strong", "val"), counts, strict=True))
    inspected = json.loads(CliRunner().invoke(cli, ["inspect", str(out), "--json"]).output)
    for kind in ("weak", "strong", "val"):
        held = rows(out, kind)
        assert printed[kind] == m["splits"][kind] == len(held) == len(split_ids(out, kind))
        assert inspected[f"{kind}_images"] == len(held), kind
        zero = sum(1 for r in held.values() if not any(r))
        assert sum(s["negatives"] for s in m["shards"] if s["kind"] == kind) == zero, kind
        if kind != "strong":
            assert inspected[f"{kind}_negatives"] == zero, kind
    return inspected


# ----------------------------------------------------------------- VOC (PNG masks)


@pytest.fixture
def voc_negatives(synth_copy) -> tuple[Path, list[str], str]:
    """The synthetic set with two training images and one val image background only."""
    voc = voc2012(synth_copy)
    neg_train = train_ids(synth_copy)[:2]
    neg_val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    for image_id in [*neg_train, neg_val]:
        make_negative(voc / "SegmentationClass" / f"{image_id}.png")
    return synth_copy, neg_train, neg_val


def test_voc_background_only_images_are_weak_and_val_negatives(voc_negatives, tmp_path):
    root, neg_train, neg_val = voc_negatives
    out = tmp_path / "out"
    # --skip-bad: "no object" is no longer a reason to skip an image.
    r = prepare(out, "--root", str(root), "--skip-bad")
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert m["skipped"] == [] and m["negatives"] == {"rule": "keep"}
    weak, val = rows(out, "weak"), rows(out, "val")
    assert len(weak) == 30 and len(val) == 10
    assert [i for i, r in weak.items() if not any(r)] == neg_train
    assert [i for i, r in val.items() if not any(r)] == [neg_val]
    assert not set(neg_train) & set(split_ids(out, "strong"))
    assert "30 weak (2 negatives)" in r.output and "10 val images (1 negative)" in r.output
    s = check_counts(out, r.output)
    assert (s["weak_negatives"], s["val_negatives"]) == (2, 1)
    text = CliRunner().invoke(cli, ["inspect", str(out)]).output
    assert re.search(r"weak images +30  \(2 negatives: no object\)", text), text
    assert re.search(r"val images +10  \(1 negative: no object\)", text), text

    # A manifest written before entries recorded negatives: inspect counts the shards.
    m = json.loads((out / "manifest.json").read_text())
    for entry in m["shards"]:
        del entry["negatives"]
    write_manifest(out, m)
    old = summarize(out)
    assert (old["weak_negatives"], old["val_negatives"]) == (2, 1)
    assert "(2 negatives: no object)" in format_summary(old)


def test_voc_full_rule_and_strong_list_leave_out_background_only(voc_negatives, tmp_path):
    root, neg_train, _ = voc_negatives
    out = tmp_path / "full"
    r = prepare(out, "--root", str(root), "--strong-per-class", "full")
    assert r.exit_code == 0, r.output
    # Every other training image has a mask with an object: all of them are strong.
    assert split_ids(out, "strong") == [i for i in train_ids(root) if i not in neg_train]
    assert read_manifest(out)["splits"]["strong_selection"]["images"] == 28

    listed = tmp_path / "list.txt"
    listed.write_text(f"{train_ids(root)[5]}\n{neg_train[1]}\n")
    r = prepare(tmp_path / "lst", "--root", str(root), "--strong-list", str(listed))
    assert_one_line_error(r, "list.txt", repr(neg_train[1]), "has no object", "cannot be a strong")


def test_voc_negatives_drop(voc_negatives, tmp_path):
    root, neg_train, neg_val = voc_negatives
    out = tmp_path / "out"
    assert prepare(out, "--root", str(root)).exit_code == 0
    # The rule changes the output, so it is part of the configuration.
    r = prepare(out, "--root", str(root), "--negatives", "drop")
    assert_one_line_error(r, "different configuration", "split.negatives")
    r = prepare(out, "--root", str(root), "--negatives", "drop", "--overwrite")
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert m["negatives"] == {"rule": "drop", "dropped": {"train": 2, "val": 1}}
    assert "left out 2 train and 1 val background-only images" in r.output
    weak, val = rows(out, "weak"), rows(out, "val")
    assert len(weak) == 28 and len(val) == 9 and all(map(any, [*weak.values(), *val.values()]))
    assert not {*neg_train, neg_val} & {*weak, *val}
    s = check_counts(out, r.output)
    assert s["negatives_dropped"] == {"train": 2, "val": 1}
    assert "2 train and 1 val images with no object left out" in format_summary(s)


def test_sbd_mat_without_object_is_a_negative(synth_copy, tmp_path):
    voc = voc2012(synth_copy)
    donor = voc / "JPEGImages" / f"{train_ids(synth_copy)[0]}.jpg"
    h, w = cv2.imread(str(donor)).shape[:2]
    sbd = make_sbd(tmp_path / "sbd", ["sbd_neg"], [], {"sbd_neg": np.zeros((h, w), np.uint8)})
    shutil.copy(donor, sbd / "img" / "sbd_neg.jpg")
    out = tmp_path / "out"
    r = prepare(out, "--root", str(synth_copy), "--sbd-root", str(tmp_path / "sbd"))
    assert r.exit_code == 0, r.output
    assert rows(out, "weak")["sbd_neg"] == [0, 0, 0]
    assert "sbd_neg" not in split_ids(out, "strong")
    assert "31 weak (1 negative)" in r.output


# ----------------------------------------------------------------- folder


def make_folder(src: Path, root: Path) -> tuple[set[str], str]:
    """A folder-format copy of the synthetic set; returns the background-only training
    ids (one mask, a labels.csv row 'id,' and a row 'id') and the background-only val id."""
    voc = voc2012(src)
    train, val = train_ids(src), (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    shutil.copy(voc / "classes.txt", root / "classes.txt")
    for image_id in train + val:
        shutil.copy(voc / "JPEGImages" / f"{image_id}.jpg", root / "images")
        shutil.copy(voc / "SegmentationClass" / f"{image_id}.png", root / "masks")
    weak_only = train[:2]  # labels.csv rows without a label, no mask
    for image_id in weak_only:
        (root / "masks" / f"{image_id}.png").unlink()
    (root / "labels.csv").write_text(f"{weak_only[0]},\n{weak_only[1]}\n")
    make_negative(root / "masks" / f"{train[2]}.png")
    make_negative(root / "masks" / f"{val[0]}.png")
    (root / "splits" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(val) + "\n")
    return {*weak_only, train[2]}, val[0]


def test_folder_empty_row_and_background_mask_are_negatives(synth_root, tmp_path):
    root = tmp_path / "ds"
    negatives, neg_val = make_folder(synth_root, root)
    out = tmp_path / "keep"
    r = prepare(out, "--dataset", "folder", "--root", str(root), "--strong-per-class", "full")
    assert r.exit_code == 0, r.output
    weak = rows(out, "weak")
    assert {i for i, r in weak.items() if not any(r)} == negatives and len(weak) == 30
    assert [i for i, r in rows(out, "val").items() if not any(r)] == [neg_val]
    strong = split_ids(out, "strong")
    assert len(strong) == 27 and not negatives & set(strong)
    check_counts(out, r.output)

    # drop: the per-class rule; the val masks are scanned to find the val negative.
    out = tmp_path / "drop"
    r = prepare(out, "--dataset", "folder", "--root", str(root), "--negatives", "drop")
    assert r.exit_code == 0, r.output
    assert read_manifest(out)["negatives"]["dropped"] == {"train": 3, "val": 1}
    assert not negatives & set(rows(out, "weak")) and neg_val not in rows(out, "val")
    s = check_counts(out, r.output)
    assert (s["weak_images"], s["weak_negatives"], s["val_images"]) == (27, 0, 9)


# ----------------------------------------------------------------- COCO


def rect_ann(id_: int, image_id: int, cat: int, iscrowd: int = 0) -> dict:
    return {
        "id": id_,
        "image_id": image_id,
        "category_id": cat,
        "iscrowd": iscrowd,
        "segmentation": [[5, 5, 30, 5, 30, 30, 5, 30]],
        "area": 625.0,
    }


def coco_split(root: Path, name: str, image_ids: list[int], anns: list[dict]) -> Path:
    """Real JPEGs for ``image_ids`` under root/images and an instances json."""
    rng = np.random.default_rng(len(image_ids))
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in image_ids:
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), pixels)
    ann = root / name
    ann.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": f"im{i}.jpg", "height": 40, "width": 48}
                    for i in image_ids
                ],
                "annotations": anns,
                "categories": [
                    {"id": 1, "name": "cat"},
                    {"id": 2, "name": "dog"},
                    {"id": 3, "name": "person"},
                ],
            }
        )
    )
    return ann


@pytest.fixture
def coco(tmp_path) -> list[str]:
    """Train 1-5 hold a cat or a dog; 6 only a person (not kept), 7 no annotation, 8 only a
    crowd of cats. Val 101 a cat, 102 a dog, 103 only a crowd."""
    anns = [rect_ann(i, i, 1 + i % 2) for i in range(1, 6)]
    anns += [rect_ann(6, 6, 3), rect_ann(8, 8, 1, iscrowd=1)]
    train = coco_split(tmp_path, "train.json", list(range(1, 9)), anns)
    val_anns = [rect_ann(101, 101, 1), rect_ann(102, 102, 2), rect_ann(103, 103, 1, iscrowd=1)]
    val = coco_split(tmp_path, "val.json", [101, 102, 103], val_anns)
    return [
        "--dataset",
        "coco",
        "--root",
        str(tmp_path / "images"),
        "--ann",
        str(train),
        "--val-ann",
        str(val),
        "--categories",
        "cat,dog",
        "--method",
        "random",
    ]


def test_coco_keeps_background_only_images_by_default(coco, tmp_path):
    out = tmp_path / "keep"
    r = prepare(out, *coco, "--strong-per-class", "full")
    assert r.exit_code == 0, r.output
    # Every count printed is the count in the shards (it once said 8 where they held 5).
    assert "8 weak (3 negatives)" in r.output and "3 val images (1 negative)" in r.output
    weak, val = rows(out, "weak"), rows(out, "val")
    assert {i for i, r in weak.items() if not any(r)} == {"6", "7", "8"}
    assert val == {"101": [1, 0], "102": [0, 1], "103": [0, 0]}
    assert split_ids(out, "strong") == ["1", "2", "3", "4", "5"]
    s = check_counts(out, r.output)
    assert (s["weak_images"], s["weak_negatives"], s["val_negatives"]) == (8, 3, 1)
    from pipeline.readers import ValDataset

    crowd = next(item for item in ValDataset(out, "val") if item["id"] == "103")
    assert set(np.unique(crowd["mask"]).tolist()) == {0, 255}  # scored: ground and ignore

    listed = tmp_path / "strong.txt"
    listed.write_text("1\n7\n")
    r = prepare(tmp_path / "lst", *coco, "--strong-list", str(listed))
    assert_one_line_error(r, "strong.txt", "'7'", "has no object")


def test_coco_negatives_drop(coco, tmp_path):
    out = tmp_path / "drop"
    r = prepare(out, *coco, "--negatives", "drop", "--strong-per-class", "2")
    assert r.exit_code == 0, r.output
    assert read_manifest(out)["negatives"]["dropped"] == {"train": 3, "val": 1}
    assert sorted(rows(out, "weak")) == ["1", "2", "3", "4", "5"]
    assert sorted(rows(out, "val")) == ["101", "102"]
    assert "5 weak," in r.output and "2 val images" in r.output and "negatives)" not in r.output
    check_counts(out, r.output)


# ----------------------------------------------------------------- the strong rules


def test_strong_rules_never_pick_a_background_only_image():
    mask_classes = {"a": (1,), "b": (), "c": (1, 2), "d": ()}
    ids = ["a", "b", "c", "d", "weak_only"]
    classes = ["background", "cat", "dog"]
    assert select_strong(ids, mask_classes, classes, None, 0) == (
        ["a", "c"],
        {"rule": "full", "images": 2},
    )
    for seed in range(5):
        picked, _ = select_strong(ids, mask_classes, classes, 5, seed, allow_short=True)
        assert picked == ["a", "c"]


def test_strong_list_names_why_an_image_cannot_be_strong(tmp_path):
    mask_classes = {"a": (1,), "b": ()}
    lst = tmp_path / "strong.txt"
    lst.write_text("a\n")
    assert read_strong_list(lst, ["a", "b", "w"], mask_classes) == ["a"]
    lst.write_text("a\nb\n")
    with pytest.raises(UserError, match=r"strong\.txt: id 'b' has no object .*cannot be"):
        read_strong_list(lst, ["a", "b", "w"], mask_classes)
    lst.write_text("w\n")
    with pytest.raises(UserError, match=r"id 'w' has no mask"):
        read_strong_list(lst, ["a", "b", "w"], mask_classes)
