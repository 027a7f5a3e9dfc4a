"""DecoupledNet inference: the reference procedure (DESIGN.md, "Inference details").

For each image: zero-pad at bottom/right to a square, resize to the classifier's input,
one classifier forward; class probabilities = sigmoid of the average-pooled scores; the
K labels above the threshold are picked. Their K+1 saliency seeds (each label alone,
then all of them for g*) go through bridge + segmenter as one batch: the foreground map
of label l is softmax channel 1 of its row, the background map softmax channel 0 of the
g* row. The per-pixel score volume over background + classes (unpicked classes 0) is
normalised to sum 1, resized back to the padded square (bilinear), cropped to H x W and
arg-maxed. No label picked: the whole image is background (the segmenter is not run).

Several images share one classifier forward (they all have the network's input size
after padding and resizing) and one segmenter forward (the concatenation of every
image's K+1 rows). Modules must be in eval mode, so an image's result does not depend
on the batch it came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddn.models import (
    Classifier,
    ClassifierOutput,
    DecoupledSegmenter,
    normalize,
    saliency,
    seed_subsets,
)
from ddn.trained_runs import BaselineModels, Models
from pipeline.errors import UserError
from pipeline.readers import pad_to_square_and_resize

# Softmax probabilities are positive, but a float32 softmax of extreme logits can
# underflow to exactly 0 in every channel of a pixel; the floor keeps 0/0 out.
_NORM_FLOOR = 1e-12


@dataclass
class Prediction:
    """The result for one image. Classes are label-map values: 1..C, 0 background."""

    labels: list[int]  # picked classes, ascending
    probs: np.ndarray  # (C,) float32; probs[k - 1] is class k's probability
    pred: np.ndarray  # (H, W) uint8 class map
    # With keep_maps=True (the paper's figures), at the image's resolution:
    foreground: np.ndarray | None = None  # (K, H, W) M_f(g^l), rows follow `labels`
    background: np.ndarray | None = None  # (H, W) M_b(g*)
    bridge: np.ndarray | None = None  # (K+1, H, W) channel mean of g^l; g* last


def network_input(images: Sequence[np.ndarray], size: int) -> Tensor:
    """uint8 (B, 3, size, size): each image zero-padded to a square and resized."""
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 HxWx3 images, got {image.dtype} {image.shape}")
    batch = np.stack([pad_to_square_and_resize(image, size) for image in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def to_image_grid(maps: Tensor, height: int, width: int) -> Tensor:
    """Maps (N, s, s) on the network's square -> (N, height, width) on the image.

    Resized (bilinear) to the padded square max(H, W), then its top-left H x W kept:
    the inverse of `pad_to_square_and_resize`. Shrinking antialiases, as the input's
    area resize does.
    """
    side = max(height, width)
    x = maps.unsqueeze(0).float()
    if x.shape[-1] != side:
        antialias = side < x.shape[-1]
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=antialias)
    return x[0, :, :height, :width]


def combine_maps(
    foreground: Tensor, background: Tensor, labels: Sequence[int], height: int, width: int
) -> Tensor:
    """Class map (height, width) uint8 from the K foreground maps and the background map.

    `foreground` (K, s, s) holds M_f(g^l) for the ascending `labels`, `background`
    (s, s) M_b(g*). The reference's volume has C+1 channels with the unpicked ones at 0;
    only the K+1 non-zero channels are built here: a zero channel changes neither the
    per-pixel sum nor (as the others are positive) the arg-max, and with ascending labels
    ties still go to the lowest class, as an arg-max over all C+1 channels would.
    """
    if list(labels) != sorted(set(labels)) or len(labels) != foreground.shape[0]:
        raise ValueError(f"labels {list(labels)} must be ascending, one per foreground map")
    volume = torch.cat([background.unsqueeze(0), foreground]).float()
    volume = volume / volume.sum(0, keepdim=True).clamp_min(_NORM_FLOOR)
    channel = to_image_grid(volume, height, width).argmax(0)
    lut = torch.tensor([0, *labels], dtype=torch.uint8, device=channel.device)
    return lut[channel]


def pick_labels(probs: Tensor, threshold: float) -> list[list[int]]:
    """Per image, the 0-based classifier outputs whose probability is above `threshold`."""
    return [torch.nonzero(row > threshold).flatten().tolist() for row in probs]


def given_labels(labels: Sequence[Sequence[int]], images: int, classes: int) -> list[list[int]]:
    """`segment`'s ``labels`` (classes 1..C per image) as 0-based sorted picks, checked."""
    if len(labels) != images:
        raise UserError(f"labels: {len(labels)} lists for {images} images")
    picked = []
    for row in labels:
        wrong = [c for c in row if not 1 <= int(c) <= classes]
        if wrong:
            raise UserError(f"labels: class {wrong[0]} is not in 1..{classes}")
        picked.append(sorted({int(c) - 1 for c in row}))
    return picked


