"""What a prepared directory holds: a summary and a picture of sample crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.integrity import verify_shards
from pipeline.manifest import read_manifest
from pipeline.object_scale import format_object_scale, object_scale
from pipeline.outpaths import WriteError, check_output_file, writing
from pipeline.shards import count_negatives, open_shard


def _negatives(prepared: Path, entry: dict[str, Any]) -> int:
    if "negatives" in entry:
        return entry["negatives"]
    # Manifests written before entries recorded it: count the shard's all-zero label rows.
    with open_shard(Path(prepared) / entry["file"]) as f:
        return count_negatives(f["labels"][()])


def summarize(prepared: Path) -> dict[str, Any]:
    """Counts and sizes of a prepared directory (the object `ddn inspect --json` prints)."""
    m = read_manifest(prepared, require_complete=False)
    shards = m["shards"]
    verify_shards(prepared, shards)  # a damaged shard stops here, with its name

    def count(kind: str, key: str) -> int:
        return sum(s[key] for s in shards if s["kind"] == kind)

    def negatives(kind: str) -> int:
        return sum(_negatives(prepared, s) for s in shards if s["kind"] == kind)

    return {
        "path": str(prepared),
        "dataset": m.get("config", {}).get("dataset", {}).get("name"),
        "classes": m["classes"],
        "weak_images": count("weak", "images"),
        "weak_negatives": negatives("weak"),
        "strong_images": count("strong", "images"),
        "val_images": count("val", "images"),
        "val_negatives": negatives("val"),
        # Background-only images left out by `prepare --negatives drop` (None: kept).
        "negatives_dropped": m.get("negatives", {}).get("dropped"),
        "crops": count("strong", "crops"),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": len(shards),
        "complete": bool(m.get("complete")),
        # Every listed shard's size and sha256 matched the manifest (it is checked above;
        # a mismatch is an error, not a summary).
        "verified": True,
        "skipped": len(m.get("skipped", [])),
        "warnings": m.get("warnings", []),
        "strong_selection": m.get("splits", {}).get("strong_selection", {}).get("rule"),
        "proposals": m.get("proposals", {}).get("method"),
        "config_hash": m.get("config_hash"),
        # The segmenter's training crops against what inference shows it (sampled).
        "object_scale": object_scale(prepared) if m.get("complete") else None,
    }


def format_summary(s: dict[str, Any]) -> str:
    per_crop = s["bytes"] / s["crops"] if s["crops"] else 0.0
    lines = [
        f"{s['path']}  ({s['dataset']}, {'complete' if s['complete'] else 'INCOMPLETE'}"
        f"{', shards verified' if s.get('verified') else ''})",
        f"  classes        {len(s['classes']) - 1} + background: " + ", ".join(s["classes"][1:]),
        f"  weak images    {s['weak_images']}{_no_object(s['weak_negatives'])}",
        f"  strong images  {s['strong_images']}  (selection: {s['strong_selection']})",
        f"  val images     {s['val_images']}{_no_object(s['val_negatives'])}",
        f"  crops          {s['crops']}  (proposals: {s['proposals']})",
        f"  storage        {s['bytes'] / 2**20:.1f} MiB in {s['shards']} shards "
        f"({per_crop:.0f} bytes per training example)",
    ]
    if s.get("object_scale"):
        lines += format_object_scale(s["object_scale"])
    if s["negatives_dropped"]:
        d = s["negatives_dropped"]
        lines.append(
            f"  negatives      {d['train']} train and {d['val']} val images with no object "
            "left out (--negatives drop)"
        )
    if s["skipped"]:
        lines.append(f"  skipped        {s['skipped']} bad images (listed in manifest.json)")
    lines += [f"  warning        {w}" for w in s["warnings"]]
    return "\n".join(lines)


def _no_object(n: int) -> str:
    return f"  ({n} negative{'s' * (n != 1)}: no object)" if n else ""


def _overlay(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    # Synthetic and real images are colourful, so a tint is easy to miss: dim the
    # ground, whiten the ignore band and outline the figure in red instead.
    out = image.astype(np.float32)
    fg, ignore = target == 1, target == 255
    out[~fg & ~ignore] *= 0.3
    out[ignore] = 0.4 * out[ignore] + 0.6 * 255
    fg8 = fg.astype(np.uint8)
    edge = cv2.morphologyEx(fg8, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0
    out[edge] = (255, 0, 0)
    return out.astype(np.uint8)


def check_grid_path(path: Path, option: str = "--grid") -> None:
    """Refuse, before any work, a grid path that is no writable image file."""
    check_output_file(path, option)
    if not cv2.haveImageWriter(str(path)):
        raise UserError(f"{path}: {option} must name an image file such as grid.png")


def draw_grid(prepared: Path, out_png: Path, n: int = 16, cell: int = 160, seed: int = 0) -> int:
    """Sample crops with their figure/ground masks overlaid; returns how many were drawn
    (0: the directory has no crops, and nothing is written)."""
    from pipeline.readers import CropDataset

    ds = CropDataset(prepared, flip=False, seed=seed)
    if len(ds) == 0:
        return 0
    idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    cols = int(np.ceil(np.sqrt(len(idx))))
    rows = int(np.ceil(len(idx) / cols))
    caption_h = 18
    grid = np.full((rows * (cell + caption_h), cols * cell, 3), 255, np.uint8)
    for k, i in enumerate(idx):
        item = ds[int(i)]
        img = item["image"].permute(1, 2, 0).numpy()
        tile = cv2.resize(
            _overlay(img, item["target"].numpy()), (cell, cell), interpolation=cv2.INTER_NEAREST
        )
        r, c = divmod(k, cols)
        y, x = r * (cell + caption_h), c * cell
        grid[y : y + cell, x : x + cell] = tile
        names = [ds.classes[j + 1] for j in np.flatnonzero(item["subset"].numpy())]
        cv2.putText(
            grid,
            "+".join(names)[:24],
            (x + 3, y + cell + 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    out_png = Path(out_png)
    # imencode + our own write, not cv2.imwrite: imwrite reports a failed write only as
    # a False that is easy to miss.
    ok, encoded = cv2.imencode(out_png.suffix, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise WriteError(f"{out_png}: cannot encode the grid as {out_png.suffix}")
    with writing(out_png) as p:
        p.write_bytes(encoded.tobytes())
    return len(idx)
