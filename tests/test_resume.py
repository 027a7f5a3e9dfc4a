"""Resume, Ctrl-C and non-finite loss: N steps straight == N/2, stop, resume, N/2 more."""

from __future__ import annotations

import signal

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from ddn.models import Classifier
from ddn.train import strong as strong_module
from ddn.train.cls import train_cls
from ddn.train.interrupt import deferred_interrupt
from ddn.train.run_files import checkpoints, load_checkpoint, load_model
from ddn.train.seg import train_seg
from pipeline.errors import UserError
from tests.trainutil import cls_config, cls_run_for, make_prepared, seg_config, state_equal

STEPS = 6


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    # 45 weak images: a batch of 8 crosses an epoch boundary inside the 6 steps.
    return make_prepared(tmp_path_factory.mktemp("resume"), images=60)


@pytest.fixture(scope="module")
def cls_run(prep, tmp_path_factory):
    return cls_run_for(prep, tmp_path_factory)


def stop_at(k: int):
    def hook(step: int) -> None:
        if step == k:
            raise KeyboardInterrupt

    return hook


def assert_same_run(a, b) -> None:
    """Final weights, BN buffers and optimizer state identical, bit for bit."""
    assert state_equal(load_model(a)["model"], load_model(b)["model"]) == []
    (_, ca), (_, cb) = checkpoints(a)[-1], checkpoints(b)[-1]
    oa, ob = load_checkpoint(ca)["optimizer"], load_checkpoint(cb)["optimizer"]
    for key in oa["state"]:
        assert torch.equal(oa["state"][key]["momentum_buffer"], ob["state"][key]["momentum_buffer"])
    assert oa["param_groups"] == ob["param_groups"]


def test_classifier_resume_is_bit_identical(prep, tmp_path):
    straight = tmp_path / "straight"
    train_cls(cls_config(prep, straight, iters=STEPS))
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        train_cls(cls_config(prep, split, iters=STEPS), on_step=stop_at(STEPS // 2))
    assert [s for s, _ in checkpoints(split)] == [STEPS // 2]  # Ctrl-C wrote step k
    assert not (split / "model.pt").exists()
    train_cls(cls_config(prep, split, iters=STEPS, resume=True))
    assert_same_run(straight, split)
    rows = (split / "metrics.csv").read_text().splitlines()
    train_steps = [int(r.split(",")[0]) for r in rows[1:] if r.split(",")[2]]
    assert train_steps == list(range(1, STEPS + 1))  # no row lost or doubled by the resume


def test_ctrl_c_inside_a_forward_pass_still_resumes_bit_identical(prep, tmp_path, monkeypatch):
    """Ctrl-C after batch norm has seen a batch of an unfinished step: the checkpoint must
    hold the statistics of the last finished step, or the resumed run counts that batch
    twice (num_batches_tracked one ahead, running stats off)."""
    straight = tmp_path / "straight"
    train_cls(cls_config(prep, straight, iters=STEPS))
    real, calls = Classifier.forward, []

    def forward_then_ctrl_c(self, x):
        out = real(self, x)  # BN running stats have moved
        calls.append(1)
        if self.training and len(calls) == STEPS // 2 + 1:  # inside step k + 1
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Classifier, "forward", forward_then_ctrl_c)
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        train_cls(cls_config(prep, split, iters=STEPS))
    assert [s for s, _ in checkpoints(split)] == [STEPS // 2]
    monkeypatch.setattr(Classifier, "forward", real)
    train_cls(cls_config(prep, split, iters=STEPS, resume=True))
    assert_same_run(straight, split)


def test_ctrl_c_waits_for_the_optimizer_step_to_finish():
    # Python's own handler, as in a terminal: a suite started in the background
    # (`nohup ... &`) inherits SIGINT ignored, and the test must not depend on that.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            finished = True  # reached: the interrupt is held until the block ends
        assert finished
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_segmenter_resume_is_bit_identical(prep, cls_run, tmp_path):
    straight = tmp_path / "straight"
    train_seg(seg_config(prep, cls_run, straight, iters=STEPS))
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        train_seg(seg_config(prep, cls_run, split, iters=STEPS), on_step=stop_at(STEPS // 2))
    assert [s for s, _ in checkpoints(split)] == [STEPS // 2]
    train_seg(seg_config(prep, cls_run, split, iters=STEPS, resume=True))
    assert_same_run(straight, split)


def test_resume_with_other_settings_or_reuse_without_resume_refused(prep, cls_run, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_seg(seg_config(prep, cls_run, out, iters=4), on_step=stop_at(1))
    with pytest.raises(UserError, match="pass --resume"):
        train_seg(seg_config(prep, cls_run, out, iters=4))
    with pytest.raises(UserError, match=r"different settings: lr \(0.01 -> 0.02\)"):
        train_seg(seg_config(prep, cls_run, out, iters=4, lr=0.02, resume=True))
    # Runtime settings (workers, crop path, logging, waiting for the lock) may change.
    train_seg(seg_config(prep, cls_run, out, iters=4, resume=True, log_every=2, wait=True))
    assert (out / "model.pt").is_file()


def test_non_finite_loss_stops_with_one_line_and_keeps_last_checkpoint(
    prep, cls_run, tmp_path, monkeypatch
):
    real = strong_module.segmentation_loss
    calls = []

    def poisoned(logits, target, *weight):
        calls.append(1)
        loss = real(logits, target, *weight)
        return loss * float("nan") if len(calls) > 4 else loss  # step 3 (accum 2) is NaN

    monkeypatch.setattr(strong_module, "segmentation_loss", poisoned)
    out = tmp_path / "run"
    args = ["train-seg", "--data", str(prep), "--cls", str(cls_run), "--out", str(out),
            "--iters", "6", "--batch", "4", "--accum", "2", "--device", "cpu", "--workers", "0",
            "--ckpt-every", "2", "--bn-batches", "1", "--crop-path", "cpu"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    message = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "loss is nan at step 3" in message[0]
    assert "checkpoint-2.pt" in message[0]
    assert [s for s, _ in checkpoints(out)] == [2] and not (out / "model.pt").exists()
    monkeypatch.setattr(strong_module, "segmentation_loss", real)
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(checkpoints(out)[-1][1])["step"] == 6
