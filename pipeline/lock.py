"""One writer per directory: `ddn prepare`'s OUT and a trainer's --out.

Two commands writing one directory interleave their files: two `ddn prepare` runs into
one OUT once left a manifest that said complete with another run's size and sha256 for a
shard. So the writer holds an exclusive `fcntl.flock` on ``<dir>/.ddn.lock`` for as long
as it writes, with its pid, host, start time and command in the file; a second command
stops at once naming the holder, or waits for it (``wait``).

flock belongs to the open file, so the kernel drops it when the holder exits, however it
exits (kill -9 included): a lock left by a dead process is no lock, and the next command
takes it at once. The file itself is never deleted: a process that still has the old one
open would lock an inode nobody else sees, and two writers would each hold "the" lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from pipeline.errors import UserError


def wait_help(directory: str) -> str:
    """The --wait help of every command that takes this lock on ``directory``."""
    return (
        f"If another ddn command is writing {directory}, wait for it to finish instead of stopping."
    )


LOCK_FILE = ".ddn.lock"
HOLDER_WRITE_S = 1.0  # how long a holder that just took the lock may take to say who it is
_COMMAND_CHARS = 200

# Locks this process holds (file descriptors). A forked child (a DataLoader worker) would
# otherwise share the lock's open file: a parent killed with -9 would leave the directory
# locked until its children died, and a child could release the parent's lock.
_held: set[int] = set()


def _forget_in_child() -> None:
    for fd in _held:
        with suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@contextmanager
def exclusive_dir(path: Path, what: str, wait: bool = False) -> Iterator[Path]:
    """Hold ``path`` (created, parents too) as its only writer for the ``with`` block.

    Another holder: a `UserError` naming it (pid, host, since when, command), or with
    ``wait`` one line on stderr and a block until it is done. ``what`` names the
    directory's role in the message ("prepared directory", "run directory").
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the directory ({e.strerror or e})") from None
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror or e})") from None
    opener = os.getpid()
    try:
        _acquire(fd, path, what, wait)
        _held.add(fd)
        try:
            _record_holder(fd)
            yield path
        finally:
            if os.getpid() == opener:
                _held.discard(fd)
                with suppress(OSError):  # nobody holds it: say nothing about a past holder
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        # A forked child leaving the block: its copy is closed already and the number may
        # name another file now.
        if os.getpid() == opener:
            os.close(fd)


def _acquire(fd: int, path: Path, what: str, wait: bool) -> None:
    deadline = time.monotonic() + HOLDER_WRITE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _holder(fd)
        # Empty between a holder's flock and its write, or after it let go: look again.
        if holder is None and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        holder = holder or "another process"
        if not wait:
            raise UserError(
                f"{path}: {what} in use by {holder}; wait for it to finish, or pass --wait"
            )
        print(f"waiting for {path}: held by {holder}", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return


def _record_holder(fd: int) -> None:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
    command = " ".join(argv)
    if len(command) > _COMMAND_CHARS:
        command = command[: _COMMAND_CHARS - 3] + "..."
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
    }
    # Only for the message of a second command: a full disk must not stop this one.
    with suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _holder(fd: int) -> str | None:
    """The holder in words, from the lock file: 'pid N on HOST since T (COMMAND)'; None
    while the file says nothing whole."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on {info['host']} since {info['since']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return None
