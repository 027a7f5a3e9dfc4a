"""benchmarks/real_photos.py end to end at toy size, through the real `ddn` commands."""

from __future__ import annotations

import json

import pytest

from benchmarks import real_photos


@pytest.mark.slow
def test_toy_run_writes_every_cell_margins_and_the_commands(synth_root, tmp_path):
    out = tmp_path / "rp"
    argv = ["--out", str(out), "--dataset", "voc", "--root", str(synth_root),
            "--per-class", "2", "--arch", "vgg16_bn", "--width", "0.125", "--weights", "none",
            "--input-size", "64", "--cls-iters", "2", "--cls-batch", "4", "--seg-iters", "2",
            "--seg-batch", "4", "--device", "cpu", "--workers", "0", "--jobs", "1",
            "--prepare-args", "--proposals 3 --method random", "--in-process",
            "--min-deconvnet-margin", "-100", "--min-str-margin", "-100"]  # fmt: skip
    try:
        real_photos.main(argv)
        exited = None
    except SystemExit as e:  # two steps from scratch may label no object pixel
        exited = str(e)
    summary = json.loads((out / "real_photos.json").read_text())
    cell = summary["results"]["2"]
    assert set(cell) == set(real_photos.METHODS)
    classes = list(cell["DecoupledNet"]["per_class"])
    assert classes[0] == "background" and len(classes) == 4
    assert set(summary["margins"]["2"]) == {"over_deconvnet", "over_str"}
    assert summary["targets_met"] == (not summary["failures"]) == (exited is None)
    no_object = {f"{m} at 2/class" for m, r in cell.items() if not r["miou_objects"]}
    assert set(summary["no_object_pixels"]) == no_object
    table = (out / "real_photos.md").read_text()
    assert "| class | DecoupledNet | DecoupledNet-Str | DeconvNet |" in table
    assert all(f"| {name} |" in table for name in classes)
    commands = [c["command"] for c in summary["commands"]]
    assert sum(c.startswith("ddn train-seg") for c in commands) == 3
    assert any("--weak-from strong" in c for c in commands)
