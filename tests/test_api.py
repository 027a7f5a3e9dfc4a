"""The public API at the package root (`ddn.generate_crops`, `warp_crop`, `prepare`, the
readers, `load`, `evaluate`, `UserError`): each gives what the matching command gives."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import click
import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

import ddn
import pipeline.readers
from cli.eval import command as eval_command
from cli.predict import command as predict_command
from cli.prepare import command as prepare_command
from ddn.evaluation import PredictionsNotSaved
from pipeline.errors import UserError
from pipeline.imageio import decode_image, decode_label_png
from pipeline.shards import subset_classes
from tests.test_eval_predict import eval_args, make_eval_data, run
from tests.trainutil import make_deconvnet_run

ROOT = Path(__file__).resolve().parents[1]
# Not the defaults, so that each reaches the crops: a capped, sampled subset list, few
# proposals, margin boxes, another seed.
CROPS = dict(method="edgebox", proposals=6, max_subsets=4, seed=3, random_boxes="margin")


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "prep"
    ddn.prepare(out, dataset="voc", root=synth_root, strong_per_class=3, jobs=1, **CROPS)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Val images of several sizes and a classifier + segmenter pair picking classes 1, 3."""
    return make_eval_data(tmp_path_factory.mktemp("apieval"))


def strong_images(prepared: Path):
    """(id, RGB image, mask, the shard's crop table rows for it) of every strong image."""
    for shard in sorted(prepared.glob("strong-*.h5")):
        with h5py.File(shard) as f:
            crop_image = f["crop_image"][()]
            for row in range(len(f["image_ids"])):
                rows = crop_image == row
                table = {k: f[k][()][rows] for k in ("crop_box", "crop_subset", "crop_origin")}
                labels = f["labels"][row]
                table["subsets"] = [tuple(subset_classes(labels, b)) for b in table["crop_subset"]]
                yield (
                    f["image_ids"][row].decode(),
                    decode_image(f["images"][row].tobytes()),
                    decode_label_png(f["masks"][row]),
                    table,
                )


