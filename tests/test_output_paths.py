"""Output paths: refused up front (one line, exit 2, before any model is loaded or image
decoded) when they cannot be written; a write failing part-way is one line naming the
file; `eval` reports its metrics all the same; nothing claims a write that did not happen.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import cli.eval
import cli.inspect_cmd
import cli.predict
from tests.test_eval_predict import eval_args, make_eval_data, run
from tests.test_prepare_bad_input import assert_one_line_error

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return make_eval_data(tmp_path_factory.mktemp("outpaths"))


@pytest.fixture
def no_work(monkeypatch) -> None:
    """Loading a model, decoding an image or reading the prepared set fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    work = {cli.predict: ["load_for_inference", "load_image"],
            cli.eval: ["load_for_inference", "evaluate_and_report"],
            cli.inspect_cmd: ["summarize", "draw_grid"]}  # fmt: skip
    for module, names in work.items():
        for name in names:
            monkeypatch.setattr(module, name, forbidden)


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A directory this process cannot write to (skipped where permissions do not bind,
    as for root)."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o500)
    if os.access(d, os.W_OK):
        d.chmod(0o700)
        pytest.skip("permissions do not stop this user (root): no read-only directory")
    yield d
    d.chmod(0o700)  # so that tmp_path can be cleaned up


def predict_args(data: dict, out: Path, *extra) -> list:
    image = data["voc"] / "JPEGImages" / f"{data['val_ids'][0]}.jpg"
    return ["predict", "--cls", data["cls"], "--seg", data["seg"], image, "--out", out, *extra]


def grid_args(data: dict, grid: Path) -> list:
    return ["inspect", data["prep"], "--grid", grid]


COMMANDS: dict[str, Callable[[dict, Path], list]] = {
    "predict --out": predict_args,
    "eval --save-pred": lambda data, out: eval_args(data, "--save-pred", out),
    "inspect --grid": grid_args,
}


def _fail_on_call(monkeypatch, target: object, name: str, call: int) -> list[Path]:
    """Make the `call`-th call of target.name write a few bytes and fail with ENOSPC
    (a disk filling up mid-write); returns the paths it was called with."""
    real = getattr(target, name)
    seen: list[Path] = []

    def fake(self, fp, *args, **kwargs):
        path = Path(self if isinstance(self, Path) else fp)
        seen.append(path)
        if len(seen) == call:
            with open(path, "wb") as f:
                f.write(b"\x89PNG half")
            raise ENOSPC
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(target, name, fake)
    return seen


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_where_a_file_or_folder_is_in_the_way(command, data, tmp_path, no_work):
    # predict and eval need a directory and find a file; inspect needs a file and finds a
    # directory. Either way: refused before any work, the thing in the way untouched.
    if command == "inspect --grid":
        target = tmp_path / "grid.png"
        target.mkdir()
        assert_one_line_error(run(*grid_args(data, target)), str(target), "is a directory")
        assert target.is_dir() and not any(target.iterdir())
        return
    target = tmp_path / "out.txt"
    target.write_text("mine")
    assert_one_line_error(run(*COMMANDS[command](data, target)), str(target), "is a file")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_below_a_file_cannot_be_created(command, data, tmp_path, no_work):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    target = blocker / "sub" / ("grid.png" if command == "inspect --grid" else "out")
    r = run(*COMMANDS[command](data, target))
    assert_one_line_error(r, str(target), f"{blocker} is a file")
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_in_a_read_only_directory(command, data, read_only, no_work):
    target = read_only / ("grid.png" if command == "inspect --grid" else "out")
    r = run(*COMMANDS[command](data, target))
    assert_one_line_error(r, str(target), f"{read_only} is not writable")
    assert not any(read_only.iterdir())


def test_an_existing_read_only_output_directory(data, read_only, no_work):
    r = run(*predict_args(data, read_only))
    assert_one_line_error(r, str(read_only), "--out is not writable")


def test_a_file_where_an_output_subfolder_goes(data, tmp_path, no_work):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "maps").write_text("mine")
    r = run(*eval_args(data, "--save-pred", out, "--save-maps"))
    assert_one_line_error(r, str(out / "maps"), "is a file")
    r = run(*predict_args(data, out, "--save-maps"))
    assert_one_line_error(r, str(out / "maps"), "is a file")


def test_grid_must_name_an_image_file(data, tmp_path, no_work):
    r = run(*grid_args(data, tmp_path / "grid.txt"))
    assert_one_line_error(r, str(tmp_path / "grid.txt"), "image file")


def test_demo_out_at_a_file_is_refused_first(tmp_path, monkeypatch):
    import cli.demo

    monkeypatch.setattr(cli.demo, "generate", lambda *a, **k: pytest.fail("demo started"))
    target = tmp_path / "demo"
    target.write_text("mine")
    assert_one_line_error(run("demo", "--out", target), str(target), "is a file")


def test_eval_reports_its_metrics_when_saving_fails(data, tmp_path, monkeypatch):
    expected = json.loads(run(*eval_args(data, "--json")).stdout)
    out = tmp_path / "pred"
    seen = _fail_on_call(monkeypatch, Image.Image, "save", call=3)  # the 3rd palette PNG
    r = run(*eval_args(data, "--json", "--save-pred", out, "--overlays", "0"))
    assert r.exit_code == 2
    assert json.loads(r.stdout) == expected  # every image scored, metrics printed
    failed = seen[2]
    n = len(data["val_ids"])
    assert r.stderr.strip().splitlines() == [
        f"error: {failed}: cannot write (No space left on device); "
        f"predictions stop there, the metrics cover all {n} images"
    ]
    assert len(seen) == 3  # saving stopped at the failure
    assert sorted(out.glob("*.png")) == sorted(seen[:2])  # kept; no half-written file

    # The text report too; and it claims no predictions directory.
    seen.clear()
    r = run(*eval_args(data, "--save-pred", tmp_path / "pred2", "--overlays", "0"))
    assert r.exit_code == 2 and "mIoU (4 classes, incl. background)" in r.stdout
    assert "predictions" not in r.stdout and str(seen[2]) in r.stderr


def test_predict_write_failing_midway(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = _fail_on_call(monkeypatch, Image.Image, "save", call=2)  # the first overlay
    r = run(*predict_args(data, out))
    assert_one_line_error(r, f"{seen[1]}: cannot write (No space left on device)")
    assert [p.name for p in out.rglob("*.png")] == [seen[0].name]
    assert not (out / "predictions.json").exists()


def test_inspect_claims_no_grid_it_could_not_write(data, tmp_path, monkeypatch):
    grid = tmp_path / "grid.png"
    _fail_on_call(monkeypatch, Path, "write_bytes", call=1)
    r = run(*grid_args(data, grid), "--grid-size", "4")
    assert_one_line_error(r, f"{grid}: cannot write (No space left on device)")
    assert "grid " not in r.stdout and not grid.exists()
