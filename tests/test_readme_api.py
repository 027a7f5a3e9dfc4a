"""The README's "Python API" examples run as written, so that they stay true.

The ```python blocks of that section run in order, in one namespace. They use upper-case
names for what a reader has at hand; this test defines them first:

- ``VOC_ROOT``: a small synthetic dataset in VOC layout (`ddn synth`); ``PREPARED``:
  where the examples' ``ddn.prepare`` writes it (absent before);
- ``IMAGE``, ``MASK``, ``IMAGE_ID``: one of its strong images: the JPEG, its palette PNG
  mask, its id;
- ``CLS_RUN``, ``SEG_RUN``: an untrained tiny classifier run for its classes and a
  segmenter run on it.

joblib runs prepare's shards in this process (its worker start-up would be most of the
test's time); nothing else is changed. Then the README's claims are checked on what the
blocks left: the crops are the ones prepare wrote for that image, the label map has the
image's size.
"""

from __future__ import annotations

import re
from pathlib import Path

import joblib
import numpy as np

import ddn
from pipeline.datasets import load_dataset
from pipeline.imageio import read_id_list
from pipeline.synth import generate
from tests.conftest import voc2012
from tests.test_api import strong_images
from tests.trainutil import make_cls_run, make_seg_run

README = Path(__file__).resolve().parents[1] / "README.md"


def api_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("\n## Python API\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_sits_before_dataset_formats():
    text = README.read_text()
    assert text.index("\n## Python API\n") < text.index("\n## Dataset formats\n")
    assert len(api_blocks()) >= 3


def test_the_python_api_examples_run(tmp_path):
    synth_root = tmp_path / "synth"
    generate(synth_root, images=20, classes=2, size=64, seed=4)
    # Which images are strong depends on the split settings only: a cheap prepare with
    # the README's split settings (the defaults) names them before the examples run.
    scout = tmp_path / "scout"
    ddn.prepare(scout, dataset="voc", root=synth_root, method="random", proposals=1, jobs=1)
    image_id = read_id_list(scout / "splits" / "strong.txt")[0]
    classes = load_dataset("voc", root=synth_root).classes
    cls_run = make_cls_run(tmp_path / "cls", classes[1:])
    names = {
        "VOC_ROOT": str(synth_root),
        "PREPARED": str(tmp_path / "prepared"),
        "IMAGE": str(voc2012(synth_root) / "JPEGImages" / f"{image_id}.jpg"),
        "MASK": str(voc2012(synth_root) / "SegmentationClass" / f"{image_id}.png"),
        "IMAGE_ID": image_id,
        "CLS_RUN": str(cls_run),
        "SEG_RUN": str(make_seg_run(tmp_path / "seg", cls_run)),
    }
    namespace = dict(names)
    with joblib.parallel_config(backend="sequential"):
        for i, block in enumerate(api_blocks()):
            exec(compile(block, f"README.md, Python API block {i + 1}", "exec"), namespace)

    prepared = tmp_path / "prepared"
    assert read_id_list(prepared / "splits" / "strong.txt") == read_id_list(
        scout / "splits" / "strong.txt"
    )
    (table,) = [t for i, _, _, t in strong_images(prepared) if i == image_id]
    crops = namespace["crops"]
    assert np.array_equal(crops.boxes, table["crop_box"]) and crops.subsets == table["subsets"]
    assert namespace["crop"].shape == (320, 320, 3)
    assert set(np.unique(namespace["target"])) <= {0, 1, 255}
    image = namespace["image"]
    assert namespace["result"].labels.shape == image.shape[:2]
    assert namespace["metrics"]["images"] == len(ddn.ValDataset(prepared))
