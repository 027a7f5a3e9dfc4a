"""The DeconvNet baseline: model shapes, class targets, train-seg --baseline, ddn eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from ddn.inference import segment_deconvnet
from ddn.models import Segmenter
from ddn.models.deconvnet import DeconvNet
from ddn.train.deconvnet import DeconvConfig, train_deconvnet
from ddn.train.gpu_crops import DeviceCrops
from ddn.trained_runs import load_deconvnet, run_kind
from pipeline.errors import UserError
from pipeline.imageio import encode_label_png, load_label_map
from pipeline.readers import CropDataset
from tests.trainutil import ARCH, SIZE, WIDTH, make_cls_run, make_prepared


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("deconv"), images=40)


def _config(prep, out, **kw) -> DeconvConfig:
    base = dict(arch=ARCH, width=WIDTH, input_size=SIZE, batch=4, accum=1, iters=3,
                bn_batches=2, weights="none", device="cpu", workers=0, log_every=1,
                ckpt_every=1000, crop_path="cpu")  # fmt: skip
    return DeconvConfig(data=str(prep), out=str(out), **(base | kw))


def test_model_shapes_and_default_segmenter():
    model = DeconvNet(4, ARCH, WIDTH, 96).eval()
    assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 5, 96, 96)  # C+1 channels
    assert Segmenter(WIDTH).classify.out_channels == 2  # DecoupledNet's stays figure/ground
    assert not any(k.startswith("bridge.") for k in model.state_dict())


def test_class_targets_agree_with_binary_targets(prep):
    binary = CropDataset(prep, warp_size=70, crop_size=SIZE, seed=3)
    classes = CropDataset(prep, warp_size=70, crop_size=SIZE, seed=3, target="classes")
    seen: set[int] = set()
    for i in range(0, len(binary), max(1, len(binary) // 20)):
        b, c = binary[i], classes[i]
        assert torch.equal(b["image"], c["image"])
        t, k = b["target"].numpy(), c["target"].numpy()
        subset = [j + 1 for j in np.flatnonzero(b["subset"].numpy())]
        assert np.array_equal(k == 255, t == 255)  # same ignore pixels
        valid = k != 255
        assert np.array_equal(np.isin(k, subset)[valid], (t == 1)[valid])
        seen |= set(np.unique(k[valid]).tolist())
    assert seen - {0}, "class targets should contain object classes"
    assert max(seen) <= binary.num_classes
    with pytest.raises(UserError, match="crop target"):
        CropDataset(prep, target="instances")


def test_device_crops_give_the_same_class_targets(prep):
    cpu = CropDataset(prep, warp_size=70, crop_size=SIZE, seed=1, target="classes")
    keys = [(i, 2) for i in range(0, len(cpu), 3)]
    batch = DeviceCrops(cpu, "cpu").batch(keys)
    cpu.set_epoch(2)
    for b, (i, _) in enumerate(keys):
        assert torch.equal(batch["target"][b], cpu[i]["target"]), i


def test_train_saves_a_deconvnet_run_that_eval_reads(prep, tmp_path):
    out = tmp_path / "run"
    result = train_deconvnet(_config(prep, out))
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"] == "train-deconvnet" and config["iters"] == 3
    assert run_kind(out) == "deconvnet"
    loaded = load_deconvnet(out)
    assert loaded.classes == result.classes and loaded.model.num_classes == 3
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k

    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    (p,) = segment_deconvnet(loaded.model, [image])
    assert p.pred.shape == (50, 70) and p.pred.dtype == np.uint8
    assert p.probs.shape == (3,) and set(p.labels) == set(np.unique(p.pred)) - {0}

    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "--data", str(prep), "--seg", str(out), "--json",
                              "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output.strip().splitlines()[-1])
    assert metrics["cls_map"] is None and 0 <= metrics["miou"] <= 1
    assert len(metrics["per_class"]) == 4 and metrics["images"] > 0


def test_cli_baseline_and_argument_errors(prep, tmp_path):
    runner = CliRunner()
    common = ["--data", str(prep), "--iters", "1", "--batch", "2", "--accum", "1",
              "--bn-batches", "1", "--device", "cpu", "--workers", "0", "--width", str(WIDTH),
              "--input-size", str(SIZE)]  # fmt: skip
    out = tmp_path / "b"
    res = runner.invoke(cli, ["train-seg", "--baseline", "deconvnet", "--arch", ARCH,
                              "--weights", "none", "--out", str(out), *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["config"]["kind"] == "deconvnet" and saved["config"]["arch"] == ARCH
    crops = saved["config"]["train_config"]["train_crops"]
    assert res.output.splitlines()[0] == (  # the plan first, as train-seg's
        f"train-deconvnet: 1 step of 2 crops (batch 2 x accum 1 x 1 process), no lr decay; "
        f"{crops} training crops"
    )

    res = runner.invoke(cli, ["train-seg", "--out", str(tmp_path / "c"), *common])
    assert res.exit_code == 2 and "--cls" in res.output
    classes = json.loads((prep / "manifest.json").read_text())["classes"][1:]
    cls_run = make_cls_run(tmp_path / "cls", classes)
    res = runner.invoke(cli, ["eval", "--data", str(prep), "--seg", str(out), "--cls",
                              str(cls_run), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 2 and "takes no --cls" in res.output

    # ddn predict takes the baseline run alone, like eval.
    image = tmp_path / "img.png"
    image.write_bytes(encode_label_png(np.random.default_rng(0).integers(0, 255, (50, 70))))
    res = runner.invoke(cli, ["predict", "--seg", str(out), str(image), "--out",
                              str(tmp_path / "pred"), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert saved["cls_run"] is None and len(saved["images"]) == 1
    mask = load_label_map(tmp_path / "pred" / "img.png")
    assert mask.shape == (50, 70)
    # The baseline's labels are the classes its mask contains.
    labels = [x["index"] for x in saved["images"][0]["labels"]]
    assert labels == [int(k) for k in np.unique(mask) if k > 0]
    assert (tmp_path / "pred" / "overlays" / "img.png").is_file()
    for extra, message in ((["--save-maps"], "no foreground/bridge maps"),
                           (["--cls", str(cls_run)], "takes no --cls")):  # fmt: skip
        res = runner.invoke(cli, ["predict", "--seg", str(out), str(image), "--out",
                                  str(tmp_path / "p2"), *extra])  # fmt: skip
        assert res.exit_code == 2 and message in res.output, res.output
