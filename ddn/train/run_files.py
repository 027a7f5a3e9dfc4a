"""The run directory: config.json, metrics.csv, checkpoints, model.pt, RNG states.

A run directory (``--out``) holds:

- ``config.json``: every setting, resolved (defaults filled in, iterations computed).
- ``metrics.csv``: one row per log step or evaluation (timm's summary.csv spirit);
  columns are fixed when the file is made, a value a row lacks is left blank.
- ``checkpoint-<step>.pt``: one dict {model, optimizer, lr_scheduler, step, epoch, rng,
  config}, written atomically (temporary file + ``os.replace``); the last
  `KEEP_CHECKPOINTS` are kept. ``--resume`` continues from the newest that loads
  (`ddn.train.checkpoint.read_resume`).
- ``model.pt``: the final weights and the config, what the next stage loads
  (train-seg loads a classifier run's, eval a segmenter run's).
- ``events.out.tfevents.*``: metrics.csv's rows (and train-seg's crops) for TensorBoard,
  unless ``--no-tensorboard`` (`ddn.train.tensorboard`).

Reading model.pt and the checkpoints is `ddn.model_file`'s (re-exported here), so that
inference loads a model without importing training code.

Everything saved loads with ``torch.load(weights_only=True)``: RNG states are stored
as tensors and plain Python values, never as pickled objects. A write that fails (a full
disk) is one `UserError` naming the file and the cause; the earlier file stays as it was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from ddn.model_file import MODEL, checkpoints, latest_checkpoint
from ddn.model_file import load_checkpoint as load_checkpoint  # re-exported: the run's readers
from ddn.model_file import load_model as load_model
from pipeline.errors import UserError

CONFIG = "config.json"
METRICS = "metrics.csv"
KEEP_CHECKPOINTS = 2

# Settings that may change between a run and its resumption: they do not change what is
# computed (or, for the device, only within float tolerance).
RUNTIME_KEYS = frozenset(
    {
        "resume",
        "workers",
        "device",
        "compile",
        "amp",
        "channels_last",
        "log_every",
        "ckpt_every",
        "tensorboard",
        "val_every",
        "crop_path",
        "device_crops_budget",
        "out",
        "wait",
    }
)


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], None], what: str) -> None:
    """Call ``write(f)`` on a temporary file, then rename it onto ``path``: readers never
    see half a file, and a failed write leaves the earlier ``path`` as it was.

    The file is a Python one: a full disk then surfaces as an OSError naming the cause
    (torch.save's own writer turns it into "unexpected pos ..."), which becomes a
    `UserError` ("<path>: could not write <what>: No space left on device").
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except Exception as e:
        if (error := _write_error(path, what, e)) is None:
            raise
        raise error from e
    finally:
        tmp.unlink(missing_ok=True)


def append_text(path: Path, text: str, what: str) -> None:
    """Append ``text`` whole or not at all: a write cut short (a full disk) is cut back off,
    so the file never ends in half a row."""
    data = memoryview(text.encode())
    try:
        with open(path, "ab", buffering=0) as f:
            end = f.seek(0, os.SEEK_END)
            try:
                while data:
                    data = data[f.write(data) :]
            except OSError:
                f.truncate(end)
                raise
    except OSError as e:
        raise _write_error(path, what, e) from e


def _write_error(path: Path, what: str, e: BaseException) -> UserError | None:
    """The one-line error of a write that failed on an OSError (anywhere in ``e``'s chain:
    torch.save raises its own error on top); None for anything else, a bug."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    return UserError(f"{path}: could not write {what}: {cause.strerror or cause}")


def write_json(path: Path, data: Mapping[str, Any], what: str = "settings") -> None:
    text = json.dumps(data, indent=1) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()), what)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


# ---------------------------------------------------------------- the directory


def open_run(run: Path, config: dict[str, Any], resume: bool) -> Path | None:
    """Create or check the run directory; its newest checkpoint, if any.

    A run that already has checkpoints is never overwritten silently: without
    ``--resume`` that is an error, and ``--resume`` with different settings is refused
    (naming them) rather than mixing two configurations in one run. (Without config.json
    each checkpoint's own config is compared when it is read.)
    """
    run = Path(run)
    latest = latest_checkpoint(run)
    if latest is None and (run / MODEL).is_file() and not resume:
        raise UserError(f"{run}: holds a finished run (model.pt); choose another --out")
    if latest is not None and not resume:
        raise UserError(
            f"{run}: holds checkpoints; pass --resume to continue or choose another --out"
        )
    if latest is not None and (run / CONFIG).is_file():
        changed = changed_settings(read_json(run / CONFIG), config)
        if changed:
            raise UserError(f"{run}: --resume with different settings: {changed}")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run}: cannot create the run directory ({e.strerror or e})") from None
    write_json(run / CONFIG, config)
    return latest


def changed_settings(saved: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The settings (all but `RUNTIME_KEYS`) that differ, as "key (saved -> now)", the
    first four; empty when none do."""
    changed = sorted(
        k
        for k in set(saved) | set(config)
        if k not in RUNTIME_KEYS and saved.get(k) != config.get(k)
    )
    return ", ".join(f"{k} ({saved.get(k)!r} -> {config.get(k)!r})" for k in changed[:4])


class RowSink(Protocol):
    """Where a `MetricsLog` also sends its rows (`ddn.train.tensorboard.Board`)."""

    def scalars(self, row: Mapping[str, Any]) -> None: ...


class MetricsLog:
    """Append-only CSV of metrics; on resume, rows past the resumed step are dropped
    (they are about to be recomputed). A row is written whole or not at all, then also
    goes to the sink given to `mirror` (TensorBoard), if any."""

    def __init__(self, path: Path, columns: Iterable[str], resume_step: int | None) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [
                    r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step
                ]
        # Rewritten through a temporary file: a full disk must not cost the kept rows.
        text = self._csv(rows, header=True)
        atomic_write_bytes(self.path, lambda f: f.write(text.encode()), "metrics")
        self.sink: RowSink | None = None

    def mirror(self, sink: RowSink) -> None:
        """Send every row written from now on to ``sink`` as well."""
        self.sink = sink

    def has(self, step: int, column: str) -> bool:
        """Whether a row of ``step`` has a value in ``column`` (e.g. a validation)."""
        with self.path.open(newline="") as f:
            return any(r.get("step") == str(step) and r.get(column) for r in csv.DictReader(f))

    def write(self, row: Mapping[str, Any]) -> None:
        clean = {k: _cell(v) for k, v in row.items()}
        append_text(self.path, self._csv([clean]), "metrics")
        if self.sink is not None:
            self.sink.scalars(row)

    def _csv(self, rows: Iterable[Mapping[str, Any]], header: bool = False) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, extrasaction="ignore", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"  # NaN (e.g. AP of a class absent from val): blank
    return v


# ---------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _tuples(x: Any) -> Any:
    # random.setstate wants tuples; a round trip through some serialisers gives lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(run: Path, state: dict[str, Any], keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write ``checkpoint-<state['step']>.pt`` atomically, then drop all but the last ``keep``."""
    path = run / f"checkpoint-{int(state['step'])}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f), "checkpoint")
    for _, old in checkpoints(run)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def save_model(run: Path, model_state: Mapping[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """``model.pt``: final weights + config, what the next stage loads."""
    path = run / MODEL
    state = {"model": dict(model_state), "config": config}
    atomic_write_bytes(path, lambda f: torch.save(state, f), "model")
    return path
