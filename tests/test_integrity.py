"""Damaged shards and manifests (issue 11, items 1 and 6): every consumer stops with one
line naming the file before it uses a damaged shard, and re-running the same `prepare`
repairs the directory, rebuilding a lost manifest from the shards themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from ddn.train.seg import train_seg
from pipeline.errors import UserError
from pipeline.integrity import salvage_shards
from pipeline.readers import CropDataset, ValDataset, WeakDataset
from tests.test_prepare import prep, shard_content
from tests.trainutil import cls_run_for, make_prepared, seg_config

READERS = {"weak": WeakDataset, "strong": CropDataset, "val": ValDataset}


def flip_image_bytes(shard: Path, row: int = 0) -> None:
    """Flip bytes in the middle of one image's encoded data, in place, as bit rot would:
    the HDF5 structure stays valid and the JPEG still decodes, to other pixels."""
    with h5py.File(shard) as f:
        encoded = bytes(f["images"][row])
    raw = bytearray(shard.read_bytes())
    at = raw.find(encoded)
    assert at >= 0, "the encoded image is stored contiguously"
    middle = at + len(encoded) // 2
    for k in range(middle, middle + 4):
        raw[k] ^= 0x5A
    shard.write_bytes(bytes(raw))


def flip_metadata_bytes(shard: Path) -> None:
    """Flip bytes just past the superblock, in HDF5's object headers."""
    raw = bytearray(shard.read_bytes())
    for k in range(100, 140):
        raw[k] ^= 0xFF
    shard.write_bytes(bytes(raw))


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    return lines[-1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("integrity"), images=40, per_class=2)


@pytest.fixture
def damaged(prepared, tmp_path) -> Path:
    out = tmp_path / "prep"
    shutil.copytree(prepared, out)
    return out


@pytest.mark.parametrize("kind", ["weak", "strong", "val"])
@pytest.mark.parametrize("flip", [flip_image_bytes, flip_metadata_bytes])
def test_readers_refuse_a_damaged_shard_naming_it(damaged, kind, flip):
    shard = sorted(damaged.glob(f"{kind}-*.h5"))[0]
    flip(shard)
    with pytest.raises(UserError) as e:
        READERS[kind](damaged)
    message = str(e.value)
    assert str(shard) in message and "damaged" in message and "`ddn prepare`" in message
    assert "\n" not in message


def test_inspect_says_verified_only_when_it_verified(damaged):
    r = cli_run("inspect", damaged)
    assert r.exit_code == 0 and "shards verified" in r.output
    r = cli_run("inspect", damaged, "--json")
    assert json.loads(r.output)["verified"] is True
    shard = sorted(damaged.glob("val-*.h5"))[0]
    flip_image_bytes(shard)
    r = cli_run("inspect", damaged)
    assert r.exit_code == 2 and "shards verified" not in r.output
    assert str(shard) in one_line(r)


def test_training_and_eval_stop_at_a_damaged_shard(damaged, tmp_path_factory, tmp_path):
    cls = cls_run_for(damaged, tmp_path_factory)
    seg = tmp_path / "seg"
    train_seg(seg_config(damaged, cls, seg, iters=1, bn_batches=0))  # intact: it runs
    strong, weak, val = (sorted(damaged.glob(f"{k}-*.h5"))[0] for k in ("strong", "weak", "val"))
    for shard in (strong, weak, val):
        flip_image_bytes(shard)
    common = ["--device", "cpu", "--workers", "0"]
    runs = {
        strong: ["train-seg", "--data", damaged, "--cls", cls, "--out", tmp_path / "s2",
                 "--iters", "1", *common],
        weak: ["train-cls", "--data", damaged, "--out", tmp_path / "c2", "--arch", "vgg16_bn",
               "--width", "0.125", "--input-size", "64", "--weights", "none", "--iters", "1",
               *common],
        val: ["eval", "--data", damaged, "--cls", cls, "--seg", seg, *common],
    }  # fmt: skip
    for shard, args in runs.items():
        r = cli_run(*args)
        assert r.exit_code == 2, (args[0], r.output)
        assert str(shard) in one_line(r) and "damaged" in one_line(r), (args[0], r.output)


