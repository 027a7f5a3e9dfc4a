"""Class-specific saliency f_cls: d( sum_c seed_c * maxpool(score)_c ) / d(pool5).

seed = sigmoid(max-pooled score) x multi-hot subset, per sample. The seed is a constant
(the reference feeds the sigmoid output as the top diff of the max-pooled score), the
classifier is frozen, and the map is an input to the bridge, never differentiated
through: the result is detached and no parameter gradient is ever accumulated.

One backward pass serves the whole batch. It is taken over pool5 *windows* rather than
the whole map: max pooling routes each class's gradient to a single score position
(the first maximum, as Caffe's max pooling does), and a score position sees only the
fc6-kernel window of pool5 under it (fc7 and score are 1x1). So the head is re-run,
with grad, on just the distinct (sample, argmax position) windows that some seed needs,
and the index backward sums the window gradients into pool5. This is the same
gradient as back-propagating the full score map, at a fraction of the cost when seeds
are few or share positions: the K+1 seeds of one image at inference need at most K
windows instead of K+1 full 4x4 maps, which is what makes the batched form beat a
per-class loop rather than just match it (benchmarks/bench_saliency.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddn.models.classifier import Classifier


def saliency(
    classifier: Classifier, pool5: Tensor, subsets: Tensor, scores: Tensor | None = None
) -> Tensor:
    """Per-sample class-specific saliency (B, C5, h, w) for multi-hot `subsets` (B, C).

    `scores`, the classifier's score map for this very pool5 (ClassifierOutput.scores),
    saves re-running the head to find the max positions; it is optional. Works under
    torch.no_grad() callers and under autocast; returns pool5's dtype, detached.
    """
    pool5 = pool5.detach()
    batch, num_classes = pool5.shape[0], classifier.num_classes
    if subsets.shape != (batch, num_classes):
        raise ValueError(f"subsets {tuple(subsets.shape)} should be ({batch}, {num_classes})")
    # Outside autocast the head runs in its own dtype (bf16 pool5 from an autocast
    # forward, float32 weights); inside, autocast picks. The gradient comes back in
    # pool5's dtype either way.
    head_dtype = None
    if not torch.is_autocast_enabled(pool5.device.type):
        head_dtype = classifier.head.fc6.weight.dtype
    with torch.no_grad():
        if scores is None:
            scores = classifier.head_scores(pool5.to(head_dtype))
        k = classifier.fc6_kernel
        h, w = pool5.shape[-2] - k + 1, pool5.shape[-1] - k + 1
        if scores.shape != (batch, num_classes, h, w):
            raise ValueError(
                f"scores {tuple(scores.shape)} do not belong to pool5 {tuple(pool5.shape)}"
            )
        flat = scores.detach().flatten(2)
        position = flat.argmax(dim=-1)  # (B, C); argmax is documented to pick the first
        max_scores = flat.gather(-1, position.unsqueeze(-1)).squeeze(-1)
        # bf16 scores (autocast) get a float32 seed; float64 stays float64 (tests).
        dtype = torch.promote_types(max_scores.dtype, torch.float32)
        seeds = torch.sigmoid(max_scores.to(dtype)) * subsets.to(dtype)
        sample, cls = (subsets != 0).nonzero(as_tuple=True)
    if sample.numel() == 0:
        return torch.zeros_like(pool5)

    # Distinct windows: classes of one sample that peak at the same position share one.
    window_id, which = torch.unique(sample * (h * w) + position[sample, cls], return_inverse=True)
    win_sample = window_id // (h * w)
    top = (window_id % (h * w)) // w
    left = window_id % w
    offsets = torch.arange(k, device=pool5.device)
    rows = (top.unsqueeze(1) + offsets)[:, :, None]  # (U, k, 1)
    cols = (left.unsqueeze(1) + offsets)[:, None, :]  # (U, 1, k)
    seed_grid = seeds.new_zeros(window_id.numel(), num_classes)
    seed_grid[which, cls] = seeds[sample, cls]

    with torch.enable_grad():
        leaf = pool5.requires_grad_(True)
        # Advanced indices around a slice put their dims first: (U, k, k, C5).
        windows = leaf[win_sample[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        windows = windows.to(head_dtype)
        window_scores = classifier.window_scores(windows)  # (U, C)
        (grad,) = torch.autograd.grad(
            window_scores, leaf, grad_outputs=seed_grid.to(window_scores.dtype)
        )
    return grad.detach()


def seed_subsets(labels: Sequence[int], num_classes: int, device=None) -> Tensor:
    """The K+1 inference subsets of one image: each picked label alone, then all of them.

    Rows 0..K-1 give the K foreground maps, row K the background map (g*).
    Labels are class indices in 0..num_classes-1 of the classifier's outputs.
    """
    labels = list(labels)
    subsets = torch.zeros(len(labels) + 1, num_classes, device=device)
    for row, label in enumerate(labels):
        subsets[row, label] = 1.0
    subsets[len(labels), labels] = 1.0
    return subsets
