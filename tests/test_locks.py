"""One writer per directory (`pipeline.lock`): a second `prepare` or trainer into a
directory in use stops with one line naming the holder, or waits with --wait; the lock of
a killed holder is taken over at once; the finished directory is whole."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from ddn.train.cls import train_cls
from pipeline.errors import UserError
from pipeline.inspect import summarize
from pipeline.lock import LOCK_FILE, exclusive_dir
from pipeline.manifest import read_manifest
from pipeline.shards import sha256_file
from tests.trainutil import ARCH, SIZE, WIDTH, cls_config, make_cls_run, make_prepared

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SINCE = r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
# Holds DIR until its stdin closes; with "fork", first forks a child that outlives it
# (what a DataLoader worker is) and prints the child's pid.
HOLDER = """
import os, sys, time
from pipeline.lock import exclusive_dir
with exclusive_dir(sys.argv[1], "run directory"):
    if sys.argv[2:] == ["fork"]:
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(w, b"x")  # fork's hooks have run in the child by now
            time.sleep(60)
            os._exit(0)
        os.read(r, 1)
        print(child, flush=True)
    print("held", flush=True)
    sys.stdin.read()
"""


def start_holder(d: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """A process holding ``d``, and what it printed before saying so."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(d), *extra],
        env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    printed = []
    while (line := p.stdout.readline().strip()) != "held":
        assert line, "the holder died before holding"
        printed.append(line)
    return p, printed


def holder_pid(d: Path) -> int | None:
    text = (d / LOCK_FILE).read_text() if (d / LOCK_FILE).is_file() else ""
    return json.loads(text)["pid"] if text.strip() else None


def test_second_writer_refused_naming_the_holder(tmp_path):
    d = tmp_path / "run"
    holder, _ = start_holder(d)
    try:
        with pytest.raises(UserError) as e, exclusive_dir(d, "run directory"):
            pass
        message = str(e.value)
        assert message.startswith(f"{d}: run directory in use by pid {holder.pid} on ")
        assert f" on {socket.gethostname()} " in message and re.search(SINCE, message)
        assert f"(-c {d})" in message  # the holder's command line (python -c)
        assert message.endswith("wait for it to finish, or pass --wait")
    finally:
        holder.communicate("")
    with exclusive_dir(d, "run directory"):  # released with its holder
        assert holder_pid(d) == os.getpid()
    assert (d / LOCK_FILE).is_file()  # never deleted: see pipeline/lock.py


def test_wait_blocks_until_the_holder_releases(tmp_path, capsys):
    d = tmp_path / "run"
    holder, _ = start_holder(d)
    acquired = threading.Event()

    def waiter() -> None:
        with exclusive_dir(d, "run directory", wait=True):
            acquired.set()

    t = threading.Thread(target=waiter)
    try:
        t.start()
        assert not acquired.wait(0.5)  # still held
        holder.communicate("")
        assert acquired.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
        t.join(10)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"waiting for {d}: held by pid {holder.pid} on ")


@pytest.mark.parametrize("with_child", [False, True], ids=["alone", "with-forked-child"])
def test_lock_of_a_killed_holder_is_taken_at_once(tmp_path, with_child):
    d = tmp_path / "run"
    holder, printed = start_holder(d, *(["fork"] if with_child else []))
    child = int(printed[0]) if with_child else None
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        # A forked child (a DataLoader worker) still alive must not keep the lock.
        if child is not None:
            os.kill(child, 0)
        t0 = time.monotonic()
        with exclusive_dir(d, "run directory"):  # no wait: it must be free now
            assert holder_pid(d) == os.getpid()
        assert time.monotonic() - t0 < 1.0
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)


def assert_prepared_whole(out: Path) -> None:
    manifest = read_manifest(out)  # complete, this format
    assert manifest["shards"]
    for entry in manifest["shards"]:
        shard = out / entry["file"]
        assert shard.stat().st_size == entry["bytes"], entry["file"]
        assert sha256_file(shard) == entry["sha256"], entry["file"]
    summary = summarize(out)  # what `ddn inspect` reads
    assert summary["complete"] and summary["strong_images"] > 0
    assert not list(out.glob(".*.tmp"))


PREPARE = ["--dataset", "voc", "--method", "random", "--proposals", "4", "--jobs", "1",
           "--strong-per-class", "2"]  # fmt: skip


