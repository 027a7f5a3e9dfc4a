"""benchmarks/table1.py end to end at toy size: the table, the JSON and what they claim."""

from __future__ import annotations

import json

import pytest

from benchmarks import table1


@pytest.mark.slow
def test_toy_table_has_every_cell_and_names_collapsed_models(tmp_path):
    out = tmp_path / "t1"
    table1.main(["--out", str(out), "--per-class", "2", "--full", "--classes", "3",
                 "--images", "60", "--size", "64", "--input-size", "64", "--steps", "2",
                 "--batch", "4", "--proposals", "3", "--device", "cpu", "--workers", "0",
                 "--jobs", "1"])  # fmt: skip
    summary = json.loads((out / "table1.json").read_text())
    miou = summary["miou"]
    assert set(miou) == set(table1.METHODS)
    assert all(set(cells) == {"2", "full"} for cells in miou.values())
    assert all(0.0 <= v <= 1.0 for cells in miou.values() for v in cells.values())
    # At full the -Str classifier is the weak one: one segmenter run serves both rows.
    assert miou["DecoupledNet-Str"]["full"] == miou["DecoupledNet"]["full"]
    assert (out / "seg-full").is_dir() and not (out / "seg-str-full").exists()
    assert summary["claim_holds"] == (
        summary["margins"]["2"]["decoupled_minus_str"] > 0
        and summary["margins"]["2"]["decoupled_minus_deconvnet"] > 0
    )
    # Two steps from scratch: collapsed models are expected, and each must be flagged.
    table = (out / "table1.md").read_text()
    for method, cells in summary["no_object_pixels"].items():
        assert f"WARNING: {method} labelled no pixel as an object at {', '.join(cells)}" in table
    assert table.count("WARNING") == len(summary["no_object_pixels"])
    assert table.startswith("| Method | 2 / class | full |")


def test_summary_flags_exactly_the_cells_without_object_pixels():
    """Cells whose eval found no object pixel (miou_objects 0) are listed and warned about;
    the others are not, whatever their mIoU."""
    args = table1.parse_args(["--per-class", "5", "--full", "--device", "cpu"])

    def cell(miou: float, objects: float) -> dict:
        return {"miou": miou, "miou_objects": objects, "cls_map": 0.5}

    results = {
        "DecoupledNet": {"5": cell(0.20, 0.08), "full": cell(0.21, 0.09)},
        "DecoupledNet-Str": {"5": cell(0.15, 0.03), "full": cell(0.21, 0.09)},
        "DeconvNet": {"5": cell(0.14, 0.01), "full": cell(0.13, 0.0)},
    }
    summary = table1.summarize(args, results, {}, 1.0)
    assert summary["no_object_pixels"] == {"DeconvNet": ["full"]}
    table = table1.markdown(summary)
    assert "WARNING: DeconvNet labelled no pixel as an object at full:" in table
    assert table.count("WARNING") == 1


def test_subset_of_methods_leaves_out_what_needs_a_missing_row():
    """--methods reruns some rows: margins needing a missing row are absent, and the claim
    (DecoupledNet above both baselines) is null rather than judged on two rows."""
    args = table1.parse_args(["--per-class", "5", "--methods", "DecoupledNet-Str,DecoupledNet",
                              "--device", "cpu"])  # fmt: skip
    assert args.methods == ["DecoupledNet", "DecoupledNet-Str"]  # table order, not given order
    cell = {"miou": 0.2, "miou_objects": 0.05, "cls_map": 0.5}
    summary = table1.summarize(
        args, {"DecoupledNet": {"5": cell}, "DecoupledNet-Str": {"5": {**cell, "miou": 0.15}}},
        {}, 1.0,
    )  # fmt: skip
    assert summary["margins"] == {"5": {"decoupled_minus_str": 0.05}}
    assert summary["claim_holds"] is None and summary["str_above_deconvnet"] is None
    table = table1.markdown(summary)
    assert "| DecoupledNet | 20.0 |" in table and "| DeconvNet |" not in table
    assert "at every small count" not in table


def test_unknown_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        table1.parse_args(["--methods", "DecoupledNet,FCN"])
    assert e.value.code == 2
    assert "--methods: expected some of DecoupledNet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("weights", "optimizer"), [("none", "adamw"), ("imagenet", "sgd"), ("/w/vgg16.pth", "sgd")]
)
def test_pretrained_classifiers_train_with_sgd(weights, optimizer):
    # A weights path is pretrained too: AdamW sent such a VGG-16 to a constant output.
    assert table1.classifier_optimizer(weights)["optimizer"] == optimizer


def test_gpu_defaults_are_full_size_and_the_reference_schedule_is_opt_in():
    gpu = table1.parse_args(["--device", "cuda"])
    assert (gpu.arch, gpu.width, gpu.input_size, gpu.weights) == ("vgg16", 1.0, 320, "imagenet")
    assert (gpu.cls_iters, gpu.seg_iters, gpu.batch) == (500, 300, 64)  # RESULTS.md's run
    ref = table1.parse_args(["--device", "cuda", "--reference-schedule"])
    assert (ref.cls_iters, ref.seg_iters) == (4000, None)  # None: the iteration table
    assert table1.parse_args(["--device", "cuda", "--reference-schedule", "--seg-iters", "9"]
                             ).seg_iters == 9  # fmt: skip