def test_import_is_lazy_and_inference_imports_no_training_code():
    code = (
        "import sys, ddn\n"
        "assert 'torch' not in sys.modules and ddn.__version__\n"
        "ddn.generate_crops, ddn.warp_crop, ddn.prepare, ddn.UserError\n"
        "assert 'torch' not in sys.modules, 'the crop API needs no torch'\n"
        "import ddn.inference, ddn.trained_runs, ddn.evaluation\n"
        "ddn.load, ddn.evaluate, ddn.CropDataset\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['ddn', 'train']))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert {"generate_crops", "load", "evaluate", "UserError"} <= set(dir(ddn))
    assert ddn.UserError is UserError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ddn.nope  # noqa: B018


def test_generate_crops_gives_the_boxes_prepare_wrote(prepared):
    seen = 0
    for image_id, image, mask, table in strong_images(prepared):
        crops = ddn.generate_crops(image, mask, image_id=image_id, **CROPS)
        assert np.array_equal(crops.boxes, table["crop_box"]), image_id
        assert crops.subsets == table["subsets"]
        assert list(crops.origin) == [ddn.data.ORIGINS[o] for o in table["crop_origin"]]
        assert crops.classes == tuple(sorted({c for s in crops.subsets for c in s}))
        seen += len(crops)
    assert seen == sum(s["crops"] for s in json.loads((prepared / "manifest.json").read_text())
                       ["shards"])  # fmt: skip
    # Another id draws other random boxes: the id is what ties the result to prepare's.
    other = ddn.generate_crops(image, mask, image_id="another", **CROPS)
    assert not np.array_equal(other.boxes, crops.boxes)


def test_the_command_with_the_same_options_resumes_what_prepare_made(prepared, synth_root):
    # The same settings give the same config hash: an identical directory, not a refusal.
    args = ["prepare", str(prepared), "--dataset", "voc", "--root", str(synth_root),
            "--strong-per-class", "3", "--jobs", "1", "--method", "edgebox", "--proposals",
            "6", "--max-subsets", "4", "--seed", "3", "--random-boxes", "margin"]  # fmt: skip
    before = (prepared / "manifest.json").read_text()
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert (
        json.loads(before)["config_hash"]
        == json.loads((prepared / "manifest.json").read_text())["config_hash"]
    )
    # --scales-from at its default stays out of the config, so that directories prepared
    # before it existed keep their hash; another value is another configuration.
    assert "scales_from" not in json.loads(before)["config"]["crops"]
    args[args.index("margin")] = "scales"
    r = run(*args, "--scales-from", "0.5")
    assert r.exit_code != 0 and "crops.scales_from" in r.output, r.output
    assert (prepared / "manifest.json").read_text() == before


def test_generate_crops_refuses_bad_input():
    image = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 2
    assert len(ddn.generate_crops(image, np.zeros_like(mask), method="random")) == 0
    assert ddn.generate_crops(image, mask, method="random").subsets[0] == (2,)
    cases = [
        ((image.astype(np.float32), mask), {}, "image: expected an RGB uint8"),
        ((image[..., 0], mask), {}, r"grayscale"),
        ((np.dstack([image, image[..., :1]]), mask), {}, r"RGBA"),
        ((image, mask[:10]), {}, "mask: size 30x10 differs from the image's 30x20"),
        ((image, mask.astype(np.int32)), {}, "mask: expected a uint8"),
        ((image, mask), {"enclose": 0}, "--enclose"),
        ((image, mask), {"scales_from": 1.5}, r"--scales-from: must be in \[0, 1\]"),
        ((image, mask), {"random_boxes": "margin", "scales_from": 0.5}, "scales only"),
        ((image, mask), {"method": "magic"}, "unknown proposal method"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ddn.UserError, match=message):
            ddn.generate_crops(*args, **kw)


def _item(ds, index: int):
    shard, row = ds.shards.locate(index)
    cols = ds.shards.columns(shard)
    image_row = int(cols["crop_image"][row])
    subset = subset_classes(cols["labels"][image_row], int(cols["crop_subset"][row]))
    with h5py.File(ds.shards.files[shard]) as f:
        image = decode_image(f["images"][image_row].tobytes())
        mask = decode_label_png(f["masks"][image_row])
    return image, mask, cols["crop_box"][row], subset


def test_warp_crop_is_the_example_the_readers_cut(prepared):
    # Without the readers' random window and flip: the same example, bit for bit.
    plain = ddn.CropDataset(prepared, warp_size=48, crop_size=48, flip=False)
    # With them (the readers' defaults, 320 of 350): the window of the warp; the readers
    # sample it directly, which rounds a few pixels in 10^5 differently by one grey level.
    augmented = ddn.CropDataset(prepared, seed=1)
    augmented.set_epoch(3)
    flips = 0
    for i in range(0, len(plain), max(1, len(plain) // 12)):
        image, mask, box, subset = _item(plain, i)
        crop, target = ddn.warp_crop(image, mask, box, subset, size=48)
        item = plain[i]
        assert np.array_equal(item["image"].numpy().transpose(1, 2, 0), crop)
        assert np.array_equal(item["target"].numpy(), target)
        assert set(np.unique(target)) <= {0, 1, 255}

        crop, target = ddn.warp_crop(image, mask, box, subset, size=350)
        top, left, flip = augmented.crop_params(i)
        crop, target = (a[top : top + 320, left : left + 320] for a in (crop, target))
        if flip:
            crop, target = crop[:, ::-1], target[:, ::-1]
            flips += 1
        item = augmented[i]
        assert np.array_equal(item["target"].numpy(), target)
        diff = np.abs(item["image"].numpy().transpose(1, 2, 0).astype(int) - crop)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert flips, "some example should be flipped"


def test_warp_crop_refuses_bad_input():
    image, mask = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8)
    for box, subset, message in [
        ((5, 5, 5, 10), [1], "box: expected x0, y0, x1, y1 with x1 > x0"),
        ((0, 0, 1), [1], "box"),
        ((0, 0, 10, 10), [], "subset: expected one or more class ids"),
        ((0, 0, 10, 10), [255], "subset"),
    ]:
        with pytest.raises(ddn.UserError, match=message):
            ddn.warp_crop(image, mask, box, subset)
    with pytest.raises(ddn.UserError, match="size: must be at least 1"):
        ddn.warp_crop(image, mask, (0, 0, 10, 10), [1], size=0)


def test_readers_are_the_trainers_and_change_with_the_epoch(prepared):
    assert ddn.CropDataset is pipeline.readers.CropDataset
    assert ddn.WeakDataset is pipeline.readers.WeakDataset
    assert ddn.ValDataset is pipeline.readers.ValDataset
    crops = ddn.CropDataset(prepared, warp_size=56, crop_size=48)
    first = [crops.crop_params(i) for i in range(len(crops))]
    assert [crops.crop_params(i) for i in range(len(crops))] == first  # same epoch, same
    crops.set_epoch(1)
    assert [crops.crop_params(i) for i in range(len(crops))] != first


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_load_segments_as_predict_does(data, tmp_path):
    files = [data["voc"] / "JPEGImages" / f"{i}.jpg" for i in data["val_ids"][:2]]
    r = run("predict", "--cls", data["cls"], "--seg", data["seg"], *files, "--out", tmp_path,
            "--device", "cpu")  # fmt: skip
    assert r.exit_code == 0, r.output
    records = json.loads((tmp_path / "predictions.json").read_text())["images"]

    model = ddn.load(data["cls"], data["seg"], device="cpu")
    assert model.class_names == data["classes"] and not model.baseline
    images = [_rgb(path) for path in files]
    # predict segments its files in one batch: the same batch gives the same labels.
    batch = model.segment_batch(images)
    for path, image, result, record in zip(files, images, batch, records, strict=True):
        with Image.open(tmp_path / f"{path.stem}.png") as im:
            assert np.array_equal(result.labels, np.array(im))
        assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.uint8
        assert list(result.classes) == [x["index"] for x in record["labels"]]
        assert list(result.names) == [x["class"] for x in record["labels"]]
        assert set(result.classes) <= {1, 3}
        for k, name in zip(result.classes, result.names, strict=True):
            assert result.probabilities[k - 1] == pytest.approx(record["probs"][name], abs=1e-5)
        # Alone, up to float rounding in the batched convolutions (tests/test_inference.py).
        one = model.segment(image, maps=True)
        assert one.classes == result.classes and (one.labels == result.labels).mean() > 0.999
        assert one.foreground.shape == (len(one.classes), *image.shape[:2])
        assert one.background.shape == image.shape[:2]
        assert model.segment(image).foreground is None
    assert model.segment(images[0], threshold=1.0).classes == ()  # nothing above 1


def test_known_classes_replace_the_classifiers_pick(data):
    model = ddn.load(data["cls"], data["seg"], device="cpu")  # it picks classes 1 and 3
    image = _rgb(data["voc"] / "JPEGImages" / f"{data['val_ids'][0]}.jpg")
    picked = model.segment(image)
    second = data["classes"][2]
    given = model.segment(image, classes=[second], threshold=1.0)  # by name
    assert given.classes == (2,) and given.names == (second,)
    assert set(np.unique(given.labels).tolist()) <= {0, 2} and (given.labels == 2).any()
    assert np.array_equal(given.probabilities, picked.probabilities)
    same = model.segment_batch([image, image], classes=[picked.classes, list(picked.names)])
    for result in same:  # the classifier's own pick, as values or names: its result (up to
        # float rounding in the batched convolutions, as above)
        assert result.classes == picked.classes and (result.labels == picked.labels).mean() > 0.999
    for classes, message in [
        (["zebra"], "classes: unknown class 'zebra'; this run has"),
        ([7], "labels: class 7 is not in 1..3"),
        ("aeroplane", "classes: a list of classes per image, got the string"),
    ]:
        with pytest.raises(ddn.UserError, match=message):
            model.segment(image, classes=classes)


def test_segment_and_load_refuse_mistakes(data, tmp_path):
    model = ddn.load(data["cls"], data["seg"], device="cpu")
    image = _rgb(data["voc"] / "JPEGImages" / f"{data['val_ids'][0]}.jpg")
    for bad, message in [
        (image.astype(np.float32), r"float32 \(\d+, \d+, 3\) \(floats"),
        (image[..., 0], "grayscale"),
        (np.dstack([image, image[..., :1]]), "RGBA"),
    ]:
        with pytest.raises(ddn.UserError, match=f"images\\[0\\]: expected an RGB uint8.*{message}"):
            model.segment(bad)
    with pytest.raises(ddn.UserError, match="threshold: must be in"):
        model.segment(image, threshold=1.5)
    deconv = make_deconvnet_run(tmp_path / "deconv", data["classes"][1:])
    for args, message in [
        ((data["cls"],), "holds a classifier model; .* give a segmenter run too"),
        ((data["seg"],), "holds a segmenter model; .* give its classifier run too"),
        ((data["cls"], deconv), "a DeconvNet baseline run takes no classifier run"),
        ((tmp_path / "nowhere",), "model.pt: not found"),
        ((None, None), "no run given"),
    ]:
        with pytest.raises(ddn.UserError, match=message):
            ddn.load(*args, device="cpu")


def test_a_deconvnet_run_alone(data, tmp_path):
    deconv = make_deconvnet_run(tmp_path / "deconv", data["classes"][1:])
    model = ddn.load(deconv, device="cpu")
    assert model.baseline and ddn.load(None, deconv).baseline
    image = _rgb(data["voc"] / "JPEGImages" / f"{data['val_ids'][0]}.jpg")
    result = model.segment(image)
    assert result.labels.shape == image.shape[:2]
    assert set(result.classes) == set(np.unique(result.labels).tolist()) - {0}
    with pytest.raises(ddn.UserError, match="maps=True: a DeconvNet baseline run has no"):
        model.segment(image, maps=True)
    with pytest.raises(ddn.UserError, match="classes: a DeconvNet baseline run picks no"):
        model.segment(image, classes=[1])
    metrics = ddn.evaluate(data["prep"], deconv, workers=0, device="cpu")
    r = run("eval", "--data", data["prep"], "--seg", deconv, "--json", "--workers", "0")
    assert metrics == json.loads(r.stdout) and metrics["cls_map"] is None


def test_evaluate_is_eval_json(data, tmp_path):
    r = run(*eval_args(data, "--json"))
    assert r.exit_code == 0, r.output
    result = ddn.evaluate(data["prep"], data["cls"], data["seg"], workers=0, batch=4)
    assert result == json.loads(r.stdout)
    limited = ddn.evaluate(data["prep"], data["cls"], data["seg"], workers=0, limit=2)
    assert limited["images"] == 2

    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for kw, message in [
        ({"save_pred": blocker}, "save_pred needs a directory here, but this is a file"),
        ({"maps": True}, "maps=True needs save_pred"),
        ({"split": "train"}, "split: expected val or strong"),
        ({"threshold": -1}, "threshold: must be in"),
        ({"workers": -1}, "workers: must be at least 0"),
    ]:
        with pytest.raises(ddn.UserError, match=message):
            ddn.evaluate(data["prep"], data["cls"], data["seg"], **kw)
    assert blocker.read_text() == "mine"


def test_evaluate_keeps_the_metrics_when_saving_fails(data, tmp_path, monkeypatch):
    expected = ddn.evaluate(data["prep"], data["cls"], data["seg"], workers=0)
    real = Image.Image.save
    calls = []

    def full_disk(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(PredictionsNotSaved, match="No space left on device") as e:
        ddn.evaluate(data["prep"], data["cls"], data["seg"], workers=0, save_pred=tmp_path / "p")
    assert isinstance(e.value, ddn.UserError) and e.value.result == expected


def _defaults(command) -> dict:
    ctx = click.Context(command)
    return {p.name: p.get_default(ctx) for p in command.params}


def _signature(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_the_functions_default_to_the_commands_defaults():
    cli = _defaults(prepare_command)
    cli["strong_per_class"] = int(cli["strong_per_class"])
    api = _signature(ddn.prepare)
    assert {k: v for k, v in cli.items() if k not in ("out", "dataset", "root")} == api
    # The crop settings, shared with generate_crops.
    crops = _signature(ddn.generate_crops)
    assert {k: v for k, v in crops.items() if k != "image_id"} == {
        k: api[k] for k in crops if k != "image_id"
    }
    cli = _defaults(eval_command)
    cli["maps"] = cli.pop("save_maps")
    api = _signature(ddn.evaluate)
    assert {k: cli[k] for k in api if k != "seg_run"} == {
        k: v for k, v in api.items() if k != "seg_run"
    }
    assert _signature(ddn.load) == {
        k: v for k, v in _defaults(predict_command).items() if k in ("device", "threshold")
    } | {"seg_run": None}