def test_two_prepares_together_one_prepares_the_other_stops_with_one_line(synth_root, tmp_path):
    out = tmp_path / "prep"
    args = [sys.executable, "-m", "cli.main", "prepare", str(out), "--root", str(synth_root)]
    procs = [
        subprocess.Popen([*args, *PREPARE], env=ENV, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        # Stop the winner as soon as it holds the lock: however the two were scheduled,
        # the other then meets it holding, and cannot finish after it.
        deadline = time.monotonic() + 60
        while (pid := holder_pid(out)) not in [p.pid for p in procs]:
            assert all(p.poll() is None for p in procs), "one finished, never seen holding"
            assert time.monotonic() < deadline, "neither took the lock"
            time.sleep(0.005)
        os.kill(pid, signal.SIGSTOP)
        winner, loser = sorted(procs, key=lambda p: p.pid != pid)
        err = loser.communicate(timeout=60)[1]
        os.kill(pid, signal.SIGCONT)
        winner.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    assert winner.returncode == 0
    assert loser.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {out}: prepared directory in use by pid {winner.pid} on ")
    assert re.search(SINCE, lines[0]) and f"prepare {out} --root" in lines[0]
    assert_prepared_whole(out)


def test_prepare_wait_follows_the_holder_and_overwrite_keeps_the_lock(synth_root, tmp_path):
    out = tmp_path / "prep"
    args = ["prepare", str(out), "--root", str(synth_root), *PREPARE]
    results = []

    def prepare_waiting() -> None:
        results.append(CliRunner().invoke(cli, [*args, "--wait"]))

    with exclusive_dir(out, "test"):
        t = threading.Thread(target=prepare_waiting)
        t.start()
        t.join(0.5)
        assert t.is_alive() and not (out / "manifest.json").exists()  # waiting, not writing
    t.join(60)
    r = results[0]
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"waiting for {out}: held by pid {os.getpid()} on ")
    assert_prepared_whole(out)
    # --overwrite clears the old shards, but not the lock a concurrent command may be
    # blocked on: a new file would let two commands each hold "the" lock.
    inode = (out / LOCK_FILE).stat().st_ino
    r = CliRunner().invoke(cli, [*args, "--seed", "3", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / LOCK_FILE).stat().st_ino == inode
    assert_prepared_whole(out)
    assert read_manifest(out)["config"]["split"]["seed"] == 3


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("locks"), images=24)


TRAIN = ["--iters", "1", "--batch", "4", "--device", "cpu", "--workers", "0", "--width",
         str(WIDTH), "--input-size", str(SIZE), "--weights", "none"]  # fmt: skip


def trainer_args(kind: str, prep: Path, out: Path, cls_run: Path) -> list[str]:
    common = ["--data", str(prep), "--out", str(out), *TRAIN]
    if kind == "train-cls":
        return ["train-cls", *common, "--arch", ARCH]
    seg = ["train-seg", *common, "--accum", "1", "--bn-batches", "0", "--crop-path", "cpu"]
    if kind == "train-seg":
        return [*seg, "--cls", str(cls_run)]
    return [*seg, "--baseline", "deconvnet", "--arch", ARCH]


@pytest.mark.parametrize("kind", ["train-cls", "train-seg", "deconvnet"])
def test_trainer_into_a_held_run_directory_stops_with_one_line(prep, tmp_path, kind):
    out = tmp_path / "run"
    classes = json.loads((prep / "manifest.json").read_text())["classes"][1:]
    cls_run = make_cls_run(tmp_path / "cls", classes)
    args = trainer_args(kind, prep, out, cls_run)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with exclusive_dir(out, "test"):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1, r.output
        assert lines[0].startswith(f"error: {out}: run directory in use by pid {os.getpid()} on ")
        assert lines[0].endswith("wait for it to finish, or pass --wait")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "notes.txt"]  # untouched


def test_run_directory_held_for_the_whole_run_and_released_on_ctrl_c(prep, tmp_path):
    out = tmp_path / "run"
    seen = []

    def try_second_writer(step: int) -> None:
        with pytest.raises(UserError, match="in use by pid"), exclusive_dir(out, "test"):
            pass
        seen.append(step)
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cls(cls_config(prep, out, iters=2), on_step=try_second_writer)
    with exclusive_dir(out, "test"):  # released on the way out
        pass
    # --wait is how a command runs, not what it computes: --resume accepts it.
    train_cls(cls_config(prep, out, iters=2, resume=True, wait=True), on_step=try_second_writer)
    assert seen == [1, 2] and (out / "model.pt").is_file()
    with exclusive_dir(out, "test"):
        pass


def test_train_wait_trains_once_the_holder_is_done(prep, tmp_path):
    out = tmp_path / "run"
    args = trainer_args("train-cls", prep, out, tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with exclusive_dir(out, "test"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()
    r = CliRunner().invoke(cli, [*args, "--wait"])
    t.join(10)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"waiting for {out}: held by pid {os.getpid()} on ")
    assert (out / "model.pt").is_file()
    assert json.loads((out / "config.json").read_text())["wait"] is True


def test_demo_into_a_workspace_in_use_stops_before_writing(tmp_path):
    # A second demo would regenerate data/ while the first one's prepare reads it.
    out = tmp_path / "demo"
    with exclusive_dir(out, "test"):
        r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--images", "8"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {out}: demo directory in use by pid {os.getpid()} on ")
    assert len(r.output.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]
