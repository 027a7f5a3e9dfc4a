"""Saliency: the batched one-pass `ddn.models.saliency` vs a per-class backward loop.

Full-size head (width 1, 320 px input -> pool5 512x10x10, fc6 7x7 -> 4096, fc7 4096),
K = 20 classes, a batch of B images. Saliency starts at pool5, so pool5 is random
(non-negative, as after a ReLU). Two workloads:

- inference: the K class maps of each image (B*K rows, one singleton seed each) in one
  call, vs one head forward and K backward passes (one per class) over the B images;
  The same loop with the head written as im2col + GEMMs (the batched path evaluates
  its windows that way) is timed too, to separate the algorithm's gain (one window per
  map instead of a whole score map) from the CPU's slow 7x7 convolution;
- training: one map per image for a multi-hot subset (B rows) in one call, vs the same
  forward and K backward passes, one per class, summed with the seeds.

Both compute the same gradients (the max difference is printed). Also timed, for
reference: the plain dense form (autograd through the whole score map, B*K rows).

    python benchmarks/bench_saliency.py [--batch 4] [--classes 20] [--repeats 3]

The last line is a JSON summary; the exit code is 1 when a speed-up is below --target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddn.models import Classifier, saliency  # noqa: E402


def gemm_max_scores(cls: Classifier, pool5: Tensor) -> Tensor:
    """Max-pooled scores with the head as im2col + GEMMs (what window_scores does)."""
    k = cls.fc6_kernel
    cols = F.unfold(pool5, k).transpose(1, 2)  # (B, L, C5*k*k)
    scores = cls.window_scores(cols.reshape(-1, pool5.shape[1], k, k))
    return scores.view(pool5.shape[0], -1, scores.shape[-1]).amax(dim=1)


def conv_max_scores(cls: Classifier, pool5: Tensor) -> Tensor:
    return cls.head_scores(pool5).amax(dim=(2, 3))


def per_class_loop(
    cls: Classifier, pool5: Tensor, seeds_mask: Tensor, max_scores_fn=conv_max_scores
) -> list[Tensor]:
    """One forward, then one backward per class: the maps d(seed_c * max_c)/d(pool5).

    Classes no row asks for are skipped (their map is zero), so the baseline is fair to
    training batches whose subsets cover fewer than K classes.
    """
    leaf = pool5.detach().requires_grad_(True)
    max_scores = max_scores_fn(cls, leaf)
    seeds = torch.sigmoid(max_scores.detach()) * seeds_mask
    maps = []
    for c in range(seeds.shape[1]):
        if not seeds_mask[:, c].any():
            maps.append(torch.zeros_like(leaf))
            continue
        (g,) = torch.autograd.grad(max_scores[:, c], leaf, seeds[:, c], retain_graph=True)
        maps.append(g)
    return maps


def dense_one_pass(cls: Classifier, pool5: Tensor, subsets: Tensor) -> Tensor:
    """The textbook form: one backward through the whole score map of every row."""
    leaf = pool5.detach().requires_grad_(True)
    max_scores = cls.head_scores(leaf).amax(dim=(2, 3))
    seeds = torch.sigmoid(max_scores.detach()) * subsets
    return torch.autograd.grad(max_scores, leaf, seeds)[0]


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The fastest of `repeats` runs; the first doubles as the warm-up (oneDNN, allocator)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--subset-size", type=int, default=2, help="labels per training subset")
    ap.add_argument("--skip-dense", action="store_true", help="skip the (slow) dense figure")
    ap.add_argument("--target", type=float, default=3.0)
    args = ap.parse_args()

    torch.manual_seed(0)
    b, k = args.batch, args.classes
    cls = Classifier(k, "vgg16", width=1.0, input_size=args.input_size).eval()
    cls.requires_grad_(False)  # frozen, as in train-seg
    side = cls.pool5_size
    pool5 = torch.randn(b, cls.encoder.out_channels, side, side).relu_()
    print(
        f"head: pool5 {tuple(pool5.shape[1:])}, fc6 {tuple(cls.head.fc6.weight.shape)}, "
        f"K={k}, B={b}, torch threads {torch.get_num_threads()}",
    )

    rows = pool5.repeat_interleave(k, dim=0)
    singletons = torch.eye(k).repeat(b, 1)

    @torch.no_grad()  # as inference calls it; saliency enables grad itself
    def batched_inference() -> Tensor:
        # One head forward per image (as the loop does), its score map shared by K rows.
        scores = cls.head_scores(pool5).repeat_interleave(k, dim=0)
        return saliency(cls, rows, singletons, scores=scores)

    # Inference: every class map of every image.
    fast = max(3, args.repeats)  # the batched forms are cheap: time them more often
    batched_s, batched = best_time(batched_inference, fast)
    ones = torch.ones(b, k)
    loop_s, loop_maps = best_time(lambda: per_class_loop(cls, pool5, ones), args.repeats)
    gemm_loop_s, _ = best_time(
        lambda: per_class_loop(cls, pool5, ones, gemm_max_scores), args.repeats
    )
    loop_stacked = torch.stack(loop_maps, dim=1).flatten(0, 1)  # (B*K, ...) like `rows`
    diff = (batched - loop_stacked).abs().max().item() / loop_stacked.abs().max().item()

    # Training: one multi-hot subset per image.
    subsets = torch.zeros(b, k)
    for row in subsets:
        row[torch.randperm(k)[: args.subset_size]] = 1.0
    with torch.no_grad():
        train_s, train_map = best_time(lambda: saliency(cls, pool5, subsets), fast)
    train_loop_s, train_maps = best_time(lambda: per_class_loop(cls, pool5, subsets), args.repeats)
    train_diff = (train_map - sum(train_maps)).abs().max().item() / train_map.abs().max().item()

    summary = {
        "batched_s": round(batched_s, 4),
        "loop_s": round(loop_s, 4),
        "speedup": round(loop_s / batched_s, 2),
        "train_batched_s": round(train_s, 4),
        "train_loop_s": round(train_loop_s, 4),
        "train_speedup": round(train_loop_s / train_s, 2),
        "max_rel_diff": float(f"{max(diff, train_diff):.2e}"),
        "gemm_loop_s": round(gemm_loop_s, 4),
    }
    print(
        f"inference, {b}x{k} maps: batched {batched_s:.3f} s, per-class loop {loop_s:.3f} s "
        f"-> {loop_s / batched_s:.1f}x (max rel. diff {diff:.1e}); the loop on a GEMM head "
        f"(im2col + matrix products, as the batched path) {gemm_loop_s:.3f} s -> "
        f"{gemm_loop_s / batched_s:.1f}x",
    )
    print(
        f"training, {b} multi-hot maps ({args.subset_size} labels): batched {train_s:.3f} s, "
        f"per-class loop {train_loop_s:.3f} s -> {train_loop_s / train_s:.1f}x "
        f"(max rel. diff {train_diff:.1e})",
    )
    if not args.skip_dense:
        dense_s, _ = best_time(lambda: dense_one_pass(cls, rows, singletons), 1)
        summary["dense_batched_s"] = round(dense_s, 4)
        print(
            f"reference: dense one-pass over all {b * k} rows {dense_s:.3f} s "
            f"({loop_s / dense_s:.1f}x the loop)",
        )
    ok = min(summary["speedup"], summary["train_speedup"]) >= args.target
    print(f"speed-ups {summary['speedup']}x / {summary['train_speedup']}x "
          f"(target {args.target}x): {'pass' if ok else 'FAIL'}")  # fmt: skip
    summary.update(target=args.target, **{"pass": ok})
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
