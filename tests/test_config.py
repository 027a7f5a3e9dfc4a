"""The trainers' settings (ddn/train/config.py) share one base for how a run runs; a run
saved before that base, whose config.json lists the fields in the older order, still
resumes (settings are compared by name, not position)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ddn.train.checkpoint import KEYS, check_fits
from ddn.train.config import ClsConfig, DeconvConfig, SegConfig, TrainerConfig
from ddn.train.run_files import CONFIG, open_run, write_json
from ddn.train.start import run_config
from pipeline.errors import UserError

# Each config's fields in the order config.json listed them before the shared base (ddn
# 0.1.0 as of issue 12): copied from the old ddn/train/config.py, not computed.
OLD_ORDER = {
    ClsConfig: "data out arch width input_size batch iters epochs lr head_lr_mult momentum "
    "weight_decay optimizer warmup decay pos_weight pad_square weights device workers seed "
    "resume compile amp channels_last log_every tensorboard ckpt_every val_every wait",
    SegConfig: "data cls out input_size width batch accum iters decay_step optimizer lr "
    "momentum weight_decay fg_weight bn_batches weights device workers seed resume compile "
    "amp channels_last crop_path log_every tensorboard ckpt_every wait",
    DeconvConfig: "data out arch width input_size batch accum iters decay_step optimizer lr "
    "momentum weight_decay fg_weight bn_batches weights device workers seed resume compile "
    "amp channels_last crop_path log_every tensorboard ckpt_every wait",
}
# Fields added since that snapshot: runtime settings (ddn.train.run_files.RUNTIME_KEYS), so
# a run saved without them resumes.
ADDED = {SegConfig: ["device_crops_budget"], DeconvConfig: ["device_crops_budget"]}
# How a run runs, once in TrainerConfig rather than in each trainer's config.
RUNTIME = ("device", "workers", "seed", "resume", "compile", "amp", "channels_last",
           "log_every", "tensorboard", "ckpt_every", "wait")  # fmt: skip


def _names(config: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config)]


def _make(config: type, **kw: Any) -> Any:
    required = {"data": "prep", "out": "run", "cls": "cls"}
    return config(**{k: v for k, v in required.items() if k in _names(config)}, **kw)


def _in_old_order(config: type, saved: dict[str, Any]) -> dict[str, Any]:
    old = OLD_ORDER[config].split()
    return {**{k: saved[k] for k in old}, **{k: v for k, v in saved.items() if k not in old}}


@pytest.mark.parametrize("config", list(OLD_ORDER), ids=lambda c: c.__name__)
def test_the_base_moved_the_fields_but_kept_them(config: type) -> None:
    assert sorted(_names(config)) == sorted(OLD_ORDER[config].split() + ADDED.get(config, []))
    assert set(RUNTIME) <= set(_names(TrainerConfig))
    assert _names(config) != OLD_ORDER[config].split()  # or the resume test proves nothing


def test_settings_are_keywords_only() -> None:
    # A positional call would silently shift with the base's fields; it cannot be written.
    with pytest.raises(TypeError):
        ClsConfig("prep", "run")  # type: ignore[misc]


def _assert_resumes(saved: dict[str, Any], now: dict[str, Any], run: Path) -> None:
    """A run whose config.json is ``saved`` resumes under the settings ``now``."""
    run.mkdir()
    write_json(run / CONFIG, saved)
    checkpoint = run / "checkpoint-5.pt"
    checkpoint.touch()  # open_run only looks for it; check_fits below reads its state
    assert open_run(run, now, resume=True) == checkpoint
    check_fits(checkpoint, {**dict.fromkeys(KEYS), "config": saved}, now)


@pytest.mark.parametrize("config", list(OLD_ORDER), ids=lambda c: c.__name__)
def test_a_run_saved_in_the_older_order_resumes(config: type, tmp_path) -> None:
    now = run_config(_make(config), "train-x", iters=5)
    saved = _in_old_order(config, now)
    assert list(saved) != list(now) and saved == now
    run = tmp_path / "run"
    _assert_resumes(saved, now, run)
    # A setting that really changed is still refused.
    write_json(run / CONFIG, saved)
    with pytest.raises(UserError, match=r"different settings: lr \("):
        open_run(run, {**now, "lr": now["lr"] * 2}, resume=True)


@pytest.mark.parametrize("config", list(ADDED), ids=lambda c: c.__name__)
def test_a_run_saved_before_a_runtime_field_was_added_resumes(config: type, tmp_path) -> None:
    now = run_config(_make(config), "train-x", iters=5)
    saved = {k: v for k, v in now.items() if k not in ADDED[config]}
    _assert_resumes(saved, now, tmp_path / "run")
