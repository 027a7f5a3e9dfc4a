"""Is a shard still the file `ddn prepare` wrote?

Two checks, for two situations:

- ``verify_shards``: every consumer (the readers, hence train-cls, train-seg and eval;
  inspect) compares each shard's size and sha256 with the manifest before it reads a
  byte of it. A flipped bit inside a JPEG decodes to wrong pixels without an error, and a
  flipped bit in HDF5's metadata ends in an h5py traceback; both are caught here and
  become one line naming the shard. Cost: one sequential read of the shards a process
  uses, once per process (benchmarks/bench_verify.py measures it; RESULTS.md). A
  per-chunk checksum (HDF5's fletcher32) would be cheaper at start-up but covers
  neither HDF5's metadata nor a vlen dataset's heap, where the encoded images live.
- ``content_digest`` (pipeline.shards): a sha256 over a shard's datasets, stored in the
  shard itself (attribute ``content_sha256``), so that a shard can be verified without the manifest
  and a damaged or deleted ``manifest.json`` can be rebuilt from the shards
  (``salvage_shards``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py

from pipeline.errors import UserError
from pipeline.progress import progress
from pipeline.shards import (
    FORMAT_VERSION,
    KINDS,
    content_digest,
    count_negatives,
    sha256_file,
    shard_name,
)

# (path, size, mtime_ns, inode, sha256) of the shards this process has verified: a
# process builds several readers over the same shards (the loss weights, the schedule,
# the dataset) and hashes each file once.
_VERIFIED: set[tuple[str, int, int, int, str]] = set()
SHOW_PROGRESS_BYTES = 1 << 30  # a bar only where hashing takes more than a moment


def verify_shards(root: Path, entries: list[dict[str, Any]]) -> int:
    """Check each manifest entry's shard against its recorded size and sha256.

    Raises UserError naming the first shard that is missing or changed; returns the
    number of bytes hashed (0 when every shard was verified before in this process).
    """
    root = Path(root)
    todo = []
    for entry in entries:
        path = root / entry["file"]
        try:
            st = path.stat()
        except FileNotFoundError:
            raise UserError(f"{path}: shard listed in the manifest is missing; {REPAIR}") from None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, str(entry["sha256"]))
        if key in _VERIFIED:
            continue
        if st.st_size != entry["bytes"]:
            raise UserError(
                f"{path}: damaged or changed since `ddn prepare` wrote it ({st.st_size} bytes, "
                f"the manifest says {entry['bytes']}); {REPAIR}"
            )
        todo.append((path, key))
    total = sum(key[1] for _, key in todo)
    quiet = total < SHOW_PROGRESS_BYTES
    with progress(total, "verify shards", unit="bytes", bar_unit="B", disable=quiet) as bar:
        for path, key in todo:
            if sha256_file(path) != key[4]:
                raise UserError(
                    f"{path}: damaged or changed since `ddn prepare` wrote it (its sha256 "
                    f"differs from the manifest's); {REPAIR}"
                )
            _VERIFIED.add(key)
            bar.update(key[1])
    return total


REPAIR = "re-running the same `ddn prepare` command rebuilds it"


def salvage_shards(out: Path, chash: str) -> tuple[list[dict], list[dict], list[Path]]:
    """The shards in ``out`` that a run of configuration ``chash`` can keep when its
    manifest is gone: (manifest entries, images they skipped, shards of other configs).

    A shard is kept when it opens, carries ``chash`` and its name's kind and index, and
    its datasets still hash to the ``content_sha256`` it was written with. Shards that
    fail are rebuilt by the run (their names are its tasks'); shards of another
    configuration are returned so that the caller can refuse to mix them.
    """
    entries, skipped, foreign = [], [], []
    for path in sorted(Path(out).glob("*-*.h5")):
        kind, _, index = path.stem.partition("-")
        if kind not in KINDS or not index.isdigit() or path.name != shard_name(kind, int(index)):
            continue
        try:
            with h5py.File(path, "r") as f:
                attrs = dict(f.attrs)
                if attrs.get("config_hash") != chash:
                    foreign.append(path)
                    continue
                intact = (
                    int(attrs.get("format_version", -1)) == FORMAT_VERSION
                    and attrs.get("kind") == kind
                    and int(attrs.get("shard_index", -1)) == int(index)
                    and attrs.get("content_sha256") == content_digest(f)
                )
                if not intact:
                    continue
                entry = {
                    "file": path.name,
                    "kind": kind,
                    "index": int(index),
                    "images": int(f["image_ids"].shape[0]),
                    "negatives": count_negatives(f["labels"][()]),
                    "crops": int(f["crop_image"].shape[0]) if kind == "strong" else 0,
                }
                bad = json.loads(attrs.get("skipped", "[]"))
        except (OSError, KeyError, ValueError, TypeError):
            continue  # unreadable: rebuilt by the run
        entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
        entries.append(entry)
        skipped += [{**b, "shard": path.name} for b in bad]
    return entries, skipped, foreign
