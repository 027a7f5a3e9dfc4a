"""Training-crop throughput on one core: `CropDataset` vs a naive per-file loader; and
CropDataset's DataLoader workers: their throughput and resident memory.

The naive loader is what a per-file VOC dataset class does (torchvision's
VOCSegmentation): for every example it opens and decodes the JPEG and the PNG with PIL,
cuts the box and resizes it to the warp size, then random-crops and flips. CropDataset
reads the same examples from a prepared directory's shards, decoding each source image
once per worker. Both yield the same item (uint8 3xSxS image, 0/1/255 target, subset),
in the same order: train-seg's (a shuffled crop table, i.e. random access across
images; windowed by source image when the sources outgrow the reader's cache).

    python benchmarks/bench_loader.py                 # 20 synthetic 500x375 images
    python benchmarks/bench_loader.py --images 10000  # past the cache: windowed order
    python benchmarks/bench_loader.py --source photos # ../shared's real VOC-layout photos
    python benchmarks/bench_loader.py --data DIR      # an existing prepared directory

Crops per image: 200 by default, as real DecoupledNet data has (N_p = 200 proposals per
label subset, so at least 200 per image). CropDataset decodes a source once and serves
all of its crops from the cache, so this is what its decode is amortised over; fewer
crops per image (e.g. 10) measures a decode-bound loader no real run would see.

Synthetic sources beyond --distinct (500) reuse the encoded bytes of the rendered ones,
each as a record of its own, decoded on its own (`benchmarks._loader_data`): rendering
10,000 would take over half an hour.

How much is timed: one epoch while the sources fit one reader's cache; beyond it, the
crops of the first two windows of the windowed order (about 2 x 286 images x 200
crops), so that the first window's cold decodes are amortised as in a real epoch. The
naive loader costs the same per example whatever the order, so --naive-examples (1,600)
suffices; both are timed in --rounds interleaved slices, so that a load change on a
shared machine hits both alike. CPU-time figures (less sensitive to other processes'
preemption) are printed beside the wall-clock ones; the pass/fail uses wall clock.
Both loaders slow down with the machine's load, CropDataset (memory-bound) more than the
naive one (decode-bound): on this 2-core machine the ratio moved between ~4.7x and
~5.5x with other jobs' load alone. So past --compare-images (20) images, a set that
small (every source cached) is timed in the same rounds too: what the size itself
costs per example, whatever the load.

With --workers N (default 2; 0 skips it), CropDataset also runs through train-seg's
DataLoader (`benchmarks._loader_workers`) over the same number of examples, and each
worker's peak resident memory (VmHWM) must be at most --max-worker-rss-gib.

The last line is a JSON summary; the exit code is 1 when the speed-up is below
--target or a worker's memory above its limit.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._loader_data import build_prepared, naive_dataset  # noqa: E402
from benchmarks._loader_workers import measure_in_fresh_process  # noqa: E402
from ddn.train.distributed import DistInfo, IndexStream  # noqa: E402
from ddn.train.strong import crop_order  # noqa: E402
from pipeline.readers import CropDataset  # noqa: E402


def throughput(datasets: list, orders: list[np.ndarray], rounds: int) -> list[tuple[float, float]]:
    """(examples per wall second, per CPU second) of each dataset over its order, timed
    in interleaved slices so that a load change on a shared machine hits all alike."""
    wall, cpu = [0.0] * len(datasets), [0.0] * len(datasets)
    parts = [np.array_split(order, rounds) for order in orders]
    report = time.perf_counter()
    for r in range(rounds):
        for k, dataset in enumerate(datasets):
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in parts[k][r].tolist():
                dataset[i]
            wall[k] += time.perf_counter() - start
            cpu[k] += time.process_time() - start_cpu
        if time.perf_counter() - report > 30 or r == rounds - 1:
            report = time.perf_counter()
            done = [sum(len(p) for p in part[: r + 1]) for part in parts]
            rates = ", ".join(f"{d / w:.0f} ex/s" for d, w in zip(done, wall, strict=True))
            print(f"  round {r + 1}/{rounds}: {rates}", flush=True)
    return [(len(o) / w, len(o) / c) for o, w, c in zip(orders, wall, cpu, strict=True)]


def crop_order_of(ours: CropDataset, order: str, seed: int) -> tuple[np.ndarray, int, str]:
    """The crop order train-seg would use (``auto``), or the one asked for; how many of its
    examples to time by default (module doc); its description."""
    groups, window = crop_order(ours, DistInfo())
    if order == "shuffled" or (order == "auto" and groups is None):
        perm = np.random.default_rng(seed).permutation(len(ours))
        return perm, len(perm), "shuffled"
    if groups is None:  # windowed asked for, but everything fits: one window per 64 images
        groups, window = ours.source_images(), 64
    perm = IndexStream(len(ours), seed, groups=groups, window=window).permutation(0)
    # The third window starts where the (2 x window + 1)-th distinct image first shows.
    first_seen = np.sort(np.unique(groups[perm], return_index=True)[1])
    two_windows = int(first_seen[2 * window]) if len(first_seen) > 2 * window else len(perm)
    return perm, two_windows, f"windowed ({window} images)"


def workers_part(args: argparse.Namespace, prepared: Path, examples: int) -> dict:
    """The DataLoader measurement, printed; its summary entries."""
    print(f"DataLoader, {args.workers} workers, batch {args.batch}, {examples} examples "
          "(a fresh process forks them; train-seg's sampler)", flush=True)  # fmt: skip
    got = measure_in_fresh_process(prepared, args.workers, args.batch, examples, args.seed)
    gib = 2**20
    for k, w in enumerate(got["per_worker"]):
        print(f"  worker {k}: peak RSS (VmHWM) {w['VmHWM'] / gib:.2f} GiB; at the end RSS "
              f"{w['VmRSS'] / gib:.2f} (anon {w['RssAnon'] / gib:.2f}, file "
              f"{w['RssFile'] / gib:.2f}, shmem {w['RssShmem'] / gib:.2f}), private (own) "
              f"{w['private'] / gib:.2f} GiB; cache {w['cache_kib'] / 2**10:.0f} MiB, "
              f"{w['decodes']} decodes, {w['hits']} hits")  # fmt: skip
    parent = got["parent_kib"]
    print(f"  the parent at the fork: RSS {parent['VmRSS'] / gib:.2f} GiB (anon "
          f"{parent['RssAnon'] / gib:.2f})")  # fmt: skip
    peak = max(w["VmHWM"] for w in got["per_worker"]) / gib
    ok = peak <= args.max_worker_rss_gib
    print(f"DataLoader: {got['eps']:8.1f} examples/s ({args.workers} workers, "
          f"{got['seconds']:.0f} s); peak worker RSS {peak:.2f} GiB (limit "
          f"{args.max_worker_rss_gib}): {'pass' if ok else 'FAIL'}")  # fmt: skip
    private = max(w["private"] for w in got["per_worker"]) / gib
    return {"workers": args.workers, "workers_eps": round(got["eps"], 1),
            "worker_peak_rss_gib": round(peak, 2), "worker_rss_pass": ok,
            "worker_private_gib": round(private, 2)}  # fmt: skip


def small_set(args: argparse.Namespace, tmp: Path, n: int) -> tuple[CropDataset, np.ndarray]:
    """A --compare-images set whose sources all fit the cache, and ``n`` // 4 examples of
    its shuffled epochs: timed in the same rounds, it is what this size costs per example
    over one that never leaves the cache, under the same load."""
    small = tmp / "compare"
    small.mkdir()
    build_prepared(small, args.source, args.compare_images, args.crops_per_image, args.seed,
                   args.distinct)  # fmt: skip
    reader = CropDataset(small, seed=args.seed)
    return reader, np.resize(np.random.default_rng(args.seed).permutation(len(reader)), n // 4)


def single_core_part(args: argparse.Namespace, prepared: Path, tmp: Path) -> tuple[dict, int]:
    """CropDataset vs the naive loader on one core, printed; the summary entries and the
    number of CropDataset examples timed."""
    ours = CropDataset(prepared, seed=args.seed)
    order, default_n, how = crop_order_of(ours, args.order, args.seed)
    n = args.examples or default_n
    naive_order = order[: args.naive_examples]
    (tmp / "files").mkdir()
    naive = naive_dataset(prepared, tmp / "files", naive_order, args.seed)
    i = int(naive_order[0])
    shapes = {k: (v.shape, v.dtype) for k, v in ours[i].items() if torch.is_tensor(v)}
    assert shapes == {k: (v.shape, v.dtype) for k, v in naive[i].items() if torch.is_tensor(v)}
    ours = CropDataset(prepared, seed=args.seed)  # cold cache again
    images = sum(len(ours.shards.file(s)["image_ids"]) for s in range(len(ours.shards.files)))
    datasets, orders = [ours, naive], [np.resize(order, n), naive_order]
    if 0 < args.compare_images < images:
        reader, small_order = small_set(args, tmp, n)
        datasets.append(reader)
        orders.append(small_order)
    print(f"{images} images, {len(ours)} crops in {how} order; one core; timing "
          f"{n} examples against {len(naive_order)} naive ones", flush=True)  # fmt: skip
    rates = throughput(datasets, orders, args.rounds)
    (ours_eps, ours_cpu), (naive_eps, naive_cpu) = rates[:2]
    cache = ours.image_cache
    print(f"CropDataset: {ours_eps:8.1f} examples/s ({ours_cpu:.1f} per CPU second) over "
          f"{n} examples (image cache: {cache.misses} decodes, {cache.hits} hits, "
          f"{cache.bytes / 2**20:.0f} MiB)")  # fmt: skip
    print(f"naive:       {naive_eps:8.1f} examples/s ({naive_cpu:.1f} per CPU second) over "
          f"{len(naive_order)} examples (PIL decodes JPEG and PNG per example)")  # fmt: skip
    ratio, cpu_ratio = ours_eps / naive_eps, ours_cpu / naive_cpu
    summary = {"images": images, "crops": len(ours), "order": how, "examples": n,
               "crop_dataset_eps": round(ours_eps, 1), "naive_eps": round(naive_eps, 1),
               "ratio": round(ratio, 2), "cpu_ratio": round(cpu_ratio, 2),
               "decodes": cache.misses, "hits": cache.hits}  # fmt: skip
    if len(rates) > 2:
        small_eps = rates[2][0]
        print(f"CropDataset at {args.compare_images} images (all cached), same rounds: "
              f"{small_eps:.1f} examples/s, {small_eps / naive_eps:.2f}x naive; "
              f"{images} images cost {1 - ours_eps / small_eps:.1%} more per example")  # fmt: skip
        summary["compare_ratio"] = round(small_eps / naive_eps, 2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    print(f"peak resident memory of this process (the loaders, one reader's cache each): "
          f"{rss:.2f} GiB")  # fmt: skip
    ok = ratio >= args.target
    print(f"speed-up {ratio:.2f}x (CPU time: {cpu_ratio:.2f}x; target {args.target}x): "
          f"{'pass' if ok else 'FAIL'}")  # fmt: skip
    return {**summary, "target": args.target, "pass_ratio": ok, "peak_rss_gib": round(rss, 2)}, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="an existing prepared directory")
    ap.add_argument("--source", choices=("synth", "photos"), default="synth")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--crops-per-image", type=int, default=200)
    ap.add_argument("--distinct", type=int, default=500,
                    help="synthetic images rendered; more records reuse their bytes")  # fmt: skip
    ap.add_argument("--examples", type=int, default=0,
                    help="CropDataset examples to time (default: see the doc)")  # fmt: skip
    ap.add_argument("--naive-examples", type=int, default=1600)
    ap.add_argument("--compare-images", type=int, default=20,
                    help="also time a set this small in the same rounds; 0: skip")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=64, help="interleaved timing slices")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=5.0)
    ap.add_argument("--order", choices=("auto", "shuffled", "windowed"), default="auto",
                    help="auto: train-seg's (windowed beyond the cache)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers; 0: skip")
    ap.add_argument("--batch", type=int, default=16, help="DataLoader batch (train-seg's)")
    ap.add_argument("--max-worker-rss-gib", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    began = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        prepared, build_s = args.data, 0.0
        if prepared is None:
            prepared = Path(tmp) / "prepared"
            prepared.mkdir()
            t = time.perf_counter()
            build_prepared(prepared, args.source, args.images, args.crops_per_image,
                           args.seed, args.distinct)  # fmt: skip
            build_s = time.perf_counter() - t
            print(f"built {prepared} from {args.images} {args.source} images "
                  f"({min(args.images, args.distinct)} distinct) in {build_s:.1f} s")  # fmt: skip
        summary, n = single_core_part(args, prepared, Path(tmp))
        summary["build_s"] = round(build_s, 1)
        ok = summary["pass_ratio"]
        if args.workers:
            summary.update(workers_part(args, prepared, n))
            ok = ok and summary["worker_rss_pass"]
    summary["pass"] = ok
    summary["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
