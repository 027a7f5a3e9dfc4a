"""Where `ddn prepare` builds its shards: processes on this machine (joblib's own
backend, ``--jobs``), or a Dask cluster (``--backend dask --scheduler ADDRESS``) through
joblib's dask backend.

A shard task carries paths, not pixels: the worker that runs it reads the images and
writes the shard into OUT itself (atomically, `pipeline.shards.write_shard`); only the
manifest entry travels back, and the driver alone writes the manifest. So OUT, the dataset
and the edge model must be on a filesystem every worker shares, under the same path.
Before any task runs, each worker shows that it sees the driver's OUT (it reads a token
the driver just wrote there), can write in it and can read the inputs; otherwise the run
stops with one line naming the worker and the path. Dask is imported only here, and only
for the dask backend: it is an optional extra (``pip install 'ddn[dask]'``).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joblib import Parallel, delayed, parallel_config

from pipeline import __version__
from pipeline.build import ShardTask, build_shard
from pipeline.errors import UserError
from pipeline.records import Record

if TYPE_CHECKING:
    from distributed import Client

BACKENDS = ("local", "dask")
INSTALL = "pip install 'ddn[dask]'"
# An unreachable scheduler should fail while the user still watches; a cluster that is
# up answers in well under a second.
CONNECT_TIMEOUT_S = 10.0

ShardResult = tuple[dict, list[dict]]  # build_shard's: manifest entry, images skipped
RunShards = Callable[[list[ShardTask]], Iterator[ShardResult]]


def check_backend(backend: str, scheduler: str | None) -> None:
    """Refuse a backend and scheduler that do not go together, before any work starts."""
    if backend not in BACKENDS:
        raise UserError(f"--backend: expected {' or '.join(BACKENDS)}, got {backend!r}")
    if backend == "dask" and not scheduler:
        raise UserError("--backend dask: needs --scheduler ADDRESS (e.g. tcp://HOST:8786)")
    if backend != "dask" and scheduler:
        raise UserError(f"--scheduler: only with --backend dask (the {backend} backend has none)")
    # find_spec, not an import: this runs for every `prepare`, and importing Dask takes
    # a second; only a run that uses it should pay for that.
    if backend == "dask" and importlib.util.find_spec("distributed") is None:
        raise UserError(f"--backend dask: Dask is not installed; {INSTALL}")


@contextmanager
def shard_runner(
    backend: str, scheduler: str | None, jobs: int, out: Path, inputs: list[Path]
) -> Iterator[RunShards]:
    """A function that builds shard tasks and yields their results as they finish.

    With the dask backend this connects to ``scheduler`` and checks that every worker
    sees ``out`` and can read ``inputs`` (a few of the files the tasks will read), so a
    cluster that cannot do the work fails here, in one line, before any task runs.
    """
    if backend == "local":
        yield lambda todo: Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(build_shard)(t) for t in todo
        )
        return
    assert scheduler is not None  # check_backend
    with _connect(scheduler) as client:
        check_workers(client, scheduler, out, inputs)
        yield lambda todo: _run_on_cluster(client, todo)


@contextmanager
def _connect(address: str) -> Iterator[Client]:
    import asyncio

    from distributed import Client
    from distributed.comm import connect

    async def reach() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S)
        await comm.close()

    # Reach the scheduler before making a Client: a Client that failed to connect is
    # closed again when garbage-collected, which waits and then prints a traceback.
    try:
        asyncio.run(reach())
    except ValueError as e:
        raise UserError(f"--scheduler {address}: not a scheduler address ({e})") from None
    except OSError:
        raise UserError(
            f"--scheduler {address}: no Dask scheduler answered within "
            f"{CONNECT_TIMEOUT_S:g} s; is `dask scheduler` running there, and the port open?"
        ) from None
    client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    try:
        yield client
    finally:
        client.close()


def check_workers(client: Client, address: str, out: Path, inputs: list[Path]) -> None:
    """Raise a UserError naming the first worker that cannot do shard tasks, and why."""
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise UserError(
            f"--scheduler {address}: the Dask scheduler has no workers; start them with "
            f"`dask worker {address}` on hosts that share {out}"
        ) from None
    token = secrets.token_hex(16)
    probe = out / f".cluster-probe-{token[:8]}"
    probe.write_text(token)
    try:
        answers = client.run(
            worker_problem,
            str(out.absolute()),
            probe.name,
            token,
            [str(p.absolute()) for p in inputs],
            __version__,
            on_error="return",
        )
    finally:
        probe.unlink(missing_ok=True)
    problems = []
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            # Most likely ddn itself is missing there: the check is ddn's own code.
            problems.append(
                f"Dask worker {worker}: cannot run ddn's check ({type(answer).__name__}: "
                f"{answer}); install this ddn on every worker"
            )
        elif answer[1] is not None:
            problems.append(f"Dask worker {worker} on {answer[0]}: {answer[1]}")
    if problems:
        more = f" (and {len(problems) - 1} more worker(s))" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


SHARED = "must be on a filesystem every worker shares, under the same path"


def worker_problem(
    out: str, token_name: str, token: str, inputs: list[str], version: str
) -> tuple[str, str | None]:
    """Run on each worker: its host name and what keeps it from building shards into
    ``out``, or None. ``out/token_name`` holds ``token`` on the driver's OUT: a worker
    that reads something else there is looking at another directory of the same name
    (a local disk, not the share), where its shards would be lost to the driver."""
    host = socket.gethostname()
    where = Path(out)
    if not where.is_dir():
        return host, f"cannot see OUT {out}; it {SHARED}"
    try:
        seen = (where / token_name).read_text()
    except OSError:
        seen = None
    if seen != token:
        return host, f"{out} is not the driver's OUT (another filesystem?); OUT {SHARED}"
    probe = where / f".write-probe-{host}-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        return host, f"cannot write in OUT {out} ({e.strerror or e})"
    for path in inputs:
        if not os.access(path, os.R_OK):
            return host, f"cannot read the input {path}; the dataset {SHARED}"
    if version != __version__:
        return host, f"runs ddn {__version__}, the driver ddn {version}; install one ddn everywhere"
    return host, None


def portable(task: ShardTask) -> ShardTask:
    """``task`` with absolute paths: a worker on another host has another working
    directory, so a path relative to the driver's would name another file there."""
    proposals = task.crops.proposals
    edge_model = os.path.abspath(proposals.edge_model) if proposals.edge_model else None
    return replace(
        task,
        out=task.out.absolute(),
        records=[_absolute(r) for r in task.records],
        crops=replace(task.crops, proposals=replace(proposals, edge_model=edge_model)),
    )


