"""``manifest.json``: the index of a prepared directory.

Keys: ``format_version``, ``ddn_version``, ``config`` (every setting that shapes the
output), ``config_hash``, ``classes`` (background first), ``splits`` (counts and how
the strong set was chosen), ``negatives`` (the rule for background-only images, keep or
drop, and with drop how many train and val images it left out), ``proposals``,
``shards`` (one entry per finished shard: file, kind, index, images, negatives (rows
with no class), crops, bytes, sha256), ``skipped`` (bad images left out with
``--skip-bad``: id, file, reason), ``warnings``, ``complete``.

It is rewritten atomically after every finished shard, so an interrupted run leaves
a manifest that lists exactly the shards that are whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.shards import FORMAT_VERSION

MANIFEST = "manifest.json"


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    os.replace(tmp, out / MANIFEST)


def read_manifest(out: Path, *, require_complete: bool = True) -> dict[str, Any]:
    """The manifest of a prepared directory, checked for format and completeness."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: not found; is {out} a directory made by `ddn prepare`?")
    try:
        manifest = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: damaged manifest (not valid JSON); {REBUILD}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and version != FORMAT_VERSION:
        raise UserError(
            f"{path}: written by format version {version}, this ddn reads version "
            f"{FORMAT_VERSION}; re-run `ddn prepare --overwrite`"
        )
    problem = malformed(manifest)
    if problem:
        raise UserError(f"{path}: damaged manifest ({problem}); {REBUILD}")
    if require_complete and not manifest.get("complete"):
        raise UserError(f"{path}: preparation did not finish; re-run the same `ddn prepare`")
    return manifest


REBUILD = "re-running the same `ddn prepare` command rebuilds it from the shards"
_ENTRY_KEYS = {"file": str, "kind": str, "index": int, "images": int, "crops": int,
    "bytes": int, "sha256": str}  # fmt: skip


def malformed(manifest: Any) -> str | None:
    """What makes ``manifest`` unusable, or None: the keys the readers rely on."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    if manifest.get("format_version") != FORMAT_VERSION:
        return "no format_version"
    for key, kind in (("classes", list), ("shards", list)):
        if not isinstance(manifest.get(key), kind):
            return f"'{key}' missing or not a {kind.__name__}"
    for entry in manifest["shards"]:
        if not isinstance(entry, dict) or any(
            not isinstance(entry.get(k), t) for k, t in _ENTRY_KEYS.items()
        ):
            return f"a shard entry lacks one of {', '.join(_ENTRY_KEYS)}"
        if "/" in entry["file"] or "\\" in entry["file"] or entry["file"].startswith("."):
            return f"shard entry {entry['file']!r} is not a file name"
    return None


def shard_paths(out: Path, manifest: dict[str, Any], kind: str) -> list[Path]:
    """Finished shards of one kind, in index order."""
    entries = sorted((s for s in manifest["shards"] if s["kind"] == kind), key=lambda s: s["index"])
    return [Path(out) / s["file"] for s in entries]
