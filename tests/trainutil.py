"""Helpers shared by the trainer tests: small prepared sets, tiny configs, classifier runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddn.models import Classifier, DecoupledSegmenter
from ddn.models.deconvnet import DeconvNet
from ddn.train.cls import ClsConfig
from ddn.train.run_files import save_model
from ddn.train.seg import SegConfig
from pipeline.build import CropSettings
from pipeline.datasets import load_dataset
from pipeline.prepare import ShardSettings, SplitSettings, prepare
from pipeline.proposals import ProposalConfig
from pipeline.synth import generate

ARCH, WIDTH, SIZE = "vgg16_bn", 0.125, 64


def make_prepared(
    root: Path, images: int = 60, classes: int = 3, size: int = 64, per_class: int = 2,
    proposals: int = 4, seed: int = 0,
) -> Path:  # fmt: skip
    """Synthetic VOC set -> `prepare` (random boxes: fast); returns the prepared dir."""
    generate(root / "synth", images=images, classes=classes, size=size, seed=seed)
    ds = load_dataset("voc", root=root / "synth")
    prepare(
        ds,
        root / "prep",
        SplitSettings(strong_per_class=per_class, seed=seed),
        CropSettings(ProposalConfig(method="random"), per_subset=proposals, seed=seed),
        ShardSettings(shard_size=1000, strong_shard_size=100, jobs=1),
    )
    return root / "prep"


def make_cls_run(run: Path, classes: list[str], seed: int = 0, input_size: int = SIZE) -> Path:
    """An (untrained) classifier run directory, as train-cls leaves it."""
    torch.manual_seed(seed)
    model = Classifier(len(classes), ARCH, WIDTH, input_size)
    run.mkdir(parents=True, exist_ok=True)
    save_model(
        run, model.state_dict(), {**model.config(), "classes": classes, "trainer": "train-cls"}
    )
    return run


def make_seg_run(run: Path, cls_run: Path, seed: int = 0) -> Path:
    """An (untrained) segmenter run on `cls_run`'s classifier, as train-seg leaves it."""
    from ddn.trained_runs import load_classifier

    cls, classes, _ = load_classifier(cls_run)
    torch.manual_seed(seed)
    seg = DecoupledSegmenter(cls.encoder.out_channels, WIDTH, cls.pool5_size)
    run.mkdir(parents=True, exist_ok=True)
    config = {"trainer": "train-seg", "width": WIDTH, "pool5_size": cls.pool5_size,
              "classes": classes[1:], "cls_run": str(cls_run)}  # fmt: skip
    save_model(run, seg.state_dict(), config)
    return run


def make_deconvnet_run(run: Path, classes: list[str], input_size: int = SIZE) -> Path:
    """An (untrained) DeconvNet baseline run, as train-seg --baseline deconvnet leaves it."""
    torch.manual_seed(0)
    model = DeconvNet(len(classes), ARCH, WIDTH, input_size)
    run.mkdir(parents=True, exist_ok=True)
    config = {**model.config(), "classes": classes, "trainer": "train-deconvnet",
              "kind": "deconvnet"}  # fmt: skip
    save_model(run, model.state_dict(), config)
    return run


def cls_run_for(prep: Path, tmp_path_factory) -> Path:
    """An untrained classifier run for the object classes of a prepared directory."""
    classes = json.loads((prep / "manifest.json").read_text())["classes"][1:]
    return make_cls_run(tmp_path_factory.mktemp("cls") / "run", classes)


def cls_config(data: Path, out: Path, **kw) -> ClsConfig:
    base = dict(arch=ARCH, width=WIDTH, input_size=SIZE, batch=8, lr=0.02, head_lr_mult=1.0,
                weights="none", device="cpu", workers=0, log_every=1, ckpt_every=1000)  # fmt: skip
    return ClsConfig(data=str(data), out=str(out), **(base | kw))


def seg_config(data: Path, cls: Path, out: Path, **kw) -> SegConfig:
    base = dict(batch=4, accum=2, lr=0.01, bn_batches=2, device="cpu", workers=0,
                log_every=1, ckpt_every=1000, crop_path="cpu")  # fmt: skip
    return SegConfig(data=str(data), cls=str(cls), out=str(out), **(base | kw))


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ (empty: identical, bit for bit)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


# ---------------------------------------------------------------- the learning setting

LEARN_IMAGES = 3000  # recognising the synthetic classes takes many weak examples
_TRAINED: dict[str, object] = {}


def learning_data(tmp_path_factory) -> Path:
    """One prepared set for both learning tests (made once per session): 2,400 weak / 600
    val images at 64 px, 3 classes, 5 strong per class with 10 random boxes per subset."""
    if "prep" not in _TRAINED:
        root = tmp_path_factory.mktemp("learn")
        _TRAINED["prep"] = make_prepared(
            root, images=LEARN_IMAGES, classes=3, size=64, per_class=5, proposals=10
        )
    return _TRAINED["prep"]  # type: ignore[return-value]


LEARN_CLS = dict(
    iters=400,
    batch=32,
    optimizer="adamw",
    lr=2e-3,
    decay="constant",
    head_lr_mult=1.0,
    log_every=10,
)


def trained_classifier(tmp_path_factory):
    """(ClsResult, run dir) of the classifier learning run, trained once per session."""
    from ddn.train.cls import train_cls

    if "cls" not in _TRAINED:
        prep = learning_data(tmp_path_factory)
        run = tmp_path_factory.mktemp("learn_cls") / "run"
        _TRAINED["cls"] = (train_cls(cls_config(prep, run, **LEARN_CLS)), run)
    return _TRAINED["cls"]
