"""Read access to the shards of a prepared directory, safe across DataLoader workers.

`ShardSet` maps a global example index to (shard, row) from the manifest's counts alone,
so a dataset can be built, pickled and forked before any HDF5 file is opened. Files
are opened on first use in each process: an h5py handle inherited through fork shares
the parent's HDF5 state and breaks, and a spawned worker cannot unpickle one.

`ByteLRU` is the per-worker cache of decoded source images: ~200 training crops
share each strong image, so decoding it once per worker instead of once per crop is
where most of the reader's speed comes from.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.errors import UserError
from pipeline.integrity import verify_shards
from pipeline.manifest import read_manifest
from pipeline.shards import open_shard

# Handles a forked child inherited from its parent. They are never closed in the child:
# closing would release HDF5's file lock on a descriptor the parent still uses.
_INHERITED: list[h5py.File] = []


class ShardSet:
    """The finished shards of one kind, opened lazily and once per process."""

    def __init__(
        self, prepared_dir: str | Path, kind: str, count_key: str, preload: tuple[str, ...] = ()
    ) -> None:
        self.root = Path(prepared_dir)
        manifest = read_manifest(self.root)
        self.classes: list[str] = list(manifest["classes"])
        entries = sorted(
            (s for s in manifest["shards"] if s["kind"] == kind), key=lambda s: s["index"]
        )
        # Before any byte is read: a damaged shard is one line naming it, not wrong
        # pixels or an h5py traceback (pipeline.integrity).
        verify_shards(self.root, entries)
        self.kind = kind
        self.count_key = count_key
        self.files = [self.root / s["file"] for s in entries]
        self.counts = [int(s[count_key]) for s in entries]
        # ends[k] = number of examples in shards 0..k; bisect finds the shard of an index.
        self.ends = np.cumsum(self.counts, dtype=np.int64).tolist()
        self.preload = preload
        self._handles: dict[int, h5py.File] = {}
        self._columns: dict[int, dict[str, np.ndarray]] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row) of global example ``index`` (negative indices count from the end)."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} {self.kind} examples")
        shard = bisect.bisect_right(self.ends, index)
        return shard, index - (self.ends[shard - 1] if shard else 0)

    def file(self, shard: int) -> h5py.File:
        """The open handle of ``shard`` in this process."""
        if os.getpid() != self._pid:
            _INHERITED.extend(self._handles.values())
            self._handles = {}
            self._pid = os.getpid()
        f = self._handles.get(shard)
        if f is None:
            f = self._open(shard)
            self._handles[shard] = f
        return f

    def columns(self, shard: int) -> dict[str, np.ndarray]:
        """The ``preload`` datasets of ``shard``, read whole once per process.

        Small per-row tables (crop boxes, labels) are indexed once per example; one
        numpy lookup is ~100x cheaper than an HDF5 read.
        """
        cols = self._columns.get(shard)
        if cols is None:
            f = self.file(shard)
            cols = {name: f[name][()] for name in self.preload}
            self._columns[shard] = cols
        return cols

    def _open(self, shard: int) -> h5py.File:
        path = self.files[shard]
        try:
            f = open_shard(path)
        except FileNotFoundError:
            raise UserError(f"{path}: shard listed in the manifest is missing") from None
        except OSError as e:
            raise UserError(f"{path}: cannot open shard ({e})") from None
        n = _rows(f, self.count_key)
        if n != self.counts[shard]:
            f.close()
            raise UserError(
                f"{path}: holds {n} {self.count_key}, the manifest says {self.counts[shard]}; "
                "re-run `ddn prepare --overwrite`"
            )
        return f

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Spawned workers re-read what they need; shipping tables (or handles, which
        # cannot be pickled) to each one is wasted work.
        state["_handles"] = {}
        state["_columns"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def _rows(f: h5py.File, count_key: str) -> int:
    dataset = "crop_image" if count_key == "crops" else "image_ids"
    return int(f[dataset].shape[0])


class ByteLRU:
    """Least-recently-used cache of numpy arrays, bounded by their total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[tuple[np.ndarray, ...], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> tuple[np.ndarray, ...] | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: tuple[np.ndarray, ...]) -> None:
        size = sum(a.nbytes for a in value)
        if size > self.max_bytes or key in self._items:
            return
        while self._items and self.bytes + size > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old
        self._items[key] = (value, size)
        self.bytes += size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
