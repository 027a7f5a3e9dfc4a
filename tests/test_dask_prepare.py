"""`ddn prepare --backend dask` (issue 13 section 2): shards built on a Dask cluster of two
worker processes are those of a local run, resume and refusal work as locally, and a
cluster that cannot do the work fails in one line before any task runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from pipeline import build, shards  # noqa: E402
from pipeline import cluster as cluster_module  # noqa: E402
from pipeline.build import CropSettings, ShardTask  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.proposals import ProposalConfig  # noqa: E402
from pipeline.records import Record  # noqa: E402
from pipeline.shards import ShardImages  # noqa: E402
from tests.test_prepare import shard_content  # noqa: E402
from tests.test_prepare_bad_input import assert_one_line_error, break_image, invoke  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("seconds", "proposal_seconds")  # the only manifest entries that depend on time


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as c:
        yield c


def on_cluster(cluster) -> list[str]:
    return ["--backend", "dask", "--scheduler", cluster.scheduler_address]


def untimed(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        for key in TIMED:
            entry.pop(key)
    return manifest


def test_cluster_shards_are_those_of_a_local_run(synth_root, cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "cluster"
    assert invoke(synth_root, local).exit_code == 0  # FAST: --jobs 1
    r = invoke(synth_root, remote, *on_cluster(cluster))
    assert r.exit_code == 0, r.output
    assert shard_content(remote) == shard_content(local)
    assert untimed(remote) == untimed(local)  # sha256 too: the files are byte-identical
    for name in ("weak", "strong", "val"):
        split = f"splits/{name}.txt"
        assert (remote / split).read_text() == (local / split).read_text()
    assert not list(remote.glob(".cluster-probe-*")) and not list(remote.glob(".write-probe*"))


def test_resume_on_the_cluster_rebuilds_only_the_missing_shard(synth_root, cluster, tmp_path):
    out = tmp_path / "prep"
    assert invoke(synth_root, out, *on_cluster(cluster)).exit_code == 0
    before = untimed(out)
    victim = sorted(out.glob("strong-*.h5"))[1]
    victim.unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    r = invoke(synth_root, out, *on_cluster(cluster))
    assert r.exit_code == 0, r.output
    assert "prepare: 2 images" in r.output  # the victim's two, nothing else
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5") if p != victim} == stamps
    assert untimed(out) == before
    r = invoke(synth_root, out, *on_cluster(cluster), "--seed", "7")
    assert_one_line_error(r, "different configuration", "(changed: crops.seed, split.seed)")


def test_a_bad_image_on_a_worker_is_the_usual_one_line_error(synth_copy, cluster, tmp_path):
    bad = break_image(synth_copy, "corrupt")
    r = invoke(synth_copy, tmp_path / "prep", *on_cluster(cluster))
    assert_one_line_error(r, str(bad))  # raised on a worker, shown as a local one is


def test_unreachable_scheduler_is_one_line(synth_root, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    r = invoke(synth_root, tmp_path / "prep", "--backend", "dask", "--scheduler", address)
    assert r.exit_code == 2
    assert r.output == (
        f"error: --scheduler {address}: no Dask scheduler answered within 1 s; is `dask "
        "scheduler` running there, and the port open?\n"
    )
    assert not list((tmp_path / "prep").glob("*.h5"))


def test_workers_that_cannot_read_an_input_are_named(cluster, tmp_path):
    missing = tmp_path / "elsewhere" / "0001.jpg"
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        with pytest.raises(UserError) as e:
            cluster_module.check_workers(client, "ADDR", tmp_path, [missing])
        workers = sorted(client.scheduler_info()["workers"])
    assert str(e.value).startswith(f"Dask worker {workers[0]} on {socket.gethostname()}: ")
    assert f"cannot read the input {missing}; the dataset must be on a filesystem" in str(e.value)
    assert str(e.value).endswith(" (and 1 more worker(s))")
    assert not list(tmp_path.glob(".cluster-probe-*"))


def _can_hide_dirs() -> bool:
    """Whether a process can get its own mount namespace, to play a host without the share."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_hide_dirs(), reason="no user + mount namespaces (unshare -Urm)")
