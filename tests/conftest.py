"""Shared fixtures: a small synthetic VOC-layout dataset, made once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_HORSES = SHARED / "data" / "voc_horses"
VGG_WEIGHTS = SHARED / "weights" / "vgg16_imagenet_features.pth"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """40 images, 3 classes, 96 px; read-only for tests (copy it to modify)."""
    from pipeline.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, images=40, classes=3, size=96, seed=1, val_fraction=0.25)
    return out


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst)
    return dst


def voc2012(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"