def _absolute(record: Record) -> Record:
    mask: Any = record.mask.absolute() if isinstance(record.mask, Path) else record.mask
    return replace(record, image=record.image.absolute(), mask=mask)


def _run_on_cluster(client: Client, todo: list[ShardTask]) -> Iterator[ShardResult]:
    from distributed import KilledWorker
    from joblib._dask import DaskDistributedBackend  # what parallel_config("dask") makes

    class ClusterOnly(DaskDistributedBackend):
        # joblib runs a call whose backend reports one worker in the calling process: on a
        # cluster of one single-threaded worker, the tasks would run in the driver, which
        # need not have the cores, and the run would only look distributed.
        def effective_n_jobs(self, n_jobs: int) -> int:
            return max(2, super().effective_n_jobs(n_jobs))

    # The backend is bound when Parallel is made, so the config need not stay active
    # while the driver consumes the results (and writes the manifest).
    with parallel_config(backend=ClusterOnly(client=client)):
        parallel = Parallel(n_jobs=-1, return_as="generator_unordered")
    try:
        yield from parallel(delayed(build_shard)(portable(t)) for t in todo)
    except KilledWorker as e:
        # A worker process died (out of memory, killed) on the same task more than
        # the scheduler allows: not ddn's bug, and the finished shards are kept.
        raise UserError(
            f"a Dask worker died while building shards ({e}); finished shards are kept: "
            "re-run the command to go on"
        ) from None
