"""The built-in synthetic dataset, written in the exact PASCAL VOC 2012 layout.

A class is one fixed (shape, texture) pair with strong variation inside the class (scale,
rotation, aspect, pattern frequency and phase), and every colour in an image (objects,
background, clutter) is drawn from one distribution. So recognising a class takes many
image-level examples (the classifier's job), while figure/ground ("a periodically patterned
object on a cluttered, unpatterned background") is generic and learnable from a few masks
(the segmenter's job): the setting DecoupledNet is built for. Colour-coded toy classes would
let a plain segmenter trained on five masks win, and the experiment would say nothing
(DESIGN.md section 3).

Every image is a pure function of (seed, index) (`render`), so generation could be
parallelised, or one image reproduced without the rest.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.errors import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross")
TEXTURES = ("stripes", "checkerboard", "dots", "rings")
JPEG_QUALITY = 90
MIN_SIZE = 32
_ID_RE = re.compile(r"synth_\d{6,}")


def class_design(k: int) -> tuple[str, str]:
    """The (shape, texture) pair of class k (1-based).

    Index i maps to (i mod 5, i mod 4): since 5 and 4 are coprime this is a bijection on the
    20 pairs, so with 20 classes every shape comes in every texture (neither alone tells the
    class) and any first N classes are still N distinct pairs.
    """
    i = k - 1
    return SHAPES[i % len(SHAPES)], TEXTURES[i % len(TEXTURES)]


def voc_colormap() -> np.ndarray:
    """The standard VOC palette as (256, 3) uint8: the bit-interleaving formula of VOCdevkit."""
    cmap = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        cmap[i] = rgb
    return cmap  # cmap[255] == (224, 224, 192), the ignore colour


def image_id(index: int) -> str:
    return f"synth_{index:06d}"


@dataclass(frozen=True)
class SynthImage:
    """One rendered example."""

    image: np.ndarray  # RGB uint8 HxWx3
    labels: np.ndarray  # uint8 HxW: 0 background, k class k, 255 ignore band
    objects: tuple[int, ...]  # class of each object in painting order (later occludes earlier)


# ---------------------------------------------------------------- drawing helpers


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """The one colour distribution of the whole dataset: uniform over the RGB cube."""
    return rng.uniform(0, 255, size=(n, 3)).astype(np.float32)


def _contrasting_pair(rng: np.random.Generator) -> np.ndarray:
    # Both colours come from the same distribution whatever the class; only rejecting
    # near-identical pairs keeps the texture visible. Draw a fixed number of candidates so
    # the random stream does not depend on how many rejections happened.
    a, cands = _colours(rng, 1)[0], _colours(rng, 16)
    far = np.linalg.norm(cands - a, axis=1) >= 100
    b = cands[int(np.argmax(far))] if far.any() else 255 - a
    # The rejection makes b slightly more extreme than a; a random order keeps the two roles
    # (e.g. dot colour vs. ground colour) identically distributed.
    return np.stack([a, b] if rng.random() < 0.5 else [b, a])


def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """The outline of `shape` around the origin, extent about 1, as (N, 2) float."""
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "rectangle":
        return 0.85 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if shape == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return 1.15 * np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.2, 1.2 * rng.uniform(0.4, 0.55))
        return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    if shape == "cross":
        w = rng.uniform(0.3, 0.42)  # arm half-width
        q = [(w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w)]
        q += [(-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w)]
        return np.array(q, dtype=float)
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple]:
    """A randomly scaled, stretched, rotated and placed shape; returns (mask, (cx, cy, r))."""
    cx, cy = rng.uniform(0.1, 0.9, size=2) * size
    r = rng.uniform(0.12, 0.3) * size
    aspect = np.exp(rng.uniform(-0.4, 0.4))
    theta = rng.uniform(0, 2 * np.pi)
    pts = _unit_polygon(shape, rng) * [r * aspect, r / aspect]
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = pts @ rot.T + [cx, cy]
    mask = np.zeros((size, size), dtype=np.uint8)
    # 4 fractional bits: sub-pixel vertices, so small shapes keep their proportions.
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool), (cx, cy, r)


def _texture(texture: str, rng: np.random.Generator, size: int, geom: tuple) -> np.ndarray:
    """Pattern in [0, 1] over the whole image, scaled to the object (so it is scale-free)."""
    xx, yy = _grid(size)
    cx, cy, r = geom
    period = max(4.0, r * rng.uniform(0.28, 0.55))
    k = 2 * np.pi / period
    ang = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = (yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    if texture == "stripes":
        s = np.sin(k * u + phase[0]) + rng.uniform(-0.3, 0.3)  # the offset varies the duty
    elif texture == "checkerboard":
        s = np.sin(k * u + phase[0]) * np.sin(k * rng.uniform(0.8, 1.25) * v + phase[1])
    elif texture == "dots":
        fu = np.mod(u / period + phase[0], 1.0) - 0.5
        fv = np.mod(v / period + phase[1], 1.0) - 0.5
        # Signed distance in pixels to the dot edge: a 1-px anti-aliased rim.
        return np.clip(0.5 + period * (rng.uniform(0.22, 0.34) - np.hypot(fu, fv)), 0, 1)
    elif texture == "rings":
        ox, oy = rng.uniform(-0.3, 0.3, size=2) * r
        s = np.sin(k * np.hypot(xx - cx - ox, yy - cy - oy) + phase[0])
    else:
        raise ValueError(f"unknown texture {texture!r}")
    # Gain ~ 1/slope at the zero crossings: edges about 1 px wide, crisp but not aliased.
    return np.clip(0.5 + 1.5 * s / k, 0, 1)


def _shading(rng: np.random.Generator, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """A gentle linear lighting gradient, so no region is one flat colour."""
    xx, yy = _grid(size)
    d = rng.normal(size=2)
    d *= rng.uniform(0, 0.35) / (np.linalg.norm(d) + 1e-9)
    return 1.0 + (d[0] * (xx - cx) + d[1] * (yy - cy)) / r


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    small = rng.uniform(-1, 1, size=(cells, cells, channels)).astype(np.float32)
    out = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise plus clutter (strokes, noise-textured blobs); never a class
    shape+texture. RGB uint8."""
    cells = int(rng.integers(2, 6))
    base = cv2.resize(_colours(rng, cells * cells).reshape(cells, cells, 3), (size, size),
                      interpolation=cv2.INTER_CUBIC)  # fmt: skip
    base += 40 * _smooth_noise(rng, size, int(rng.integers(6, 16)), 3)
    img = np.clip(base, 0, 255).astype(np.uint8)

    for _ in range(int(rng.integers(2, 7))):  # blobs: smooth random outlines, noise texture
        n = 24
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        radius = rng.uniform(0.04, 0.14) * size
        wobble = sum(rng.uniform(-0.25, 0.25) * np.cos(f * t + rng.uniform(0, 6.3)) for f in (2, 3))
        pts = (
            rng.uniform(0, size, size=2)
            + np.stack([np.cos(t), np.sin(t)], 1) * (radius * (1 + wobble))[:, None]
        )
        blob = np.zeros((size, size), dtype=np.uint8)
        cv2.fillPoly(blob, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        mix = 0.5 + 0.5 * _smooth_noise(rng, size, max(4, size // 5), 1)
        c = _colours(rng, 2)
        fill = c[0] * (1 - mix) + c[1] * mix
        img[blob.astype(bool)] = fill[blob.astype(bool)].astype(np.uint8)

    thick_max = max(2, size // 40)
    for _ in range(int(rng.integers(4, 13))):  # strokes: straight or bent, random colour
        pts = rng.uniform(-0.1, 1.1, size=(int(rng.integers(2, 5)), 2)) * size
        colour = tuple(float(x) for x in _colours(rng, 1)[0])
        thickness = int(rng.integers(1, thick_max + 1))
        cv2.polylines(img, [np.round(pts).astype(np.int32)], False, colour, thickness, cv2.LINE_AA)
    return img


def ignore_band(instances: np.ndarray, size: int) -> np.ndarray:
    """Pixels within ~1-2 px (scaled with the image) of a boundary between two regions.

    Regions are object instances, not classes: VOC outlines every object, so two touching
    objects of the same class are separated by the band too.
    """
    radius = max(1, round(size / 200))
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), dtype=np.uint8)
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


def _place_objects(
    rng: np.random.Generator, size: int, classes: int
) -> tuple[np.ndarray, list[tuple[int, tuple]]]:
    """Instance map (0 background, i = i-th object) and (class, geometry) per object.

    A candidate is rejected when it would leave any object (itself included) with less than
    40% of its own area outside occlusion and the ignore band, so every object in the mask
    has a reasonable number of trainable pixels.
    """
    wanted = int(rng.integers(1, 5))
    min_area = (0.08 * size) ** 2
    instances = np.zeros((size, size), dtype=np.uint8)
    objects: list[tuple[int, tuple]] = []
    areas: list[int] = []
    attempts = 0
    while (len(objects) < wanted and attempts < 10 * wanted) or not objects:
        attempts += 1
        cls = int(rng.integers(1, classes + 1))
        mask, geom = _shape_mask(class_design(cls)[0], rng, size)
        area = int(mask.sum())
        if area < min_area:
            continue
        trial = instances.copy()
        trial[mask] = len(objects) + 1
        kept = np.bincount(trial[~ignore_band(trial, size)], minlength=len(objects) + 2)
        if all(kept[i + 1] >= 0.4 * a for i, a in enumerate([*areas, area])):
            instances, areas = trial, [*areas, area]
            objects.append((cls, geom))
    return instances, objects


def render(seed: int, index: int, classes: int = 20, size: int = 160) -> SynthImage:
    """Image `index` of the dataset with this seed: a pure function of its arguments."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))
    instances, objects = _place_objects(rng, size, classes)
    img = _background(rng, size).astype(np.float32)
    for i, (cls, geom) in enumerate(objects, start=1):
        visible = instances == i
        pattern = _texture(class_design(cls)[1], rng, size, geom)[visible][:, None]
        pair = _contrasting_pair(rng)
        shade = _shading(rng, size, *geom)[visible][:, None]
        img[visible] = (pair[0] * (1 - pattern) + pair[1] * pattern) * shade
    img += rng.normal(0, 3, size=img.shape).astype(np.float32)  # sensor noise
    lut = np.zeros(256, dtype=np.uint8)
    lut[1 : len(objects) + 1] = [c for c, _ in objects]
    labels = lut[instances]
    labels[ignore_band(instances, size)] = 255
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return SynthImage(image, labels, tuple(c for c, _ in objects))


# ---------------------------------------------------------------- writing the dataset


def split_ids(ids: list[str], seed: int, val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic (train, val) split, each sorted; both non-empty when that is possible."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = rng.permutation(len(ids))
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def _check_args(images: int, classes: int, size: int, seed: int, val_fraction: float) -> None:
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    if not 1 <= classes <= len(VOC_CLASSES):
        raise UserError(f"--classes must be 1..{len(VOC_CLASSES)}, got {classes}")
    if size < MIN_SIZE:
        raise UserError(f"--size must be at least {MIN_SIZE} px, got {size}")
    if seed < 0:
        raise UserError(f"--seed must be non-negative, got {seed}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None


def _remove_stale(root: Path, ids: set[str]) -> None:
    # A previous, larger run into the same OUT would leave images no split lists; only our
    # own file names are touched, so a user's files in the folder are safe.
    for folder, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        for p in (root / folder).glob(f"synth_*{ext}"):
            if _ID_RE.fullmatch(p.stem) and p.stem not in ids:
                p.unlink()


def generate(
    out: Path,
    images: int = 1000,
    classes: int = 20,
    size: int = 160,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> Path:
    """Write the dataset under ``out/VOCdevkit/VOC2012`` and return that folder.

    Same arguments give byte-identical files; writing over an existing dataset replaces it.
    """
    _check_args(images, classes, size, seed, val_fraction)
    root = Path(out) / "VOCdevkit" / "VOC2012"
    sets = root / "ImageSets" / "Segmentation"
    ids = [image_id(i) for i in range(images)]
    try:
        for d in (root / "JPEGImages", root / "SegmentationClass", sets):
            d.mkdir(parents=True, exist_ok=True)
        _remove_stale(root, set(ids))
    except OSError as e:
        raise UserError(f"{out}: cannot create the dataset folder ({e.strerror or e})") from None

    palette = voc_colormap().tobytes()
    for index, name in enumerate(tqdm(ids, desc="synth", unit="img", disable=None)):
        ex = render(seed, index, classes, size)
        ok, jpg = cv2.imencode(
            ".jpg",
            cv2.cvtColor(ex.image, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        _write(root / "JPEGImages" / f"{name}.jpg", jpg.tobytes())
        png = Image.frombytes("P", (size, size), ex.labels.tobytes())
        png.putpalette(palette)
        buf = io.BytesIO()
        png.save(buf, format="PNG")
        _write(root / "SegmentationClass" / f"{name}.png", buf.getvalue())

    train, val = split_ids(ids, seed, val_fraction)
    for split, members in (("train", train), ("val", val)):
        _write(sets / f"{split}.txt", "".join(f"{i}\n" for i in members).encode())
    names = ["background", *VOC_CLASSES[:classes]]
    _write(root / "classes.txt", "".join(f"{n}\n" for n in names).encode())
    return root
