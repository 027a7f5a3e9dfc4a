"""The synthetic VOC-layout dataset: layout, palette masks, determinism, and no colour leak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.errors import UserError
from pipeline.imageio import classes_in, decode_image, read_bytes, read_id_list
from pipeline.synth import (
    SHAPES,
    TEXTURES,
    VOC_CLASSES,
    class_design,
    generate,
    render,
    voc_colormap,
)

N_IMAGES, SIZE, CLASSES = 40, 64, 20


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), N_IMAGES, CLASSES, SIZE, 1, 0.2)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout(voc: Path, tmp_path: Path):
    assert voc.parts[-2:] == ("VOCdevkit", "VOC2012")
    sets = voc / "ImageSets" / "Segmentation"
    train, val = read_id_list(sets / "train.txt"), read_id_list(sets / "val.txt")
    ids = [f"synth_{i:06d}" for i in range(N_IMAGES)]
    assert sorted(train + val) == ids and not set(train) & set(val)
    assert len(val) == round(0.2 * N_IMAGES) and train == sorted(train)
    for i in ids:
        img = decode_image(read_bytes(voc / "JPEGImages" / f"{i}.jpg"))
        assert img.shape == (SIZE, SIZE, 3)
        assert (voc / "SegmentationClass" / f"{i}.png").is_file()
    names = (voc / "classes.txt").read_text().splitlines()
    assert names == ["background", *VOC_CLASSES]
    small = generate(tmp_path, 3, 5, SIZE, 0, 0.2)
    assert (small / "classes.txt").read_text().splitlines()[1:] == [
        "aeroplane", "bicycle", "bird", "boat", "bottle"
    ]  # fmt: skip


def test_voc_palette_formula():
    cmap = voc_colormap()
    assert cmap[0].tolist() == [0, 0, 0] and cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert cmap[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in cmap}) == 256


def test_masks_are_palette_pngs_with_ignore_band(voc: Path):
    for p in sorted((voc / "SegmentationClass").glob("*.png")):
        with Image.open(p) as im:
            assert im.mode == "P"
            assert np.array_equal(np.array(im.getpalette()).reshape(-1, 3), voc_colormap())
            labels = np.array(im)
        values = set(np.unique(labels).tolist())
        assert values <= set(range(CLASSES + 1)) | {255}
        assert 255 in values and 0 in values and classes_in(labels)
        # The band separates regions: no two different real labels ever touch.
        for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), p.name


def test_same_seed_same_bytes_and_overwrite(tmp_path: Path):
    a = generate(tmp_path / "a", 6, 4, 48, 7, 0.3)
    b = generate(tmp_path / "b", 6, 4, 48, 7, 0.3)
    assert _files(a) == _files(b) and len(_files(a)) == 6 * 2 + 3
    c = generate(tmp_path / "c", 6, 4, 48, 8, 0.3)
    diff = [k for k, v in _files(a).items() if _files(c).get(k) != v]
    assert sum(k.endswith(".jpg") for k in diff) == 6
    # Overwriting a bigger dataset made with another seed gives the fresh result exactly.
    d = generate(tmp_path / "d", 9, 4, 48, 3, 0.5)
    assert generate(tmp_path / "d", 6, 4, 48, 7, 0.3) == d
    assert _files(d) == _files(a)


def test_objects_per_image_and_every_object_labelled():
    counts = []
    for i in range(80):
        ex = render(5, i, classes=CLASSES, size=SIZE)
        assert ex.image.shape == (SIZE, SIZE, 3) and ex.image.dtype == np.uint8
        assert 1 <= len(ex.objects) <= 4
        # Occlusion never hides an object completely (and nothing else is labelled) ...
        assert set(classes_in(ex.labels)) == set(ex.objects)
        # ... and each keeps a reasonable number of trainable (non-ignore) pixels.
        for c in set(ex.objects):
            assert (ex.labels == c).sum() >= 0.015 * SIZE * SIZE
        counts.append(len(ex.objects))
    assert set(counts) == {1, 2, 3, 4}
    assert np.array_equal(render(5, 3, CLASSES, SIZE).image, render(5, 3, CLASSES, SIZE).image)


def test_each_class_is_a_distinct_shape_texture_pair():
    pairs = [class_design(k) for k in range(1, 21)]
    assert len(set(pairs)) == 20
    # Neither cue alone names a class: every shape wears every texture.
    for s in SHAPES:
        assert {t for s2, t in pairs if s2 == s} == set(TEXTURES)


def _nearest_mean_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    half = len(x) // 2
    means = np.stack([x[:half][y[:half] == c].mean(0) for c in np.unique(y)])
    pred = np.unique(y)[np.argmin(((x[half:, None] - means[None]) ** 2).sum(-1), 1)]
    return float((pred == y[half:]).mean())


def test_colour_does_not_tell_the_class():
    classes = 4
    feats, ys = [], []
    for i in range(120):
        ex = render(11, i, classes=classes, size=48)
        for c in set(ex.objects):
            feats.append(ex.image[ex.labels == c].mean(0))
            ys.append(c)
    x, y = np.array(feats), np.array(ys)
    assert len(y) > 150 and set(y) == set(range(1, classes + 1))
    class_means = np.stack([x[y == c].mean(0) for c in range(1, classes + 1)])
    within = np.mean([x[y == c].std(0).mean() for c in range(1, classes + 1)])
    assert class_means.std(0).mean() < 0.25 * within
    assert _nearest_mean_accuracy(x, y) < 0.45  # chance is 0.25
    # The probe itself works: a colour that did depend on the class would be caught.
    assert _nearest_mean_accuracy(x + 60.0 * y[:, None], y) > 0.8


def test_bad_arguments_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="--classes"):
        generate(tmp_path, 2, 21, 64, 0, 0.2)
    with pytest.raises(UserError, match="--val-fraction"):
        generate(tmp_path, 2, 3, 64, 0, 1.0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create"):
        generate(blocker / "out", 2, 3, 64, 0, 0.2)


def _invoke(args: list[str]):
    """Through the `ddn` group where it imports (other commands may not exist yet)."""
    try:
        from cli.main import cli
    except ImportError:
        from cli.synth import command

        return CliRunner().invoke(command, args), False
    return CliRunner().invoke(cli, ["synth", *args]), True


def test_cli(tmp_path: Path):
    out = tmp_path / "data"
    args = ["--images", "5", "--size", "40", "--classes", "3", "--seed", "2"]
    result, _ = _invoke([str(out), *args, "--val-fraction", "0.4"])
    assert result.exit_code == 0, result.output
    root = out / "VOCdevkit" / "VOC2012"
    assert "5 images (3 train, 2 val)" in result.output
    assert len(read_id_list(root / "ImageSets" / "Segmentation" / "val.txt")) == 2
    assert _files(root) == _files(generate(tmp_path / "api", 5, 3, 40, 2, 0.4))

    help_text, _ = _invoke(["--help"])
    for default in ("default: 1000", "default: 0.2", "default: 20", "default: 160"):
        assert default in help_text.output

    blocker = tmp_path / "file"
    blocker.write_text("x")
    result, via_group = _invoke([str(blocker / "out"), *args])
    if via_group:
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "file" in lines[0]
    else:
        assert isinstance(result.exception, UserError)
