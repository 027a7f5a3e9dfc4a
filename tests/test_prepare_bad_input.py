"""Every kind of bad input gets a one-line error naming the file (exit 2), or is
skipped and listed with --skip-bad; nothing already written is lost. An image with no
object is not bad input (tests/test_prepare_negatives.py)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from pipeline.manifest import read_manifest
from tests.conftest import voc2012
from tests.test_prepare import FAST


def invoke(root: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["prepare", str(out), "--root", str(root), *FAST, *extra])


def train_ids(root: Path) -> list[str]:
    return (voc2012(root) / "ImageSets/Segmentation/train.txt").read_text().split()


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("error:")]  # own line
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for n in needles:
        assert n in lines[0], lines[0]


def assert_nothing_half_written(out: Path) -> None:
    assert not list(out.glob(".*.tmp"))
    if (out / "manifest.json").exists():
        listed = {s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
        assert {p.name for p in out.glob("*.h5")} <= listed


def break_image(root: Path, how: str) -> Path:
    """Damage the 4th training image (or its mask) in one of several ways."""
    iid = train_ids(root)[3]
    jpg = voc2012(root) / "JPEGImages" / f"{iid}.jpg"
    png = voc2012(root) / "SegmentationClass" / f"{iid}.png"
    if how == "missing":
        jpg.unlink()
        return jpg
    if how == "corrupt":
        jpg.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10 + b"\xff\xd9")
        return jpg
    if how == "truncated":
        jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
        return jpg
    mask = np.array(Image.open(png))
    if how == "mask-size":
        Image.fromarray(mask[:-5]).save(png)
    elif how == "mask-values":
        mask[:4, :4] = 77
        Image.fromarray(mask).save(png)
    return png


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing", "file not found"),
        ("corrupt", "cannot decode"),
        ("truncated", "truncated"),
        ("mask-size", "differs from its image"),
        ("mask-values", "outside the classes"),
    ],
)
def test_bad_file_stops_with_its_name_or_is_skipped(synth_copy, tmp_path, how, message):
    bad = break_image(synth_copy, how)
    out = tmp_path / "out"
    assert_one_line_error(invoke(synth_copy, out), bad.name, message)
    assert_nothing_half_written(out)
    r = invoke(synth_copy, out, "--skip-bad")
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert [s["file"] for s in m["skipped"]] == [str(bad)] or any(
        s["file"].endswith(bad.name) for s in m["skipped"]
    )
    assert bad.stem not in (out / "splits" / "strong.txt").read_text()
    # The split files and counts say what the shards hold, the skipped file is named.
    for kind in ("weak", "strong", "val"):
        held = sum(s["images"] for s in m["shards"] if s["kind"] == kind)
        listed = (out / "splits" / f"{kind}.txt").read_text().split()
        assert m["splits"][kind] == held == len(listed) and bad.stem not in listed, kind
    assert f"skipped: {bad}" in r.output


def test_masks_numbered_past_the_classes_are_named_not_an_empty_strong_set(synth_copy, tmp_path):
    """Masks in another numbering (VOC's horse = 13 with a 1-class list) are the likely
    mistake; every object pixel renumbered must give the mask-values error, not 'no
    strong image'."""
    masks = sorted((voc2012(synth_copy) / "SegmentationClass").glob("*.png"))
    for png in masks:
        mask = np.array(Image.open(png))
        mask[(mask != 0) & (mask != 255)] = 13 + 10  # past every class of the synthetic set
        Image.fromarray(mask).save(png)
    r = invoke(synth_copy, tmp_path / "out")
    assert_one_line_error(r, ".png", "outside the classes")


def test_grayscale_and_cmyk_images_are_converted(synth_copy, tmp_path):
    ids = train_ids(synth_copy)
    jpgs = [voc2012(synth_copy) / "JPEGImages" / f"{i}.jpg" for i in ids[:2]]
    Image.open(jpgs[0]).convert("L").save(jpgs[0])
    Image.open(jpgs[1]).convert("CMYK").save(jpgs[1])
    out = tmp_path / "out"
    assert invoke(synth_copy, out).exit_code == 0
    from pipeline.readers import WeakDataset

    ds = WeakDataset(out, size=32, train=False)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_strong_per_class_larger_than_a_class(synth_root, tmp_path):
    r = invoke(synth_root, tmp_path / "o", "--strong-per-class", "500")
    assert_one_line_error(r, "--strong-per-class 500", "only")
    r = invoke(synth_root, tmp_path / "o", "--strong-per-class", "500", "--allow-short")
    assert r.exit_code == 0
    assert read_manifest(tmp_path / "o")["splits"]["strong"] == 30


@pytest.mark.parametrize("bad_id", ["../escape", "/etc/passwd"])
def test_ids_reaching_outside_the_root_are_refused(synth_copy, tmp_path, bad_id):
    lst = voc2012(synth_copy) / "ImageSets/Segmentation/train.txt"
    lst.write_text(lst.read_text() + bad_id + "\n")
    assert_one_line_error(invoke(synth_copy, tmp_path / "o"), "train.txt", bad_id)


def test_missing_directories_and_split_files(synth_copy, tmp_path):
    assert_one_line_error(invoke(tmp_path / "nowhere", tmp_path / "o"), "nowhere")
    (voc2012(synth_copy) / "ImageSets/Segmentation/val.txt").unlink()
    assert_one_line_error(invoke(synth_copy, tmp_path / "o"), "val.txt")


def test_output_that_is_a_file_is_refused(synth_root, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert_one_line_error(invoke(synth_root, target), str(target), "not a directory")


def test_full_disk_keeps_finished_shards(synth_root, tmp_path, monkeypatch):
    import pipeline.build as build

    real = build.write_shard
    calls = {"n": 0}

    def flaky(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(build, "write_shard", flaky)
    out = tmp_path / "out"
    r = invoke(synth_root, out)
    assert_one_line_error(r, "No space left on device")
    assert_nothing_half_written(out)
    kept = json.loads((out / "manifest.json").read_text())["shards"]
    assert len(kept) == 2
    monkeypatch.setattr(build, "write_shard", real)
    assert invoke(synth_root, out).exit_code == 0
    done = {s["file"]: s["sha256"] for s in read_manifest(out)["shards"]}
    assert all(done[s["file"]] == s["sha256"] for s in kept)


def test_cli_reports_unreadable_image_without_traceback(synth_copy, tmp_path):
    iid = train_ids(synth_copy)[0]
    jpg = voc2012(synth_copy) / "JPEGImages" / f"{iid}.jpg"
    jpg.write_bytes(b"")
    assert_one_line_error(invoke(synth_copy, tmp_path / "o"), jpg.name, "empty")


def test_coco_json_that_references_a_missing_file(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 7):
        images.append({"id": i, "file_name": f"im{i}.jpg", "height": 40, "width": 48})
        (tmp_path / "images").mkdir(exist_ok=True)
        cv2.imwrite(
            str(tmp_path / "images" / f"im{i}.jpg"),
            rng.integers(0, 255, (40, 48, 3), dtype=np.uint8),
        )
        cat = 1 + i % 2
        seg = [[5, 5, 30, 5, 30, 30, 5, 30]]
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": cat,
                "segmentation": seg,
                "area": 625.0,
                "iscrowd": 0,
            }
        )
    ann = tmp_path / "instances.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            }
        )
    )
    (tmp_path / "images" / "im3.jpg").unlink()
    args = [
        "prepare",
        str(tmp_path / "out"),
        "--dataset",
        "coco",
        "--root",
        str(tmp_path / "images"),
        "--ann",
        str(ann),
        "--proposals",
        "5",
        "--jobs",
        "1",
        "--strong-per-class",
        "2",
        "--method",
        "random",
    ]
    r = CliRunner().invoke(cli, args)
    assert_one_line_error(r, "im3.jpg", "file not found")
    assert_nothing_half_written(tmp_path / "out")
    r = CliRunner().invoke(cli, [*args, "--skip-bad"])
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "out")
    # one entry per shard it was left out of (it was picked as strong and is weak too)
    assert {Path(s["file"]).name for s in m["skipped"]} == {"im3.jpg"}
    assert all("shard" in s for s in m["skipped"])
    # The split counts follow the shards (6 listed, 1 skipped), and losing a strong image
    # is a warning that names it.
    assert (
        m["splits"]["weak"] == 5
        and sum(s["images"] for s in m["shards"] if s["kind"] == "weak") == 5
    )
    assert any("strong image(s) skipped as bad" in w and "im3.jpg" in w for w in m["warnings"])