def test_rerunning_prepare_repairs_a_damaged_shard(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    before = shard_content(out)
    flip_image_bytes(sorted(out.glob("weak-*.h5"))[0])
    assert cli_run("inspect", out).exit_code == 2
    assert prep(synth_root, out).exit_code == 0
    assert shard_content(out) == before
    assert cli_run("inspect", out).exit_code == 0


BROKEN_MANIFESTS = {
    "deleted": None,
    "truncated": lambda text: text[: len(text) // 2],
    "list": lambda text: "[]",
    "empty object": lambda text: "{}",
    "entry without sha256": lambda text: json.dumps(
        {**json.loads(text), "shards": [{"file": "weak-00000.h5", "kind": "weak"}]}
    ),
}


@pytest.mark.parametrize("how", BROKEN_MANIFESTS)
def test_a_broken_manifest_is_one_line_for_readers_and_rebuilt_by_prepare(
    synth_root, tmp_path, how
):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    before = shard_content(out)
    manifest = out / "manifest.json"
    original = json.loads(manifest.read_text())
    kept = sorted(out.glob("*.h5"))[1:]
    untouched = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept}
    sorted(out.glob("*.h5"))[0].unlink()  # one shard lost too: only it is rebuilt
    edit = BROKEN_MANIFESTS[how]
    if edit is None:
        manifest.unlink()
    else:
        manifest.write_text(edit(manifest.read_text()))

    for reader in READERS.values():
        with pytest.raises(UserError) as e:
            reader(out)
        assert str(manifest) in str(e.value)
    r = cli_run("inspect", out)
    assert r.exit_code == 2 and str(manifest) in one_line(r)

    r = prep(synth_root, out)
    assert r.exit_code == 0, r.output
    assert shard_content(out) == before
    rebuilt = json.loads(manifest.read_text())
    assert rebuilt["complete"]
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == untouched

    def entries(m):
        return [{k: v for k, v in e.items() if "seconds" not in k} for e in m["shards"]]

    assert entries(rebuilt) == entries(original)
    assert rebuilt["splits"] == original["splits"]


def test_salvage_rejects_a_shard_whose_content_changed(prepared, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(prepared, out)
    chash = json.loads((out / "manifest.json").read_text())["config_hash"]
    entries, _, foreign = salvage_shards(out, chash)
    assert len(entries) == len(list(out.glob("*.h5"))) and not foreign
    victim = sorted(out.glob("strong-*.h5"))[0]
    flip_image_bytes(victim)
    entries, _, _ = salvage_shards(out, chash)
    assert victim.name not in {e["file"] for e in entries}
    _, _, foreign = salvage_shards(out, "another-config")
    assert len(foreign) == len(list(out.glob("*.h5")))


def test_lost_manifest_beside_shards_of_another_config_is_refused(synth_root, tmp_path):
    out = tmp_path / "prep"
    assert prep(synth_root, out).exit_code == 0
    (out / "manifest.json").unlink()
    r = CliRunner().invoke(cli, ["prepare", str(out), "--root", str(synth_root), "--dataset",
                                 "voc", "--proposals", "5", "--jobs", "1"])  # fmt: skip
    assert r.exit_code == 2
    assert "different configuration" in one_line(r) and str(out) in one_line(r)


def test_skipped_images_survive_a_manifest_rebuild(synth_copy, tmp_path):
    bad = sorted((synth_copy / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[-1]
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "prep"
    assert prep(synth_copy, out, "--skip-bad").exit_code == 0
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    assert any(s["file"] == str(bad) for s in skipped)
    (out / "manifest.json").unlink()
    assert prep(synth_copy, out, "--skip-bad").exit_code == 0
    again = json.loads((out / "manifest.json").read_text())["skipped"]
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, skipped))
    assert np.all([s.get("shard") for s in again if s["file"] == str(bad)])
