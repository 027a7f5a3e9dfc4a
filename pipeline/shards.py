"""The HDF5 shard format (version 1): writing one shard atomically, opening it.

A prepared directory holds ``manifest.json``, ``splits/{weak,strong,val}.txt`` and
shards named ``{kind}-{index:05d}.h5`` with kind in ``weak``, ``strong``, ``val``.
Every shard holds, per image (N rows):

``image_ids``     (N,)   str          the dataset's image id
``images``        (N,)   vlen uint8   the original encoded file bytes (JPEG/PNG/...)
``image_shapes``  (N,2)  int32        height, width of the decoded image
``labels``        (N,C)  uint8        multi-hot image labels; column k-1 is class k
                                      (all zero: a negative, background only)

``strong`` and ``val`` shards add ``masks`` (N,) vlen uint8: the label map as a
single-channel PNG (0 background, k class k, 255 ignore). ``strong`` shards add the
crop table, one row per training example (M rows), geometry only:

``crop_image``    (M,)   int32    row of the source image in this shard
``crop_subset``   (M,)   uint64   the subset P as a bitmask over the image's labels:
                                  bit j set <=> the j-th class of ``labels[row]`` (in
                                  increasing class order) is in P
``crop_box``      (M,4)  float32  x0, y0, x1, y1 in source pixels (pixel i spans
                                  [i, i+1)); may extend past the image
``crop_origin``   (M,)   uint8    0 = region proposal, 1 = random box, 2 = the whole
                                  image (its padded square, as at inference)

With ``--materialize S``: ``mat_images`` (M,S,S,3) uint8 and ``mat_masks`` (M,S,S)
uint8 (0/1/255 for P), the box warped to SxS, one example per HDF5 chunk.

File attributes: ``format_version``, ``kind``, ``classes`` (JSON list, background
first), ``config_hash``, ``shard_index``, ``ddn_version``, ``skipped`` (JSON list of the
images left out with ``--skip-bad``: id, file, reason) and ``content_sha256`` (a sha256
over the datasets, `pipeline.integrity.content_digest`: with it a shard can be verified,
and the manifest rebuilt, without the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__

FORMAT_VERSION = 1
KINDS = ("weak", "strong", "val")
ORIGIN_PROPOSAL, ORIGIN_RANDOM, ORIGIN_WHOLE = 0, 1, 2


def shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index:05d}.h5"


@dataclass
class ShardImages:
    """Per-image columns of one shard, filled row by row by the shard builder."""

    ids: list[str] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)  # multi-hot (C,) uint8
    masks: list[bytes] = field(default_factory=list)  # PNG bytes; strong/val only

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class CropTable:
    """Geometry-only training examples of one strong shard."""

    image: np.ndarray  # (M,) int32
    subset: np.ndarray  # (M,) uint64
    box: np.ndarray  # (M,4) float32
    origin: np.ndarray  # (M,) uint8

    @classmethod
    def empty(cls) -> CropTable:
        return cls(
            np.zeros(0, np.int32),
            np.zeros(0, np.uint64),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.uint8),
        )

    @classmethod
    def concat(cls, parts: list[CropTable]) -> CropTable:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.image for p in parts]).astype(np.int32),
            np.concatenate([p.subset for p in parts]).astype(np.uint64),
            np.concatenate([p.box for p in parts]).astype(np.float32).reshape(-1, 4),
            np.concatenate([p.origin for p in parts]).astype(np.uint8),
        )

    def __len__(self) -> int:
        return int(self.image.shape[0])


def subset_classes(labels_row: np.ndarray, bitmask: int) -> list[int]:
    """Class indices (1..C) of subset ``bitmask`` for an image with multi-hot ``labels_row``."""
    present = np.flatnonzero(labels_row) + 1
    return [int(c) for j, c in enumerate(present) if (int(bitmask) >> j) & 1]


def subset_multi_hot(labels_row: np.ndarray, bitmask: int) -> np.ndarray:
    """The subset as a multi-hot (C,) uint8 vector."""
    out = np.zeros_like(labels_row, dtype=np.uint8)
    for c in subset_classes(labels_row, bitmask):
        out[c - 1] = 1
    return out


def count_negatives(labels: np.ndarray) -> int:
    """Rows of a (N, C) multi-hot array with no class: background-only images."""
    return int((~np.asarray(labels).any(axis=1)).sum())


def _vlen_bytes(f: h5py.File, name: str, items: list[bytes]) -> None:
    ds = f.create_dataset(name, (len(items),), dtype=h5py.vlen_dtype(np.uint8))
    for i, b in enumerate(items):
        ds[i] = np.frombuffer(b, dtype=np.uint8)


def write_shard(
    path: Path,
    kind: str,
    index: int,
    classes: list[str],
    config_hash: str,
    images: ShardImages,
    crops: CropTable | None = None,
    materialize: tuple[int, Callable[[int], tuple[np.ndarray, np.ndarray]]] | None = None,
    skipped: list[dict] | None = None,
) -> dict:
    """Write a shard under a temporary name, fsync, rename; return its manifest entry.

    A reader or a resumed run never sees a partial file: until the rename the only
    file on disk is ``.<name>.<random>.tmp``, which both ignore and a new run removes.
    """
    assert kind in KINDS
    num_classes = len(classes) - 1
    labels = np.array(images.labels, np.uint8).reshape(-1, num_classes)
    # A name of its own per writer: a task of an interrupted Dask run may still be writing
    # this shard on its worker (Dask cannot stop a running task) while the re-run builds
    # it again; each then renames a whole file, and both hold the same bytes.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = kind
            f.attrs["classes"] = json.dumps(classes)
            f.attrs["config_hash"] = config_hash
            f.attrs["shard_index"] = index
            f.attrs["ddn_version"] = __version__
            f.create_dataset(
                "image_ids", data=np.array(images.ids, dtype=object), dtype=h5py.string_dtype()
            )
            _vlen_bytes(f, "images", images.encoded)
            f.create_dataset("image_shapes", data=np.array(images.shapes, np.int32).reshape(-1, 2))
            f.create_dataset("labels", data=labels)
            if kind in ("strong", "val"):
                _vlen_bytes(f, "masks", images.masks)
            if kind == "strong":
                crops = crops if crops is not None else CropTable.empty()
                f.create_dataset("crop_image", data=crops.image.astype(np.int32))
                f.create_dataset("crop_subset", data=crops.subset.astype(np.uint64))
                f.create_dataset("crop_box", data=crops.box.astype(np.float32).reshape(-1, 4))
                f.create_dataset("crop_origin", data=crops.origin.astype(np.uint8))
                if materialize is not None:
                    _write_materialized(f, len(crops), *materialize)
            f.attrs["skipped"] = json.dumps(skipped or [])
            # Read back from the file, so that the digest is of what a reader will see.
            f.attrs["content_sha256"] = content_digest(f)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": path.name,
        "kind": kind,
        "index": index,
        "images": len(images),
        "negatives": count_negatives(labels),
        "crops": len(crops) if crops is not None else 0,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _write_materialized(
    f: h5py.File, n: int, size: int, example: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> None:
    # Row by row: a strong shard can hold tens of thousands of crops, far more than
    # fit in memory as pixels.
    chunks = n > 0
    images = f.create_dataset(
        "mat_images", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3) if chunks else None
    )
    masks = f.create_dataset(
        "mat_masks", (n, size, size), np.uint8, chunks=(1, size, size) if chunks else None
    )
    images.attrs["size"] = size
    for row in range(n):
        images[row], masks[row] = example(row)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digest(f: h5py.File) -> str:
    """sha256 over every dataset of an open shard: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name in sorted(f.keys()):
        ds = f[name]
        h.update(f"{name}|{ds.dtype}|{ds.shape}|".encode())
        if h5py.check_vlen_dtype(ds.dtype) is not None or h5py.check_string_dtype(ds.dtype):
            for row in ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]:
                b = row.encode() if isinstance(row, str) else np.ascontiguousarray(row).tobytes()
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
        else:
            # Materialised crops can be many GB: hash them a slice of rows at a time.
            row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
            rows = max(1, (64 << 20) // max(1, row_bytes))
            for i in range(0, ds.shape[0], rows):
                h.update(np.ascontiguousarray(ds[i : i + rows]).tobytes())
    return h.hexdigest()


def open_shard(path: Path) -> h5py.File:
    """Open a finished shard read-only, refusing other format versions."""
    f = h5py.File(path, "r")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        f.close()
        from pipeline.errors import UserError

        raise UserError(
            f"{path}: written by shard format version {version}, this ddn reads version "
            f"{FORMAT_VERSION}; re-run `ddn prepare --overwrite`"
        )
    return f
