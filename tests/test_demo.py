"""`ddn demo` end to end at toy size: every stage runs and leaves what the README says."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli


def test_demo_runs_every_stage_and_leaves_its_outputs(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--images", "24", "--classes", "2", "--size", "64",
            "--input-size", "64", "--strong-per-class", "2", "--cls-iters", "2",
            "--seg-iters", "2", "--device", "cpu", "--jobs", "1"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "done in"):
        assert stage in r.output
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and set(metrics["per_class"]) == {
        "background",
        "aeroplane",
        "bicycle",
    }
    assert (out / "crops.png").stat().st_size > 0
    assert (out / "cls" / "model.pt").is_file() and (out / "seg" / "model.pt").is_file()
    assert len(list((out / "eval").glob("*.png"))) == metrics["images"]
