"""`ddn prepare` end to end: splits, shards, resume, refusal of mixed configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from cli.main import cli
from pipeline.cropping import warp_example
from pipeline.imageio import decode_image, decode_label_png
from pipeline.manifest import read_manifest, shard_paths
from pipeline.shards import ORIGIN_WHOLE, subset_classes

FAST = [
    "--dataset",
    "voc",
    "--proposals",
    "12",
    "--max-boxes",
    "200",
    "--jobs",
    "1",
    "--strong-per-class",
    "2",
    "--strong-shard-size",
    "2",
    "--shard-size",
    "8",
]


def run(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def prep(root: Path, out: Path, *extra: str):
    return run(["prepare", str(out), "--root", str(root), *FAST, *extra])


def shard_content(out: Path) -> dict:
    """Everything a shard holds except HDF5 bookkeeping (times), for comparisons."""
    m = read_manifest(out)
    content = {}
    for kind in ("weak", "strong", "val"):
        for p in shard_paths(out, m, kind):
            with h5py.File(p) as f:
                for name, ds in f.items():
                    if ds.dtype.kind == "O":
                        content[f"{p.name}/{name}"] = [
                            bytes(memoryview(x)) if not isinstance(x, bytes) else x for x in ds[()]
                        ]
                    else:
                        content[f"{p.name}/{name}"] = ds[()].tolist()
    return content


def test_prepare_synthetic_end_to_end(synth_root, tmp_path):
    out = tmp_path / "prep"
    r = prep(synth_root, out)
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert m["complete"] and m["classes"][0] == "background" and len(m["classes"]) == 4
    splits = {
        k: (out / "splits" / f"{k}.txt").read_text().split() for k in ("weak", "strong", "val")
    }
    assert m["splits"]["strong"] == len(splits["strong"]) <= 2 * 3
    assert len(splits["weak"]) == 30 and len(splits["val"]) == 10
    assert set(splits["strong"]) <= set(splits["weak"])
    assert not set(splits["val"]) & set(splits["weak"])
    total = 0
    for p in shard_paths(out, m, "strong"):
        with h5py.File(p) as f:
            assert f.attrs["kind"] == "strong" and f.attrs["config_hash"] == m["config_hash"]
            labels, boxes = f["labels"][()], f["crop_box"][()]
            for i in range(len(f["crop_image"])):
                row = int(f["crop_image"][i])
                subset = subset_classes(labels[row], int(f["crop_subset"][i]))
                assert subset, "empty subset"
                mask = decode_label_png(f["masks"][row])
                fg = np.isin(mask, subset)
                x0, y0, x1, y1 = boxes[i]
                ys, xs = np.nonzero(fg)
                inside = (
                    (xs >= np.floor(x0))
                    & (xs < np.ceil(x1))
                    & (ys >= np.floor(y0))
                    & (ys < np.ceil(y1))
                )
                assert inside.mean() >= 0.95 - 1e-6  # the "enclose" rule
            # N_p per subset: every (image, subset) pair has exactly --proposals boxes,
            # plus (--whole-image, the default) one padded-image square
            pairs = np.stack([f["crop_image"][()], f["crop_subset"][()].astype(np.int64)], 1)
            origin = f["crop_origin"][()]
            _, counts = np.unique(pairs[origin != ORIGIN_WHOLE], axis=0, return_counts=True)
            assert (counts == 12).all()
            _, wholes = np.unique(pairs[origin == ORIGIN_WHOLE], axis=0, return_counts=True)
            assert len(wholes) == len(counts) and (wholes == 1).all()
            total += len(f["crop_image"])
    assert total == sum(s["crops"] for s in m["shards"]) > 0


def test_progress_in_a_log_is_plain_lines(synth_root, tmp_path):
    """stderr is no terminal here (as in a batch job's log): no tqdm frames, only lines."""
    out = tmp_path / "prep"
    r = prep(synth_root, out)
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output
    splits = read_manifest(out)["splits"]
    lines = r.output.splitlines()
    # Every training image's mask is scanned; all three splits are written.
    written = splits["weak"] + splits["strong"] + splits["val"]
    for phase, total in (("scan masks", splits["weak"]), ("prepare", written)):
        mine = [line for line in lines if line.startswith(f"{phase}: ")]
        assert mine[0] == f"{phase}: {total} images"
        assert mine[-1].startswith(f"{phase}: {total}/{total} images (100%), ")
        assert 3 <= len(mine) <= 12  # at most one a tenth, besides the first


def test_same_output_for_any_number_of_jobs(synth_root, tmp_path):
    assert prep(synth_root, tmp_path / "a").exit_code == 0
    assert prep(synth_root, tmp_path / "b", "--jobs", "2").exit_code == 0
    assert shard_content(tmp_path / "a") == shard_content(tmp_path / "b")


def test_rerun_skips_finished_shards_and_changed_config_is_refused(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert prep(synth_root, out).exit_code == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    r = CliRunner().invoke(
        cli, ["prepare", str(out), "--root", str(synth_root), *FAST, "--seed", "7"]
    )
    assert r.exit_code == 2 and "different configuration" in r.output
    assert "(changed: crops.seed, split.seed)" in r.output  # what differs, as --resume does
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    r = prep(synth_root, out, "--seed", "7", "--overwrite")
    assert r.exit_code == 0
    assert read_manifest(out)["config"]["split"]["seed"] == 7


def test_corrupt_shard_is_rebuilt_on_resume(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    before = shard_content(out)
    victim = sorted(out.glob("strong-*.h5"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a torn file must not be accepted
    assert prep(synth_root, out).exit_code == 0
    assert shard_content(out) == before


def test_kill_9_then_rerun_finishes_the_same_job(synth_root, tmp_path):
    reference = tmp_path / "ref"
    assert prep(synth_root, reference).exit_code == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cli.main", "prepare", str(out), "--root", str(synth_root), *FAST]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("strong-*.h5")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"]
    assert prep(synth_root, out).exit_code == 0
    assert not list(out.glob(".*.tmp"))
    assert shard_content(out) == shard_content(reference)


def test_incompatible_format_version_is_refused(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(cli, ["prepare", str(out), "--root", str(synth_root), *FAST])
    assert r.exit_code == 2 and "format version 99" in r.output
    r = CliRunner().invoke(cli, ["inspect", str(out)])
    assert r.exit_code == 2 and "format version 99" in r.output


def test_materialize_stores_the_warped_examples(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out, "--materialize", "40").exit_code == 0
    m = read_manifest(out)
    with h5py.File(shard_paths(out, m, "strong")[0]) as f:
        assert f["mat_images"].shape[1:] == (40, 40, 3) and f["mat_images"].chunks[0] == 1
        for i in (0, len(f["crop_image"]) - 1):
            row = int(f["crop_image"][i])
            image = decode_image(bytes(f["images"][row]))
            mask = decode_label_png(f["masks"][row])
            subset = subset_classes(f["labels"][row], int(f["crop_subset"][i]))
            img, tgt = warp_example(image, mask, f["crop_box"][i], subset, 40)
            assert np.array_equal(f["mat_images"][i], img)
            assert np.array_equal(f["mat_masks"][i], tgt)


def test_weak_from_strong_and_strong_list(synth_root, tmp_path):
    out = tmp_path / "str"
    assert prep(synth_root, out, "--weak-from", "strong").exit_code == 0
    strong = (out / "splits" / "strong.txt").read_text().split()
    assert (out / "splits" / "weak.txt").read_text().split() == strong
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(strong[:2]) + "\n")
    out2 = tmp_path / "lst"
    assert prep(synth_root, out2, "--strong-list", str(lst)).exit_code == 0
    assert (out2 / "splits" / "strong.txt").read_text().split() == strong[:2]
    lst.write_text("no_such_image\n")
    r = CliRunner().invoke(
        cli,
        [
            "prepare",
            str(tmp_path / "x"),
            "--root",
            str(synth_root),
            *FAST,
            "--strong-list",
            str(lst),
        ],
    )
    assert r.exit_code == 2 and "no_such_image" in r.output


def test_inspect_json_and_grid(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    grid = tmp_path / "grid.png"
    r = run(["inspect", str(out), "--json", "--grid", str(grid), "--grid-size", "4"])
    assert r.exit_code == 0
    s = json.loads(r.output.strip().splitlines()[-1])
    for key in (
        "classes",
        "weak_images",
        "strong_images",
        "val_images",
        "crops",
        "bytes",
        "shards",
    ):
        assert key in s
    assert s["weak_images"] == 30 and s["val_images"] == 10 and s["crops"] > 0
    assert grid.stat().st_size > 1000
    r = run(["inspect", str(out)])
    assert "strong images" in r.output and "crops" in r.output
