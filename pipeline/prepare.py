"""`ddn prepare`: dataset -> splits -> shards, in parallel, resumable.

Steps: list the dataset (adapter) -> learn each training image's classes (from
labels or a scan of its mask, cached) -> with ``negatives="drop"``, leave out the
background-only images -> choose weak / strong / val -> cut the lists into shard
tasks -> run the tasks not already finished with joblib, on this machine's cores or on
a Dask cluster (`pipeline.cluster`), updating the manifest after each. Re-running the
same command resumes; a different config into the same directory is refused unless
``overwrite``; a second command while one runs is refused (or waits), as the two would
write the same files (`pipeline.lock`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from joblib import Parallel, delayed

from pipeline import __version__
from pipeline.build import CropSettings, ShardTask
from pipeline.cluster import RunShards, check_backend, shard_runner
from pipeline.errors import BadInputError, UserError
from pipeline.imageio import check_label_values, classes_in, load_label_map
from pipeline.lock import exclusive_dir
from pipeline.manifest import config_hash, write_manifest
from pipeline.output_dir import SCAN_CACHES, check_output_dir, finished_shards
from pipeline.progress import progress
from pipeline.records import DatasetSplits, Record
from pipeline.settings import setting
from pipeline.shards import FORMAT_VERSION, sha256_file
from pipeline.splits import read_strong_list, select_strong, write_split_files

NEGATIVES = ("keep", "drop")


@dataclass
class SplitSettings:
    strong_per_class: int | None = setting(
        5, help="Strong images per class (N x C in all); None: every mask with an object."
    )
    strong_list: str | None = setting(
        None, help="Use these strong image ids (one per line) instead of choosing."
    )
    weak_from: str = setting(
        "all", help="'strong': classifier data = the strong images only (DecoupledNet-Str)."
    )
    allow_short: bool = setting(
        False, help="Take all images of a class that has fewer than --strong-per-class."
    )
    seed: int = setting(0, help="Seed for the strong split.")
    negatives: str = setting(
        "keep",
        help="Background-only images: keep them as negatives (weak, val) or leave them out.",
    )

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise UserError(
                f"--negatives: expected {' or '.join(NEGATIVES)}, got {self.negatives!r}"
            )


@dataclass
class ShardSettings:
    shard_size: int = setting(1000, help="Images per weak / val shard.")
    # Small: strong images are the slow ones, and small tasks parallelise.
    strong_shard_size: int = setting(8, help="Images per strong shard.")
    jobs: int = setting(
        -1, help="Parallel joblib workers (-1: all cores); with --backend dask, for the mask scan."
    )
    backend: str = setting(
        "local",
        help="Where the shards are built: this machine's cores (--jobs), or a Dask cluster "
        "(--scheduler) whose workers share OUT and the dataset under the same paths.",
    )
    scheduler: str | None = setting(
        None, help="--backend dask: the Dask scheduler's address, e.g. tcp://HOST:8786."
    )

    def __post_init__(self) -> None:
        # joblib's convention; 0 means nothing to it and would fail deep inside Parallel.
        if self.jobs == 0:
            raise UserError("--jobs: 0 workers; use -1 for all cores, or 1 or more")
        check_backend(self.backend, self.scheduler)


def _scan_one(rec: Record, num_classes: int) -> tuple[str, tuple[int, ...] | None, dict | None]:
    try:
        labels = load_label_map(rec.mask)
        # Here, not only when shards are built: a value past the classes would otherwise
        # count as a class nobody asked for and could leave no strong image at all.
        check_label_values(labels, num_classes, rec.mask)
        return rec.id, classes_in(labels), None
    except BadInputError as e:
        return rec.id, None, {"id": rec.id, "file": e.path, "reason": e.reason}


def scan_mask_classes(
    records: list[Record],
    num_classes: int,
    out: Path,
    chash: str,
    jobs: int,
    skip_bad: bool,
    cache_name: str = SCAN_CACHES[0],
) -> tuple[dict[str, tuple[int, ...]], list[dict]]:
    """Classes present in each mask (an empty tuple: background only); cached per config
    in ``out/<cache_name>`` (only when every mask was readable)."""
    cache = out / cache_name
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("config_hash") == chash:
            return {k: tuple(v) for k, v in data["classes"].items()}, []
    # Labels given by the adapter (COCO annotations, a labels.csv row) stand in for the
    # mask's classes, even when empty: painting every COCO mask just to choose the strong
    # set would cost minutes.
    classes: dict[str, tuple[int, ...]] = {
        r.id: tuple(sorted(r.labels))
        for r in records
        if r.mask is not None and r.labels is not None
    }
    with_mask = [r for r in records if r.mask is not None and r.labels is None]
    results = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_scan_one)(r, num_classes) for r in with_mask
    )
    skipped: list[dict] = []
    with progress(len(with_mask), "scan masks", disable=not with_mask) as bar:
        for rid, cls, bad in results:
            bar.update()
            if bad is None:
                classes[rid] = cls
            elif skip_bad:
                skipped.append(bad)
            else:
                raise UserError(f"{bad['file']}: {bad['reason']}")
    if not skipped:  # a bad file may be fixed before the next run: scan it again then
        cache.write_text(json.dumps({"config_hash": chash, "classes": classes}))
    return classes, skipped


def _without_negatives(
    records: list[Record], mask_classes: dict[str, tuple[int, ...]]
) -> tuple[list[Record], int]:
    """``records`` less the background-only images, and how many those were."""
    # An image's classes are what its weak / val row will say: the adapter's labels, else
    # its mask's classes.
    kept = [r for r in records if (r.labels if r.labels is not None else mask_classes[r.id])]
    return kept, len(records) - len(kept)


def _chunks(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def prepare(
    ds: DatasetSplits,
    out: Path,
    split: SplitSettings,
    crops: CropSettings,
    shards: ShardSettings,
    *,
    skip_bad: bool = False,
    overwrite: bool = False,
    dataset_config: dict[str, Any] | None = None,
    wait: bool = False,
) -> dict:
    """Prepare ``ds`` into ``out``; returns the final manifest.

    ``out`` has one writer at a time (`pipeline.lock`): another `prepare` into it is
    refused, naming the holder, or with ``wait`` waited for.
    """
    out = Path(out)
    config = _config(ds, split, crops, shards, dataset_config)
    with exclusive_dir(out, "prepared directory", wait):
        return _prepare_locked(ds, out, split, crops, shards, config, skip_bad, overwrite)


def _config(
    ds: DatasetSplits,
    split: SplitSettings,
    crops: CropSettings,
    shards: ShardSettings,
    dataset_config: dict[str, Any] | None,
) -> dict[str, Any]:
    """Every setting that shapes the output (its hash names the configuration)."""
    config = {
        "format_version": FORMAT_VERSION,
        "dataset": {"name": ds.name, **(dataset_config or {})},
        "classes": ds.classes,
        "split": asdict(split),
        "crops": _crops_config(crops),
        "shards": {"shard_size": shards.shard_size, "strong_shard_size": shards.strong_shard_size},
        # skip_bad is not part of the config: a shard finished without it holds no
        # bad image, so it is the same shard with it, and the usual fix for a failed
        # run (re-run with --skip-bad) keeps the work already done.
        # Adding or removing images changes the output, so the listing is part of it.
        "listing_sha256": hashlib.sha256(
            "\n".join([r.id for r in ds.train] + ["--val--"] + [r.id for r in ds.val]).encode()
        ).hexdigest(),
    }
    if split.strong_list:
        # The list's content, not just its path, decides the output.
        if not Path(split.strong_list).is_file():
            raise UserError(f"{split.strong_list}: strong list file not found")
        config["split"]["strong_list_sha256"] = sha256_file(Path(split.strong_list))
    return config


def _crops_config(crops: CropSettings) -> dict[str, Any]:
    config = {**asdict(crops), "proposals": crops.proposals.to_dict()}
    if not config["scales_from"]:
        # Out of the hash at its default, so that directories prepared before the
        # setting existed still resume.
        del config["scales_from"]
    return config


def _prepare_locked(
    ds: DatasetSplits,
    out: Path,
    split: SplitSettings,
    crops: CropSettings,
    shards: ShardSettings,
    config: dict[str, Any],
    skip_bad: bool,
    overwrite: bool,
) -> dict:
    chash = config_hash(config)
    old = check_output_dir(out, chash, overwrite, config)
    # Before the mask scan, which can take minutes: a cluster that cannot do the work
    # (no scheduler, a worker without OUT) fails at once.
    probes = [recs[0].image for recs in (ds.train, ds.val) if recs]
    if crops.proposals.edge_model:
        probes.append(Path(crops.proposals.edge_model))
    with shard_runner(shards.backend, shards.scheduler, shards.jobs, out, probes) as run_shards:
        return _prepare_checked(
            ds, out, split, crops, shards, config, chash, old, skip_bad, run_shards
        )


def _prepare_checked(
    ds: DatasetSplits,
    out: Path,
    split: SplitSettings,
    crops: CropSettings,
    shards: ShardSettings,
    config: dict[str, Any],
    chash: str,
    old: dict | None,
    skip_bad: bool,
    run_shards: RunShards,
) -> dict:
    # Which training images have which classes decides the strong set (and negatives).
    num_classes = len(ds.classes) - 1
    mask_classes, skipped = scan_mask_classes(
        ds.train, num_classes, out, chash, shards.jobs, skip_bad
    )
    bad_ids = {s["id"] for s in skipped}
    train = [r for r in ds.train if r.id not in bad_ids]
    val = list(ds.val)
    negatives: dict[str, Any] = {"rule": split.negatives}
    if split.negatives == "drop":
        # Without this scan a val mask is read only by the builder of its shard.
        val_classes, val_skipped = scan_mask_classes(
            ds.val, num_classes, out, chash, shards.jobs, skip_bad, SCAN_CACHES[1]
        )
        skipped += val_skipped
        val_bad = {s["id"] for s in val_skipped}
        train, dropped_train = _without_negatives(train, mask_classes)
        val, dropped_val = _without_negatives([r for r in val if r.id not in val_bad], val_classes)
        negatives["dropped"] = {"train": dropped_train, "val": dropped_val}
    train_ids = [r.id for r in ds.train]
    by_id = {r.id: r for r in ds.train}
    if split.strong_list:
        strong_ids = read_strong_list(split.strong_list, train_ids, mask_classes)
        strong_report = {"rule": "list", "file": str(split.strong_list)}
    else:
        strong_ids, strong_report = select_strong(
            train_ids,
            mask_classes,
            ds.classes,
            split.strong_per_class,
            split.seed,
            split.allow_short,
        )
    if not strong_ids:
        raise UserError("no strong image: no training image has a mask with an object class")
    weak = [by_id[i] for i in strong_ids] if split.weak_from == "strong" else train
    strong = [by_id[i] for i in strong_ids]
    write_split_files(
        out, {"weak": [r.id for r in weak], "strong": strong_ids, "val": [r.id for r in val]}
    )

    tasks = [
        ShardTask(kind, i, chunk, ds.classes, chash, out, crops, skip_bad)
        for kind, recs, size in (
            ("strong", strong, shards.strong_shard_size),
            ("weak", weak, shards.shard_size),
            ("val", val, shards.shard_size),
        )
        for i, chunk in enumerate(_chunks(recs, size))
    ]
    done = finished_shards(out, old)
    manifest = {
        "format_version": FORMAT_VERSION,
        "ddn_version": __version__,
        "config": config,
        "config_hash": chash,
        "classes": ds.classes,
        "dataset": ds.info,
        "splits": {
            "weak": len(weak),
            "strong": len(strong),
            "val": len(val),
            "strong_selection": strong_report,
        },
        "negatives": negatives,
        "proposals": crops.proposals.to_dict(),
        "shards": sorted(done.values(), key=lambda e: (e["kind"], e["index"])),
        # Images left out with --skip-bad: from the mask scan, and per shard (kept only
        # for shards that survive into this run).
        "skipped": list(skipped)
        + [s for s in (old or {}).get("skipped", []) if s.get("shard") in done],
        "skip_bad": skip_bad,
        "warnings": list(strong_report.get("warnings", [])),
        "complete": False,
    }
    todo = [t for t in tasks if t.path.name not in done]
    write_manifest(out, manifest)
    results = run_shards(todo)
    # The context manager ends the bar's line even when a task fails, so the error
    # message that follows starts on a line of its own.
    total = sum(len(t.records) for t in todo)
    with progress(total, "prepare", disable=not todo) as bar:
        for entry, bad in results:
            manifest["shards"].append(entry)
            manifest["shards"].sort(key=lambda e: (e["kind"], e["index"]))
            manifest["skipped"] += [{**b, "shard": entry["file"]} for b in bad]
            write_manifest(out, manifest)
            bar.update(entry["images"] + len(bad))
    _drop_skipped_from_splits(out, manifest, {"weak": weak, "strong": strong, "val": val})
    manifest["complete"] = True
    write_manifest(out, manifest)
    return manifest


def _drop_skipped_from_splits(out: Path, manifest: dict, splits: dict[str, list[Record]]) -> None:
    """Images skipped while shards were built (--skip-bad) leave the split files and counts,
    so that they say what the shards hold; a smaller strong set is a warning."""
    bad = {s["id"]: s["file"] for s in manifest["skipped"] if "shard" in s}
    if not bad:
        return
    kept = {name: [r.id for r in recs if r.id not in bad] for name, recs in splits.items()}
    write_split_files(out, kept)
    manifest["splits"].update({name: len(ids) for name, ids in kept.items()})
    lost = [str(bad[r.id]) for r in splits["strong"] if r.id in bad]
    if lost:
        manifest["warnings"].append(
            f"{len(lost)} strong image(s) skipped as bad ({', '.join(lost[:5])}): the strong "
            f"set has {len(kept['strong'])}, not {len(splits['strong'])}; fix or remove them "
            "and prepare again to choose others"
        )
