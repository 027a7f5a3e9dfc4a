"""Reading, validating and encoding images and label maps.

Everything that touches pixels from user files goes through here, so that every
bad file produces the same kind of one-line error (`BadInputError`) naming it.
Images are RGB uint8 HxWx3 throughout ddn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline.errors import BadInputError, UserError
from pipeline.records import CocoMask, MaskSource

# EXIF rotation is ignored on purpose: label maps are aligned with the stored pixel
# grid, not with the rotated view a photo viewer shows.
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def read_bytes(path: str | Path) -> bytes:
    """The raw bytes of a file, or a `BadInputError` saying why they can't be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except OSError as e:
        raise BadInputError(path, f"cannot read ({e.strerror})") from None
    if not data:
        raise BadInputError(path, "file is empty")
    return data


def _looks_truncated(data: bytes) -> bool:
    # libjpeg decodes a truncated JPEG with a grey bottom and only a warning, so the
    # end-of-image marker is checked explicitly. PNG truncation makes cv2 fail anyway.
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-4096:]
    return False


def decode_image(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 HxWx3 (grayscale, CMYK, alpha converted)."""
    if _looks_truncated(data):
        raise BadInputError(path, "truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, _DECODE_FLAGS)
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise BadInputError(path, "cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_rgb(image: Any, what: str = "image") -> np.ndarray:
    """``image`` as an RGB uint8 H x W x 3 array, or a `UserError` saying what it is."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        hint = ""
        if array.ndim == 3 and array.shape[2] == 4:
            hint = " (RGBA: drop the alpha channel, image[..., :3])"
        elif array.ndim == 2:
            hint = " (grayscale: np.stack([image] * 3, axis=-1))"
        elif array.dtype != np.uint8 and array.dtype.kind == "f":
            hint = " (floats: convert 0..255 values with .astype(np.uint8))"
        raise UserError(
            f"{what}: expected an RGB uint8 H x W x 3 array, got {array.dtype} "
            f"{tuple(array.shape)}{hint}"
        )
    return array


def load_image(path: str | Path) -> tuple[bytes, np.ndarray]:
    """Original encoded bytes (what shards store) and the decoded RGB pixels."""
    data = read_bytes(path)
    return data, decode_image(data, path)


def _load_png_labels(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if im.mode in ("I", "I;16"):
                arr = np.array(im)
                if arr.max(initial=0) > 255:
                    raise BadInputError(path, "label map has values above 255")
                return arr.astype(np.uint8)
            raise BadInputError(
                path,
                f"label map must be a single-channel (palette or gray) PNG, got mode {im.mode}",
            )
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInputError(path, f"cannot decode label map ({e})") from None


def _load_mat_labels(path: Path) -> np.ndarray:
    # SBD stores cls/<id>.mat with a struct GTcls whose field Segmentation is HxW.
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        seg = mat["GTcls"].Segmentation
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except Exception as e:  # scipy raises many kinds for a broken .mat
        raise BadInputError(path, f"cannot read SBD label .mat ({e})") from None
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.max(initial=0) > 255:
        raise BadInputError(path, "SBD Segmentation is not a 2-D map of class indices")
    return seg.astype(np.uint8)


def paint_coco_mask(spec: CocoMask) -> np.ndarray:
    """Paint instance masks into one semantic map; crowd regions become 255 (ignore)."""
    from pycocotools import mask as mask_utils

    out = np.zeros((spec.height, spec.width), dtype=np.uint8)
    crowd = np.zeros_like(out, dtype=bool)
    for cls, seg, iscrowd in spec.anns:
        if isinstance(seg, list):  # polygons
            rles = mask_utils.frPyObjects(seg, spec.height, spec.width)
            rle = mask_utils.merge(rles)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, spec.height, spec.width)
        else:
            rle = seg
        m = mask_utils.decode(rle).astype(bool)
        if iscrowd:
            crowd |= m
        else:
            out[m] = cls
    out[crowd] = 255
    return out


def load_label_map(source: MaskSource) -> np.ndarray:
    """Label map as uint8 HxW (0 background, k class, 255 ignore) from any mask source."""
    if isinstance(source, CocoMask):
        return paint_coco_mask(source)
    path = Path(source)
    if path.suffix.lower() == ".mat":
        return _load_mat_labels(path)
    return _load_png_labels(path)


def check_label_map(
    labels: np.ndarray, image_shape: tuple[int, int], num_classes: int, path: str | Path
) -> None:
    """Refuse a label map whose size differs from its image or whose values are not classes."""
    if labels.shape != tuple(image_shape):
        raise BadInputError(
            path,
            f"mask size {labels.shape[1]}x{labels.shape[0]} differs from its image "
            f"{image_shape[1]}x{image_shape[0]}",
        )
    check_label_values(labels, num_classes, path)


def check_label_values(labels: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Refuse label values that are no class (0..C) and not 255 (e.g. VOC numbering with
    a shorter classes.txt)."""
    values = np.unique(labels)
    bad = values[(values > num_classes) & (values != 255)]
    if bad.size:
        raise BadInputError(
            path,
            f"mask has values {bad[:5].tolist()} outside the classes 0..{num_classes} and 255",
        )


def classes_in(labels: np.ndarray) -> tuple[int, ...]:
    """Object classes (1..C) that own at least one pixel."""
    v = np.unique(labels)
    return tuple(int(c) for c in v if c != 0 and c != 255)


def encode_label_png(labels: np.ndarray) -> bytes:
    """Lossless single-channel PNG: what shards store for label maps."""
    ok, buf = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding of a label map failed")
    return buf.tobytes()


def decode_label_png(data: bytes | np.ndarray) -> np.ndarray:
    """Inverse of `encode_label_png`."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if out is None or out.ndim != 2:
        raise ValueError("stored label map is not a single-channel PNG")
    return out


def safe_join(root: str | Path, relative: str, list_file: str | Path) -> Path:
    """``root/relative``, refusing ids that would reach outside ``root`` ("../x", "/etc")."""
    if not relative or os.path.isabs(relative) or "\\" in relative:
        raise UserError(f"{list_file}: id {relative!r} is not a plain relative name")
    root_r = Path(root).resolve()
    # Lexical, not resolve(): a dataset assembled from symlinked files is legitimate;
    # only the id itself must not climb out ("a/../../x").
    joined = Path(os.path.normpath(root_r / relative))
    if joined != root_r and root_r not in joined.parents:
        raise UserError(f"{list_file}: id {relative!r} reaches outside the dataset root {root}")
    return root_r / relative


def read_id_list(path: str | Path) -> list[str]:
    """Image ids from a split or list file: one per line; blank lines and '#' comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: split/list file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read ({e})") from None
    ids = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids
