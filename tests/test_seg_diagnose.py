"""benchmarks/seg_diagnose.py on tiny runs: its mIoU with the classifier's picks is `ddn
eval`'s, and the true-label figure runs the segmenter on the true classes."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import seg_diagnose
from ddn.evaluation import evaluate
from ddn.train.run_files import save_model
from tests.trainutil import cls_run_for, make_prepared, make_seg_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    prep = make_prepared(tmp_path_factory.mktemp("diag"), images=40)
    cls_run = cls_run_for(prep, tmp_path_factory)
    # A bias that makes the untrained classifier pick every class: its picks differ from
    # the true labels, so the two figures differ.
    blob = torch.load(cls_run / "model.pt", weights_only=False)
    blob["model"]["head.score.bias"].fill_(8.0)
    save_model(cls_run, blob["model"], blob["config"])
    seg_run = make_seg_run(tmp_path_factory.mktemp("seg") / "run", cls_run)
    # And a segmenter that calls every pixel foreground: each image's pixels then go to
    # the first class given, so true and picked labels give different maps.
    blob = torch.load(seg_run / "model.pt", weights_only=False)
    blob["model"]["segmenter.classify.bias"].copy_(torch.tensor([-4.0, 4.0]))
    save_model(seg_run, blob["model"], blob["config"])
    return prep, cls_run, seg_run


def test_picked_label_miou_is_ddn_evals_and_true_labels_differ(runs, capsys):
    prep, cls_run, seg_run = runs
    seg_diagnose.main(["--data", str(prep), "--cls", str(cls_run), "--seg", str(seg_run),
                       "--crops", "8"])  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["val_miou"]
    expected = evaluate(prep, cls_run, seg_run, workers=0, device="cpu")
    assert result["miou_picked_labels"] == pytest.approx(100 * expected["miou"], abs=1e-6)
    assert result["miou_objects_picked_labels"] == pytest.approx(
        100 * expected["miou_objects"], abs=1e-6
    )
    assert 0 <= result["miou_true_labels"] <= 100
    assert result["miou_true_labels"] != pytest.approx(result["miou_picked_labels"])
