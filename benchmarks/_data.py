"""Benchmark inputs: real photographs when ../shared has them, else synthetic ones."""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets import load_dataset
from pipeline.records import DatasetSplits

VOC_HORSES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc_horses"


def benchmark_dataset(workdir: Path, images: int) -> DatasetSplits:
    """``images`` training images, all strong-eligible, no val (prepare cost is in S)."""
    if VOC_HORSES.is_dir():
        ds = load_dataset("voc", root=VOC_HORSES)  # real 500 px photographs
    else:
        from pipeline.synth import generate

        generate(workdir / "synth", images=images * 2, classes=5, size=320, seed=0)
        ds = load_dataset("voc", root=workdir / "synth")
    ds.train = ds.train[:images]
    ds.val = []
    return ds
