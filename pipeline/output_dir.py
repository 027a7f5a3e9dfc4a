"""What a previous `ddn prepare` left in OUT: resume it, refuse to mix configurations,
or, with its manifest lost or damaged, rebuild the manifest from the shards.

A re-run of the same command keeps every finished shard whose size and sha256 match the
manifest (or, without one, whose own ``content_sha256`` still matches) and builds the
rest; another configuration is refused unless ``--overwrite``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.integrity import salvage_shards
from pipeline.manifest import MANIFEST, malformed
from pipeline.shards import FORMAT_VERSION, sha256_file

SCAN_CACHES = (".scan.json", ".scan-val.json")  # prepare's mask-scan caches: train, val


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [name for k in sorted(set(old) | set(new), key=str)
                for name in _changed(old.get(k), new.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if old == new else [prefix.rstrip(".")]


def check_output_dir(out: Path, chash: str, overwrite: bool, config: dict) -> dict | None:
    """The manifest to resume from, or None for a fresh start; refuses mixing configs.

    ``out`` exists: its lock made it (and refused a file in its place)."""
    manifest_path = out / MANIFEST
    old = _previous_manifest(manifest_path) if manifest_path.is_file() else None
    if old is None and out.is_dir() and (manifest_path.is_file() or any(out.glob("*-*.h5"))):
        old = _rebuilt_manifest(out, chash, overwrite)
    elif old is not None:
        same = old.get("format_version") == FORMAT_VERSION and old.get("config_hash") == chash
        if not same and not overwrite:
            why = (
                f"format version {old.get('format_version')} (this ddn writes {FORMAT_VERSION})"
                if old.get("format_version") != FORMAT_VERSION
                else "a different configuration"
            )
            changed = [
                "the image listing" if c == "listing_sha256" else c
                for c in _changed(old.get("config"), config)
            ]
            if changed and old.get("format_version") == FORMAT_VERSION:
                why += f" (changed: {', '.join(changed[:5])})"
            raise UserError(
                f"{out}: already prepared with {why}; use another directory or --overwrite"
            )
        if not same:
            old = None
    elif (
        out.is_dir()
        and not overwrite
        and any(p for p in out.iterdir() if not p.name.startswith("."))
    ):
        raise UserError(f"{out}: not empty and not a ddn prepared directory; use --overwrite")
    if overwrite and old is None and out.is_dir():
        for p in out.iterdir():
            if p.suffix == ".h5" or p.name in (MANIFEST, "splits", *SCAN_CACHES):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        probe = out / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out}: cannot write here ({e.strerror or e})") from None
    for tmp in out.glob(".*.tmp"):  # left by an interrupted run; never valid
        tmp.unlink()
    return old


def _previous_manifest(path: Path) -> dict | None:
    """The manifest a previous run left, or None when it is damaged (not JSON, not an
    object, or, at this format version, without what the readers need)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(old, dict) or not isinstance(old.get("format_version"), int):
        return None
    if old["format_version"] == FORMAT_VERSION and malformed(old):
        return None
    return old


def _rebuilt_manifest(out: Path, chash: str, overwrite: bool) -> dict | None:
    """With ``manifest.json`` missing or damaged: what the shards say about themselves
    (pipeline.integrity.salvage_shards), or None to start afresh (``--overwrite``)."""
    entries, skipped, foreign = salvage_shards(out, chash)
    if foreign and not overwrite:
        raise UserError(
            f"{out}: {MANIFEST} is missing or damaged and {foreign[0].name} was prepared "
            "with a different configuration; use another directory or --overwrite"
        )
    if overwrite and foreign:
        return None
    print(
        f"{out / MANIFEST}: missing or damaged; rebuilding it from {len(entries)} verified "
        "shard(s) and building the rest",
        file=sys.stderr,
    )
    return {"format_version": FORMAT_VERSION, "config_hash": chash, "shards": entries,
            "skipped": skipped}  # fmt: skip


def finished_shards(out: Path, old: dict | None) -> dict[str, dict]:
    """Shards of a previous run that are listed and intact (size and sha256 match)."""
    done = {}
    for entry in (old or {}).get("shards", []):
        p = out / entry["file"]
        if p.is_file() and p.stat().st_size == entry["bytes"] and sha256_file(p) == entry["sha256"]:
            done[entry["file"]] = entry
    return done
