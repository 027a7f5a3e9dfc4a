"""benchmarks/demo_cls_probe.py: a probe is `ddn train-cls` with the demo's recipe except
the options it names, and --time-step times the size it is given."""

from __future__ import annotations

import json

from benchmarks import demo_cls_probe
from cli.demo import CLASSIFIER_RECIPE
from pipeline import readers
from tests.trainutil import make_cls_run, make_prepared


def test_a_probe_is_the_demos_classifier_with_the_named_options_changed(
    tmp_path, capsys, monkeypatch
):
    prep = make_prepared(tmp_path / "data", images=24, classes=2)
    # --crop-scale patches the reader module for the process: give it back afterwards.
    monkeypatch.setattr(readers, "random_resized_crop_box", readers.random_resized_crop_box)
    run = tmp_path / "run"
    demo_cls_probe.main(["--data", str(prep), "--out", str(run), "--iters", "2",
                         "--val-every", "1", "--decay", "cosine", "--warmup", "0",
                         "--input-size", "32", "--crop-scale", "1.0", "--seed", "3"])  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = json.loads((run / "config.json").read_text())
    named = {"decay": "cosine", "warmup": 0, "input_size": 32, "seed": 3, "iters": 2}
    assert {k: config[k] for k in named} == named
    kept = {k: v for k, v in CLASSIFIER_RECIPE.items() if k not in named}
    assert {k: config[k] for k in kept} == kept
    assert sorted(result["curve"]) == ["1", "2"] and result["crop_scale"] == 1.0
    assert readers.random_resized_crop_box.keywords == {"scale": (1.0, 1.0)}


def test_time_step_runs_at_the_size_and_batch_it_is_given():
    out = demo_cls_probe.time_step(width=0.125, batch=2, size=32, steps=1)
    assert (out["input_size"], out["batch"]) == (32, 2)
    assert abs(out["examples_per_s"] - 2 / out["ms_per_step"] * 1000) < 1e-6
    assert 0 < out["conv_backward_share"] < 1


def test_split_map_scores_the_demo_classifier_on_its_training_images_and_val(tmp_path, capsys):
    demo = tmp_path / "demo"  # the layout `ddn demo` leaves
    demo.mkdir()
    make_prepared(tmp_path, images=24, classes=2).rename(demo / "prepared")
    classes = json.loads((demo / "prepared" / "manifest.json").read_text())["classes"][1:]
    make_cls_run(demo / "cls", classes)
    demo_cls_probe.main(["--split-map", str(demo)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(out) == ["val", "weak"] and all(0 <= v <= 1 for v in out.values())
