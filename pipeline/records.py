"""What a dataset adapter hands to `prepare`: image records and their splits.

Adapters (VOC, COCO, folder) only *list* data; nothing is decoded here, so listing
10k images is instant and decoding happens in the parallel shard writers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CocoMask:
    """A label map still to be painted from COCO annotations.

    ``anns`` holds ``(class_index, segmentation, iscrowd)`` in painting order: later
    entries overwrite earlier ones, crowd regions are painted 255 last.
    """

    height: int
    width: int
    anns: tuple[tuple[int, Any, int], ...]


MaskSource = Path | CocoMask


@dataclass(frozen=True)
class Record:
    """One image: where its pixels are, where its label map is (if any), its labels.

    ``labels`` are image-level class indices (1..C). ``None`` means "derive them from
    the mask"; weak-only images (no mask) must carry them.
    """

    id: str
    image: Path
    mask: MaskSource | None = None
    labels: tuple[int, ...] | None = None


@dataclass
class DatasetSplits:
    """A dataset as adapters describe it: class names and the train / val records."""

    name: str
    classes: list[str]  # index 0 is background
    train: list[Record]
    val: list[Record]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Object classes C (background excluded)."""
        return len(self.classes) - 1