def test_a_worker_that_cannot_see_out_is_named(synth_root, tmp_path):
    """A real worker whose host lacks the shared filesystem: it runs in its own mount
    namespace, where an empty tmpfs hides the directory that holds OUT."""
    share = tmp_path / "share"
    share.mkdir()
    out = share / "prep"
    with distributed.LocalCluster(n_workers=0, dashboard_address=":0") as scheduler:
        at = scheduler.scheduler_address
        hide = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
        dask_worker = [sys.executable, "-m", "distributed.cli.dask_worker", at, "--nthreads", "1"]
        command = ["unshare", "-Urm", "sh", "-c", hide, "sh", str(share), *dask_worker]
        worker = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with distributed.Client(at, set_as_default=False) as c:
                c.wait_for_workers(1, timeout=60)
                (address,) = c.scheduler_info()["workers"]
            r = invoke(synth_root, out, "--backend", "dask", "--scheduler", at)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert_one_line_error(r, f"Dask worker {address} on ", f"cannot see OUT {out}; it must be")
    assert not list(out.glob("*.h5")) and not list(out.glob(".cluster-probe-*"))


def test_worker_problem_says_what_a_worker_lacks(tmp_path):
    # The check a worker runs, called here: every case, on any machine.
    out = tmp_path / "out"
    out.mkdir()
    (out / ".token").write_text("abc")
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")

    def problem(out_dir=out, token="abc", inputs=(image,), version=cluster_module.__version__):
        host, why = cluster_module.worker_problem(
            str(out_dir), ".token", token, [str(p) for p in inputs], version
        )
        assert host == socket.gethostname()
        return why

    assert problem() is None
    assert problem(out_dir=tmp_path / "gone").startswith(f"cannot see OUT {tmp_path / 'gone'};")
    assert problem(token="xyz").startswith(f"{out} is not the driver's OUT (another filesystem?)")
    assert problem(inputs=[tmp_path / "b.jpg"]).startswith(f"cannot read the input {tmp_path}/b")
    assert problem(version="0.0.9").startswith("runs ddn ")
    assert not [p.name for p in out.iterdir() if p.name != ".token"]  # its probe is gone


def test_tasks_travel_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = Record("a", Path("img/a.jpg"), Path("masks/a.png"))
    crops = CropSettings(ProposalConfig(edge_model="model.yml.gz"))
    task = ShardTask("strong", 0, [record], ["background", "x"], "h", Path("out"), crops)
    moved = cluster_module.portable(task)
    assert moved.out == tmp_path / "out" and moved.path == tmp_path / "out" / task.path.name
    assert moved.records[0].image == tmp_path / "img/a.jpg"
    assert moved.records[0].mask == tmp_path / "masks/a.png"
    assert moved.crops.proposals.edge_model == str(tmp_path / "model.yml.gz")
    assert task.out == Path("out")  # the driver's task is left as it was


def test_two_writers_of_one_shard_both_leave_it_whole(tmp_path, monkeypatch):
    """A task of an interrupted cluster run goes on writing on its worker (Dask cannot stop
    a running task) while the re-run builds the same shard: neither may break the other."""
    images = ShardImages(["a"], [b"not decoded here"], [(2, 2)], [np.array([1], np.uint8)])
    path = tmp_path / "weak-00000.h5"
    real, inside, release = shards.content_digest, threading.Event(), threading.Event()

    def held_open(f):  # the stale writer stops with its file open and half done
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            release.wait(30)
        return real(f)

    monkeypatch.setattr(shards, "content_digest", held_open)
    write = partial(shards.write_shard, path, "weak", 0, ["background", "x"], "hash", images)
    with ThreadPoolExecutor(1) as pool:
        stale = pool.submit(write)
        assert inside.wait(30)
        fresh = write()
        release.set()
        assert stale.result() == fresh  # the same bytes, whichever rename came last
    assert fresh["sha256"] == shards.sha256_file(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_one_single_threaded_worker_still_builds_on_the_cluster(synth_root, tmp_path, monkeypatch):
    # joblib runs a call in the calling process when its backend reports one worker;
    # here the driver's own shard builder fails, so a task run there would show.
    def not_here() -> None:
        raise RuntimeError("a shard task ran in the driver")

    monkeypatch.setattr(build, "set_single_thread", not_here)
    with distributed.LocalCluster(
        n_workers=1, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as one:
        r = invoke(synth_root, tmp_path / "prep", *on_cluster(one))
    assert r.exit_code == 0, r.output
