"""ddn: DecoupledNet semi-supervised semantic segmentation.

The public Python API (README, "Python API"): `prepare`, `generate_crops`, `warp_crop`,
the readers `CropDataset`, `WeakDataset` and `ValDataset`, `load` (trained runs ->
`Predictor.segment`), `evaluate`, and `UserError`, the one exception raised for a
mistake in the input. Images are RGB uint8 H x W x 3 everywhere.

The names are imported on first use, so ``import ddn`` (and ``ddn --help``) costs
nothing: torch loads only with what needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline import __version__

# name -> the module that defines it
_API = {
    "prepare": "ddn.data",
    "generate_crops": "ddn.data",
    "warp_crop": "ddn.data",
    "Crops": "ddn.data",
    "CropDataset": "pipeline.readers",
    "WeakDataset": "pipeline.readers",
    "ValDataset": "pipeline.readers",
    "load": "ddn.predictor",
    "Predictor": "ddn.predictor",
    "Segmentation": "ddn.predictor",
    "evaluate": "ddn.evaluation",
    "UserError": "pipeline.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'ddn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
