"""`ddn eval` and `ddn predict` end to end, with tiny random-weight run directories."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from ddn.confusion import ConfusionMatrix
from ddn.models import Classifier
from ddn.train.run_files import save_model
from ddn.trained_runs import load_models
from pipeline.build import CropSettings
from pipeline.datasets import load_dataset
from pipeline.errors import UserError
from pipeline.imageio import read_id_list
from pipeline.manifest import read_manifest
from pipeline.prepare import ShardSettings, SplitSettings, prepare
from pipeline.proposals import ProposalConfig
from pipeline.readers import ValDataset
from pipeline.shards import sha256_file
from pipeline.synth import generate, voc_colormap
from tests.test_inference import SIZE, contrasted_segmenter


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def crop_files(voc: Path, image_id: str, height: int, width: int) -> None:
    """Cut an image and its mask to height x width, in place (the mask keeps its palette)."""
    jpg = voc / "JPEGImages" / f"{image_id}.jpg"
    cv2.imwrite(str(jpg), cv2.imread(str(jpg))[:height, :width])
    png = voc / "SegmentationClass" / f"{image_id}.png"
    with Image.open(png) as im:
        im.crop((0, 0, width, height)).save(png)


def make_eval_data(base: Path) -> dict:
    """A prepared set with val images of several sizes (one background-only) and a tiny
    classifier + segmenter run pair for it (picks classes 1 and 3); paths in a dict."""
    voc = generate(base / "data", images=24, classes=3, size=96, seed=2, val_fraction=0.25)
    val_ids = read_id_list(voc / "ImageSets" / "Segmentation" / "val.txt")
    # Val images of different, non-square sizes: predictions must come back at each.
    sizes = {i: (96 - 9 * k, 96 - 13 * (k % 2)) for k, i in enumerate(val_ids)}
    for image_id, (h, w) in sizes.items():
        crop_files(voc, image_id, h, w)
    # A background-only val image (real sets have them): kept in val and scored.
    negative = val_ids[-1]
    png = voc / "SegmentationClass" / f"{negative}.png"
    with Image.open(png) as im:
        mask = np.array(im)
    mask[mask != 255] = 0
    Image.fromarray(mask).save(png)
    prepare(
        load_dataset("voc", root=base / "data"),
        base / "prep",
        SplitSettings(strong_per_class=2),
        CropSettings(ProposalConfig(method="random"), per_subset=2),
        ShardSettings(shard_size=4, strong_shard_size=4, jobs=1),
    )
    classes = read_manifest(base / "prep")["classes"]

    torch.manual_seed(0)
    cls = Classifier(len(classes) - 1, "vgg16_bn", 0.125, input_size=SIZE).eval()
    with torch.no_grad():
        cls.head.score.bias.copy_(torch.tensor([4.0, -4.0, 4.0]))  # picks classes 1 and 3
    seg = contrasted_segmenter(cls)
    cls_run, seg_run = base / "cls", base / "seg"
    cls_run.mkdir()
    seg_run.mkdir()
    # The trainers' model.pt format (ddn.train.run_files.save_model).
    save_model(
        cls_run,
        cls.state_dict(),
        {**cls.config(), "classes": classes[1:], "trainer": "train-cls"},
    )
    cls_info = {"run": str(cls_run), "sha256": sha256_file(cls_run / "model.pt")}
    seg_config = {
        "trainer": "train-seg", "in_channels": cls.encoder.out_channels, "width": 0.125,
        "pool5_size": SIZE // 32, "input_size": SIZE, "classes": classes[1:],
        "cls_run": str(cls_run), "classifier": cls_info,
    }  # fmt: skip
    save_model(seg_run, seg.state_dict(), seg_config)
    return {
        "voc": voc,
        "prep": base / "prep",
        "val_ids": val_ids,
        "negative": negative,
        "sizes": sizes,
        "classes": classes,
        "cls": cls_run,
        "seg": seg_run,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return make_eval_data(tmp_path_factory.mktemp("evaldata"))


def eval_args(data: dict, *extra) -> list:
    return ["eval", "--data", data["prep"], "--cls", data["cls"], "--seg", data["seg"],
            "--workers", "0", "--batch", "4", *extra]  # fmt: skip


def test_eval_json_and_saved_predictions(data, tmp_path):
    out = tmp_path / "pred"
    r = run(*eval_args(data, "--json", "--save-pred", out, "--overlays", "2", "--save-maps"))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert {"miou", "miou_objects", "pixel_acc", "cls_map", "per_class"} <= set(result)
    assert list(result["per_class"]) == data["classes"]
    assert result["images"] == len(data["val_ids"])
    for key in ("miou", "miou_objects", "pixel_acc"):
        assert 0 <= result[key] <= 1

    # One palette PNG per val image, at its original size, named by its id; the metric
    # recomputed from those files and the ground truth is the one reported.
    cm = ConfusionMatrix(len(data["classes"]))
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(data["val_ids"])
    for image_id, (h, w) in data["sizes"].items():
        with Image.open(out / f"{image_id}.png") as im:
            assert im.mode == "P" and im.size == (w, h)
            palette = np.array(im.getpalette()[: 3 * 4]).reshape(4, 3)
            pred = np.array(im)
        assert np.array_equal(palette, voc_colormap()[:4])
        with Image.open(data["voc"] / "SegmentationClass" / f"{image_id}.png") as im:
            cm.update(np.array(im), pred)
    assert set(np.unique(pred).tolist()) <= {0, 1, 3}
    assert cm.miou() == pytest.approx(result["miou"])
    assert cm.pixel_accuracy() == pytest.approx(result["pixel_acc"])

    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 2 and {p.stem for p in overlays} <= set(data["val_ids"])
    with Image.open(overlays[0]) as im:  # three panels side by side
        h, w = data["sizes"][overlays[0].stem]
        assert im.mode == "RGB" and im.size[0] > 3 * w
    maps = out / "maps"
    assert sorted(p.name for p in maps.iterdir()) == sorted(
        f"{p.stem}{ext}" for p in overlays for ext in (".npz", ".png")
    )
    with np.load(maps / f"{overlays[0].stem}.npz") as z:
        assert z["labels"].tolist() == [1, 3]
        assert z["foreground"].shape == (2, h, w) and z["bridge"].shape == (3, h, w)


def test_eval_scores_a_background_only_val_image(data, tmp_path):
    neg = data["negative"]
    item = next(x for x in ValDataset(data["prep"], "val") if x["id"] == neg)
    assert not item["labels"].any() and set(np.unique(item["mask"]).tolist()) <= {0, 255}
    out = tmp_path / "pred"
    r = run(*eval_args(data, "--json", "--save-pred", out, "--overlays", "0"))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["images"] == len(data["val_ids"]) and 0 < result["cls_map"] <= 1

    def confusion(ids: list[str]) -> ConfusionMatrix:
        cm = ConfusionMatrix(len(data["classes"]))
        for image_id in ids:
            gt_png = data["voc"] / "SegmentationClass" / f"{image_id}.png"
            with Image.open(gt_png) as gt, Image.open(out / f"{image_id}.png") as pred:
                cm.update(np.array(gt), np.array(pred))
        return cm

    # The classifier picks classes 1 and 3 on every image: on the negative image they are
    # false positives, and its pixels count (as background) in what eval reports.
    with Image.open(out / f"{neg}.png") as pred:
        assert np.isin(np.array(pred), [1, 3]).any()
    others = [i for i in data["val_ids"] if i != neg]
    assert confusion(data["val_ids"]).pixel_accuracy() == pytest.approx(result["pixel_acc"])
    assert confusion(others).pixel_accuracy() != pytest.approx(result["pixel_acc"])
    assert confusion(data["val_ids"]).miou() == pytest.approx(result["miou"])


def test_eval_text_report(data):
    r = run(*eval_args(data, "--limit", "3"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    for name in data["classes"]:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "3 val images" in r.stdout
    assert "mIoU (4 classes, incl. background)" in r.stdout
    assert "mIoU (3 object classes)" in r.stdout and "classifier mAP" in r.stdout


def test_eval_user_errors(data, tmp_path):
    r = run(*eval_args(data, "--save-maps"))
    assert r.exit_code == 2 and "--save-pred" in r.output
    r = run(*eval_args(data, "--overlays", "2"))  # would be silently dropped otherwise
    assert r.exit_code == 2 and "--overlays needs --save-pred" in r.output
    r = run("eval", "--data", data["prep"], "--cls", data["seg"], "--seg", data["seg"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: {data['seg'] / 'model.pt'}: holds a segmenter model, expected a classifier"
    ]
    r = run("eval", "--data", data["prep"], "--cls", data["cls"], "--seg", tmp_path / "nope")
    assert r.exit_code == 2 and str(tmp_path / "nope") in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_predict_directory_with_a_corrupt_file(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picked = data["val_ids"][:3]
    for image_id in picked:
        (images / f"{image_id}.jpg").write_bytes(
            (data["voc"] / "JPEGImages" / f"{image_id}.jpg").read_bytes()
        )
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    (images / "notes.txt").write_text("not an image: ignored in a directory")
    args = [
        "predict",
        "--cls",
        data["cls"],
        "--seg",
        data["seg"],
        images,
        "--out",
        tmp_path / "out",
    ]

    r = run(*args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.jpg" in lines[0]
    assert not (tmp_path / "out").exists()  # checked before any work

    r = run(*args, "--skip-bad")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [Path(s["file"]).name for s in result["skipped"]] == ["broken.jpg"]
    assert result["classes"] == data["classes"]
    assert [Path(x["file"]).stem for x in result["images"]] == sorted(picked)
    for entry in result["images"]:
        h, w = data["sizes"][Path(entry["file"]).stem]
        with Image.open(tmp_path / "out" / entry["mask"]) as im:
            assert im.mode == "P" and im.size == (w, h)
        assert (tmp_path / "out" / entry["overlay"]).is_file()
        assert [x["class"] for x in entry["labels"]] == [data["classes"][1], data["classes"][3]]
        assert all(x["prob"] > 0.5 for x in entry["labels"])
        assert set(entry["probs"]) == set(data["classes"][1:])
        assert entry["probs"][data["classes"][2]] < 0.5


def test_predict_skip_bad_with_nothing_readable_is_an_error(data, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    r = run("predict", "--cls", data["cls"], "--seg", data["seg"], bad, "--out", tmp_path / "o",
            "--skip-bad")  # fmt: skip
    assert r.exit_code == 2 and "no readable image among 1 (" in r.output
    assert "broken.jpg" in r.output and not (tmp_path / "o").exists()


def test_run_loading_checks(data, tmp_path, capsys):
    models = load_models(data["cls"], data["seg"])
    assert models.classes == data["classes"] and not models.segmenter.training
    assert capsys.readouterr().err == ""

    # Another classifier with the same shape: loads, with a warning naming both files.
    other = tmp_path / "other"
    other.mkdir()
    blob = torch.load(data["cls"] / "model.pt", weights_only=True)
    blob["model"]["head.score.bias"] += 1
    save_model(other, blob["model"], blob["config"])
    load_models(other, data["seg"])
    assert "trained on a different classifier" in capsys.readouterr().err

    del blob["config"]["arch"]
    save_model(other, blob["model"], blob["config"])
    with pytest.raises(UserError, match=r"other/model.pt: config lacks 'arch'"):
        load_models(other, data["seg"])
