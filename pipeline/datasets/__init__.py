"""Dataset adapters: list a dataset's images, masks and labels as `DatasetSplits`.

Adapters only list (no pixel decoding), so they are instant even for COCO; a missing
or corrupt image is reported later by the shard writer that reads it. What they do
check: the root and required directories, list files, ids, annotation json.
"""

from __future__ import annotations

from typing import Any

from pipeline.datasets.coco import load_coco
from pipeline.datasets.folder import load_folder
from pipeline.datasets.voc import VOC_CLASSES, load_voc
from pipeline.errors import UserError
from pipeline.records import DatasetSplits

ADAPTERS = {"voc": load_voc, "coco": load_coco, "folder": load_folder}

__all__ = ["ADAPTERS", "VOC_CLASSES", "load_coco", "load_dataset", "load_folder", "load_voc"]


def load_dataset(name: str, **options: Any) -> DatasetSplits:
    """``load_voc`` / ``load_coco`` / ``load_folder`` by name, with their keyword options."""
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(ADAPTERS)}") from None
    return adapter(**options)