def _segmenter_rows(
    classifier: Classifier,
    segmenter: DecoupledSegmenter,
    out: ClassifierOutput,
    picked: list[list[int]],
    keep_maps: bool,
) -> tuple[Tensor, Tensor | None]:
    """Softmax (R, 2, S, S) for all images' K+1 rows in one pass, and optionally g^l.

    R = sum of K_i + 1 over images with a picked label; image i's rows are contiguous,
    its K singletons first and g* last (`seed_subsets`).
    """
    device = out.pool5.device
    counts = torch.tensor([len(p) + 1 if p else 0 for p in picked], device=device)
    rows = out.repeat_interleave(counts)  # tensor repeats: K_i + 1 copies of image i
    subsets = torch.cat([seed_subsets(p, classifier.num_classes, device) for p in picked if p])
    sal = saliency(classifier, rows.pool5, subsets, scores=rows.scores)
    captured: list[Tensor] = []
    hook = None
    if keep_maps:
        # A hook rather than calling bridge and segmenter by hand: whatever
        # DecoupledSegmenter.forward does stays the one definition of the pass.
        hook = segmenter.bridge.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        probs = segmenter(rows, sal).float().softmax(dim=1)
    finally:
        if hook is not None:
            hook.remove()
    bridge = captured[0].float().mean(dim=1) if captured else None
    return probs, bridge


@torch.no_grad()
def segment(
    classifier: Classifier,
    segmenter: DecoupledSegmenter,
    images: Sequence[np.ndarray],
    threshold: float = 0.5,
    device: torch.device | str | None = None,
    keep_maps: bool = False,
    labels: Sequence[Sequence[int]] | None = None,
) -> list[Prediction]:
    """Segment RGB uint8 HxWx3 `images` (any sizes) in one batch; one Prediction each.

    `device` defaults to the classifier's; the modules must already be there and in eval
    mode. `keep_maps` also returns the foreground, background and bridge maps. `labels`
    (per image, classes 1..C) replaces the classifier's pick when the classes present are
    known, e.g. image-level labels at test time or measuring the segmenter with the
    true labels; `threshold` then does not apply.
    """
    if classifier.training or segmenter.training:
        raise ValueError("segment() needs classifier and segmenter in eval mode (.eval())")
    if not images:
        return []
    device = torch.device(device) if device is not None else classifier.head.fc6.weight.device
    x = network_input(images, classifier.input_size).to(device)
    out = classifier(normalize(x))
    probs = torch.sigmoid(out.logits.float())
    if labels is None:
        picked = pick_labels(probs, threshold)
    else:
        picked = given_labels(labels, len(images), classifier.num_classes)
    seg_probs = bridge = None
    if any(picked):
        seg_probs, bridge = _segmenter_rows(classifier, segmenter, out, picked, keep_maps)

    results = []
    row = 0
    for image, labels0, p in zip(images, picked, probs.cpu().numpy(), strict=True):
        h, w = image.shape[:2]
        labels = [c + 1 for c in labels0]
        k = len(labels)
        if k == 0:
            pred = np.zeros((h, w), np.uint8)
            results.append(Prediction(labels, p, pred))
            continue
        fg, bg = seg_probs[row : row + k, 1], seg_probs[row + k, 0]
        pred = combine_maps(fg, bg, labels, h, w).cpu().numpy()
        result = Prediction(labels, p, pred)
        if keep_maps:
            result.foreground = to_image_grid(fg, h, w).cpu().numpy()
            result.background = to_image_grid(bg[None], h, w)[0].cpu().numpy()
            result.bridge = to_image_grid(bridge[row : row + k + 1], h, w).cpu().numpy()
        results.append(result)
        row += k + 1
    return results


@torch.no_grad()
def segment_deconvnet(
    model: torch.nn.Module, images: Sequence[np.ndarray], device: torch.device | str | None = None
) -> list[Prediction]:
    """The DeconvNet baseline on RGB uint8 `images`: the same padded-square input as
    `segment`, softmax over its C+1 channels resized back (bilinear) and cropped to H x W,
    arg-max. ``labels`` are the classes the prediction contains; ``probs`` each class's
    highest pixel probability (the baseline has no image classifier).
    """
    if model.training:
        raise ValueError("segment_deconvnet() needs the model in eval mode (.eval())")
    if not images:
        return []
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = network_input(images, model.input_size).to(device)
    probs = model(normalize(x)).float().softmax(dim=1)
    results = []
    for image, p in zip(images, probs, strict=True):
        h, w = image.shape[:2]
        pred = to_image_grid(p, h, w).argmax(0).to(torch.uint8).cpu().numpy()
        labels = [int(k) for k in np.unique(pred) if k > 0]
        image_probs = p[1:].flatten(1).amax(1).cpu().numpy()
        results.append(Prediction(labels, image_probs, pred))
    return results


def predict_images(
    models: Models | BaselineModels,
    images: Sequence[np.ndarray],
    threshold: float = 0.5,
    keep_maps: bool = False,
    labels: Sequence[Sequence[int]] | None = None,
) -> list[Prediction]:
    """`segment` for a classifier + segmenter pair, `segment_deconvnet` for a baseline run
    (which has no threshold, no maps and picks no labels)."""
    check_maps(models, keep_maps)
    if isinstance(models, BaselineModels):
        if labels is not None:
            raise UserError("classes: a DeconvNet baseline run picks no labels to replace")
        return segment_deconvnet(models.model, images)
    return segment(models.classifier, models.segmenter, images, threshold, keep_maps=keep_maps,
                   labels=labels)  # fmt: skip


def check_maps(models: Models | BaselineModels, maps: bool) -> None:
    """Refuse to draw foreground/bridge maps for a run that has none (before any work)."""
    if maps and isinstance(models, BaselineModels):
        raise UserError("--save-maps: a DeconvNet baseline run has no foreground/bridge maps")
