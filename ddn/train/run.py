"""The run directory: config.json, metrics.csv, checkpoints, model.pt, RNG states.

A run directory (``--out``) holds:

- ``config.json``: every setting, resolved (defaults filled in, iterations computed).
- ``metrics.csv``: one row per log step or evaluation (timm's summary.csv spirit);
  columns are fixed when the file is made, a value a row lacks is left blank.
- ``checkpoint-<step>.pt``: one dict {model, optimizer, lr_scheduler, step, epoch, rng,
  config}, written atomically (temporary file + ``os.replace``); the last
  `KEEP_CHECKPOINTS` are kept. ``--resume`` continues from the newest.
- ``model.pt``: the final weights and the config, what the next stage loads
  (train-seg loads a classifier run's, eval a segmenter run's).

Everything saved loads with ``torch.load(weights_only=True)``: RNG states are stored
as tensors and plain Python values, never as pickled objects.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError

CONFIG = "config.json"
METRICS = "metrics.csv"
MODEL = "model.pt"
KEEP_CHECKPOINTS = 2
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.pt$")

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
        "val_every",
        "crop_path",
        "out",
        "wait",
    }
)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


# ---------------------------------------------------------------- the directory


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1][1] if found else None


def open_run(run: Path, config: dict[str, Any], resume: bool) -> Path | None:
    """Create or check the run directory; the checkpoint to resume from, if any.

    A run that already has checkpoints is never overwritten silently: without
    ``--resume`` that is an error, and ``--resume`` with different settings is refused
    (naming them) rather than mixing two configurations in one run.
    """
    run = Path(run)
    latest = latest_checkpoint(run)
    if latest is None and (run / MODEL).is_file() and not resume:
        raise UserError(f"{run}: holds a finished run (model.pt); choose another --out")
    if latest is not None and not resume:
        raise UserError(
            f"{run}: holds checkpoints; pass --resume to continue or choose another --out"
        )
    if latest is not None:
        saved = read_json(run / CONFIG) if (run / CONFIG).is_file() else {}
        changed = sorted(
            k
            for k in set(saved) | set(config)
            if k not in RUNTIME_KEYS and saved.get(k) != config.get(k)
        )
        if changed:
            shown = ", ".join(f"{k} ({saved.get(k)!r} -> {config.get(k)!r})" for k in changed[:4])
            raise UserError(f"{run}: --resume with different settings: {shown}")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run}: cannot create the run directory ({e.strerror or e})") from None
    write_json(run / CONFIG, config)
    return latest


class MetricsLog:
    """Append-only CSV of metrics; on resume, rows past the resumed step are dropped
    (they are about to be recomputed)."""

    def __init__(self, path: Path, columns: Iterable[str], resume_step: int | None) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [
                    r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step
                ]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def has(self, step: int, column: str) -> bool:
        """Whether a row of ``step`` has a value in ``column`` (e.g. a validation)."""
        with self.path.open(newline="") as f:
            return any(r.get("step") == str(step) and r.get(column) for r in csv.DictReader(f))

    def write(self, row: Mapping[str, Any]) -> None:
        clean = {k: _cell(v) for k, v in row.items()}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore", lineterminator="\n").writerow(
                clean
            )


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
    atomic_write_bytes(path, lambda p: torch.save(state, p))
    for _, old in checkpoints(run)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from e


def save_model(run: Path, model_state: Mapping[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """``model.pt``: final weights + config, what the next stage loads."""
    path = run / MODEL
    state = {"model": dict(model_state), "config": config}
    atomic_write_bytes(path, lambda p: torch.save(state, p))
    return path


def load_model(run_or_file: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """{'model': state dict, 'config': dict} of a finished run (a directory or model.pt)."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        hint = (
            " (the run has not finished: resume it first)" if latest_checkpoint(path.parent) else ""
        )
        raise UserError(f"{path}: not found{hint}")
    state = load_checkpoint(path, device)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path}: not a ddn model file (expected keys model, config)")
    return state
