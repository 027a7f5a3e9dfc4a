"""Reading what a run directory leaves: ``model.pt`` and ``checkpoint-<step>.pt``.

Inference (`ddn.trained_runs`) and training (`ddn.train`) both read these files; they live here,
outside `ddn.train`, so that loading a trained model imports no training code. The
writers and the rest of the run directory are `ddn.train.run_files`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError

MODEL = "model.pt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.pt$")


def state_dict_mismatch(e: Exception) -> str:
    """The telling line of a ``load_state_dict`` error, for a one-line message: its first
    "size mismatch" line, else the line after "Error(s) in loading state_dict for ...:"
    (which keys are missing or unexpected); at most 200 characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    sizes = [line for line in lines if line.startswith("size mismatch")]
    detail = sizes[0] if sizes else lines[1] if len(lines) > 1 else lines[0] if lines else ""
    detail = detail or type(e).__name__
    return detail if len(detail) <= 200 else detail[:197] + "..."


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1][1] if found else None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from e


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
