"""`ddn.load`: trained runs as one object that segments RGB images (the public API).

``ddn.load(cls_run, seg_run)`` loads a classifier run and the segmenter run trained on
it; ``ddn.load(run)`` a DeconvNet baseline run alone. `Predictor.segment` runs the same
procedure as ``ddn predict`` and ``ddn eval`` (`ddn.inference`) and returns a
`Segmentation`. Images are RGB: ``cv2.imread`` gives BGR, convert it first
(``cv2.cvtColor(image, cv2.COLOR_BGR2RGB)``); a BGR image is not refused (it cannot be
told apart) but segments worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddn.inference import Prediction, predict_images
from ddn.trained_runs import (
    BaselineModels,
    Models,
    load_deconvnet,
    load_models,
    model_path,
    resolve_device,
    run_kind,
)
from pipeline.errors import UserError
from pipeline.imageio import check_rgb


@dataclass
class Segmentation:
    """The result for one image. Class ids are label-map values: 1..C, 0 background.

    ``classes``: the picked classes, ascending (a DeconvNet baseline picks none: there,
    the classes its label map contains). ``probabilities``: (C,) float32, one per object
    class, ``probabilities[k - 1]`` for class k (the baseline: each class's highest pixel
    probability). With ``maps=True`` (not for the baseline), at the image's size:
    ``foreground`` (K, H, W), the foreground map of each picked class in the order of
    ``classes``; ``background`` (H, W), the background map of all picked classes.
    """

    labels: np.ndarray  # (H, W) uint8
    classes: tuple[int, ...]
    names: tuple[str, ...]  # the names of `classes`
    probabilities: np.ndarray
    foreground: np.ndarray | None = None
    background: np.ndarray | None = None


class Predictor:
    """Trained runs ready to segment; made by `load`.

    ``class_names``: the C+1 names, background first (label value k is
    ``class_names[k]``). ``baseline``: True for a DeconvNet run (no threshold, no maps).
    """

    def __init__(self, models: Models | BaselineModels, threshold: float = 0.5) -> None:
        self.models = models
        self.threshold = check_threshold(threshold)
        self.class_names: list[str] = list(models.classes)
        self.baseline = isinstance(models, BaselineModels)

    def segment(
        self,
        image: Any,
        *,
        threshold: float | None = None,
        maps: bool = False,
        classes: Sequence[str | int] | None = None,
    ) -> Segmentation:
        """Segment one RGB uint8 H x W x 3 image (a numpy array, or anything
        ``np.asarray`` turns into one, such as a PIL RGB image).

        ``classes`` (names or label values 1..C): the classes known to be in the image,
        segmented in place of those the classifier picks (the threshold then does not
        apply; the probabilities are still the classifier's)."""
        given = None if classes is None else [classes]
        return self.segment_batch([image], threshold=threshold, maps=maps, classes=given)[0]

    def segment_batch(
        self,
        images: Sequence[Any],
        *,
        threshold: float | None = None,
        maps: bool = False,
        classes: Sequence[Sequence[str | int]] | None = None,
    ) -> list[Segmentation]:
        """`segment` for several images (any sizes) in one forward pass each network;
        ``classes``, when given, has one list per image."""
        if maps and self.baseline:
            raise UserError("maps=True: a DeconvNet baseline run has no foreground maps")
        arrays = [check_rgb(image, f"images[{i}]") for i, image in enumerate(images)]
        t = self.threshold if threshold is None else check_threshold(threshold)
        labels = None if classes is None else [self._class_ids(row) for row in classes]
        preds = predict_images(self.models, arrays, t, keep_maps=maps, labels=labels)
        return [self._result(p) for p in preds]

    def _class_ids(self, names: Sequence[str | int]) -> list[int]:
        """Label values 1..C of class names or values; one line for an unknown one."""
        if isinstance(names, str):
            raise UserError(f"classes: a list of classes per image, got the string {names!r}")
        ids = []
        for c in names:
            if isinstance(c, str):
                if c not in self.class_names[1:]:
                    known = ", ".join(self.class_names[1:])
                    raise UserError(f"classes: unknown class {c!r}; this run has {known}")
                ids.append(self.class_names.index(c))
            else:
                ids.append(int(c))  # range-checked by the inference
        return ids

    def _result(self, p: Prediction) -> Segmentation:
        names = tuple(self.class_names[k] for k in p.labels)
        return Segmentation(p.pred, tuple(p.labels), names, p.probs, p.foreground, p.background)

    def __repr__(self) -> str:
        kind = "DeconvNet baseline" if self.baseline else "DecoupledNet"
        return f"Predictor({kind}, classes={self.class_names[1:]})"


def check_threshold(value: float) -> float:
    """A probability threshold, refused outside [0, 1]."""
    if not 0 <= value <= 1:
        raise UserError(f"threshold: must be in [0, 1], got {value}")
    return float(value)


def load_runs(
    cls_run: str | Path | None, seg_run: str | Path | None, device: torch.device | str
) -> Models | BaselineModels:
    """A classifier run with its segmenter run, or one DeconvNet baseline run (given as
    either argument, the other None)."""
    if cls_run is None and seg_run is None:
        raise UserError("no run given: ddn.load(cls_run, seg_run) or ddn.load(deconvnet_run)")
    if cls_run is None or seg_run is None:
        run = cls_run if seg_run is None else seg_run
        kind = run_kind(run)
        if kind == "deconvnet":
            return load_deconvnet(run, device)
        need = "its classifier run" if kind == "segmenter" else "a segmenter run"
        raise UserError(
            f"{model_path(run)}: holds a {kind or 'unknown'} model; alone, only a DeconvNet "
            f"baseline run segments: give {need} too (cls_run, seg_run)"
        )
    if run_kind(seg_run) == "deconvnet":
        raise UserError(
            f"{model_path(seg_run)}: a DeconvNet baseline run takes no classifier run: "
            "give it alone"
        )
    return load_models(cls_run, seg_run, device)


def load(
    cls_run: str | Path | None,
    seg_run: str | Path | None = None,
    *,
    device: str = "auto",
    threshold: float = 0.5,
) -> Predictor:
    """Trained runs as a `Predictor`: ``load(cls_run, seg_run)`` for DecoupledNet (a
    train-cls run and the train-seg run trained on it), ``load(run)`` for a DeconvNet
    baseline run (``train-seg --baseline deconvnet``). ``device``: auto (CUDA when
    available), cpu, cuda or cuda:N. ``threshold``: a class is picked when its
    probability is above it (``ddn predict --threshold``)."""
    return Predictor(load_runs(cls_run, seg_run, resolve_device(device)), threshold)
