"""Pictures of predictions: VOC palette PNGs, side-by-side overlays, the paper's maps.

Palette PNGs use the standard VOC colours (`pipeline.synth.voc_colormap`) and store the
class index as the pixel value, the format of the VOC evaluation server. Overlays put
the image, the ground truth and the prediction side by side with a legend naming the
classes shown; the maps figure shows, per picked label, the foreground map M_f(g^l),
the background map M_b(g*) and the channel mean of each bridge activation g^l (as the
paper's figures 2 and 3). A write that fails raises `pipeline.outpaths.WriteError`
naming the file, and leaves no half-written file behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ddn.inference import Prediction
from pipeline.outpaths import writing
from pipeline.synth import voc_colormap

CMAP = voc_colormap()
IGNORE = 255
MIN_PANEL = 192  # small images are enlarged (nearest) so that captions fit
CAPTION_H = 20
FONT = cv2.FONT_HERSHEY_SIMPLEX
ALPHA = 0.55  # weight of the label colours over the image


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    """A palette ('P' mode) PNG whose pixel values are the class indices."""
    im = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    im.putpalette(CMAP.tobytes())  # turns the 'L' image into 'P', values unchanged
    with writing(path) as p:
        im.save(p)


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    with writing(path) as p:
        Image.fromarray(image).save(p)


def blend_labels(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label colours over the image; background (0) left as the image."""
    colours = CMAP[labels].astype(np.float32)
    out = image.astype(np.float32)
    painted = labels != 0
    out[painted] = (1 - ALPHA) * out[painted] + ALPHA * colours[painted]
    return out.astype(np.uint8)


def heatmap(values: np.ndarray, image: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A [0, vmax] map in the jet colours, blended over the image."""
    top = float(values.max()) if vmax is None else vmax
    scaled = np.clip(values / top if top > 0 else values * 0, 0, 1)
    jet = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    jet = cv2.cvtColor(jet, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 0.4, jet, 0.6, 0)


def _scale(image: np.ndarray) -> np.ndarray:
    factor = max(1, -(-MIN_PANEL // min(image.shape[:2])))
    if factor == 1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)


def _captioned(panel: np.ndarray, caption: str) -> np.ndarray:
    """The panel with a white caption strip above it."""
    strip = np.full((CAPTION_H, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (3, CAPTION_H - 6), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel])


def _row(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    parts = []
    for p in panels:
        pad = np.full((height - p.shape[0], p.shape[1], 3), 255, np.uint8)
        parts += [np.concatenate([p, pad]), np.full((height, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def _stack(rows: Sequence[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    return np.concatenate(
        [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )


def legend(classes: Sequence[str], shown: Sequence[int], width: int) -> np.ndarray:
    """Colour swatches with class names, wrapped to `width` pixels."""
    line_h, swatch = 20, 12
    entries = []
    for k in shown:
        name = "ignore" if k == IGNORE else classes[k] if k < len(classes) else f"class{k}"
        text_w = cv2.getTextSize(name, FONT, 0.45, 1)[0][0]
        entries.append((k, name, swatch + 6 + text_w + 14))
    lines, x = 1, 0
    for _, _, w in entries:
        if x and x + w > width:
            lines, x = lines + 1, 0
        x += w
    out = np.full((lines * line_h + 4, width, 3), 255, np.uint8)
    x, y = 4, 4
    for k, name, w in entries:
        if x > 4 and x + w > width:
            x, y = 4, y + line_h
        colour = tuple(int(v) for v in CMAP[k])
        cv2.rectangle(out, (x, y + 2), (x + swatch, y + 2 + swatch), colour, -1)
        cv2.rectangle(out, (x, y + 2), (x + swatch, y + 2 + swatch), (0, 0, 0), 1)
        cv2.putText(out, name, (x + swatch + 6, y + 13), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += w
    return out


def overlay(
    image: np.ndarray, pred: np.ndarray, classes: Sequence[str], gt: np.ndarray | None = None
) -> np.ndarray:
    """Image | ground truth | prediction side by side, with a legend of the classes shown."""
    panels = [_captioned(_scale(image), "image")]
    shown = set(np.unique(pred).tolist())
    if gt is not None:
        panels.append(_captioned(_scale(blend_labels(image, gt)), "ground truth"))
        shown |= set(np.unique(gt).tolist())
    panels.append(_captioned(_scale(blend_labels(image, pred)), "prediction"))
    row = _row(panels)
    return _stack([row, legend(classes, sorted(shown), row.shape[1])])


def maps_figure(image: np.ndarray, prediction: Prediction, classes: Sequence[str]) -> np.ndarray:
    """Top row: image, M_f(g^l) per picked label, M_b(g*); bottom: mean g^l and g*.

    Softmax maps share the scale [0, 1]; each bridge map is scaled to its own maximum.
    Needs a Prediction made with keep_maps=True; with no label picked, only the image.
    """
    top = [_captioned(_scale(image), "image")]
    if prediction.foreground is None:
        return top[0]
    bottom = [np.full_like(top[0], 255)]
    for k, fg, g in zip(prediction.labels, prediction.foreground, prediction.bridge, strict=False):
        name, prob = classes[k], prediction.probs[k - 1]
        top.append(_captioned(_scale(heatmap(fg, image, 1.0)), f"{name} fg {prob:.2f}"))
        bottom.append(_captioned(_scale(heatmap(g, image)), f"g {name}"))
    top.append(_captioned(_scale(heatmap(prediction.background, image, 1.0)), "background"))
    bottom.append(_captioned(_scale(heatmap(prediction.bridge[-1], image)), "g* (all)"))
    return _stack([_row(top), _row(bottom)])


def save_maps(path: str | Path, image: np.ndarray, prediction: Prediction, classes) -> None:
    """The maps figure as ``path`` (.png) and the float maps beside it (.npz)."""
    path = Path(path)
    save_rgb(path, maps_figure(image, prediction, classes))
    if prediction.foreground is None:
        return
    with writing(path.with_suffix(".npz")) as npz:
        np.savez_compressed(
            npz,
            labels=np.asarray(prediction.labels, np.int64),
            foreground=prediction.foreground.astype(np.float16),
            background=prediction.background.astype(np.float16),
            bridge=prediction.bridge.astype(np.float16),
        )
