"""cli/options.py: shared options keep their order and read the same in every command."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from cli.main import cli
from cli.options import config_fields, stack


def _info(command: str, name: str) -> dict:
    param = next(p for p in cli.commands[command].params if p.name == name)
    return param.to_info_dict()


def test_stack_keeps_the_written_order() -> None:
    @click.command()
    @stack(click.option("--b"), click.option("--a"), stack(click.option("--z")))
    @click.option("--c")
    def command(**_: object) -> None:
        pass

    assert [p.name for p in command.params] == ["b", "a", "z", "c"]


def test_eval_and_predict_share_run_and_inference_options() -> None:
    for name in ("cls_run", "seg_run", "threshold", "batch", "device"):
        assert _info("eval", name) == _info("predict", name), name
    assert _info("eval", "seg_run")["required"] and not _info("eval", "cls_run")["required"]


def test_trainers_share_training_options_but_keep_their_help() -> None:
    for name in ("device", "resume", "amp", "channels_last", "log_every", "ckpt_every"):
        assert _info("train-cls", name) == _info("train-seg", name), name
    assert _info("train-cls", "seed")["help"].endswith("the augmentation.")
    assert _info("train-seg", "seed")["help"].endswith("the crops.")
    assert _info("train-seg", "compile_")["help"] == "torch.compile the networks."
    # --crop-path stays next to --device, where train-seg's help has always listed it, and
    # its budget next to it
    names = [p.name for p in cli.commands["train-seg"].params]
    assert names.index("crop_path") == names.index("device") + 1
    assert names.index("device_crops_budget") == names.index("crop_path") + 1
    assert names.index("workers") == names.index("device_crops_budget") + 1


def test_help_lists_shared_options_in_place() -> None:
    text = CliRunner().invoke(cli, ["predict", "--help"]).output
    order = ["--cls", "--seg", "--out", "--threshold", "--batch", "--device", "--skip-bad"]
    positions = [text.index(f"  {flag} ") for flag in order]
    assert positions == sorted(positions)
    assert "[default: 0.5; 0<=x<=1]" in text


def test_config_fields_renames_compile_and_stringifies_paths() -> None:
    fields = config_fields({"compile_": True, "data": Path("d"), "cls": None, "seed": 3})
    assert fields == {"compile": True, "data": "d", "cls": None, "seed": 3}


def test_option_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    """Click's own usage errors follow the toolkit's rule: one `error:` line, exit 2."""
    cases = {
        ("train-seg", "--data", "x", "--seg", "y"): "error: ddn train-seg: No such option '--seg'",
        ("prepare", str(tmp_path / "p"), "--root", "x"): "Choose from: voc, coco, folder",
        ("evl",): "error: ddn: No such command 'evl'. Did you mean 'eval'?",
        ("prepare", str(tmp_path / "p"), "--dataset", "voc", "--root", str(tmp_path),
         "--jobs", "0"): "error: --jobs: 0 workers",
        ("prepare", str(tmp_path / "p"), "--dataset", "voc", "--root", str(tmp_path),
         "--scheduler", "tcp://h:8786"): "error: --scheduler: only with --backend dask",
        ("prepare", str(tmp_path / "p"), "--dataset", "voc", "--root", str(tmp_path),
         "--backend", "dask"): "error: --backend dask: needs --scheduler ADDRESS",
    }  # fmt: skip
    for args, expected in cases.items():
        r = CliRunner().invoke(cli, list(args), prog_name="ddn")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and expected in lines[0], (args, r.output)
        assert lines[0].startswith("error: ")
    assert not (tmp_path / "p").exists()  # nothing written on a mistake


def test_backend_dask_without_dask_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    args = ["prepare", str(tmp_path / "p"), "--dataset", "voc", "--root", str(tmp_path),
            "--backend", "dask", "--scheduler", "tcp://h:8786"]  # fmt: skip
    r = CliRunner().invoke(cli, args, prog_name="ddn")
    assert r.exit_code == 2
    assert r.output == "error: --backend dask: Dask is not installed; pip install 'ddn[dask]'\n"
    assert not (tmp_path / "p").exists()
