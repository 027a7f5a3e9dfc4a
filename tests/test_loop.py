"""`ddn.train.loop.train_steps` and `run_config` on a toy model (the trainers' tests run
them end to end; these pin the step arithmetic and the config layout on their own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from ddn import __version__
from ddn.train import checkpoint, loop, start
from ddn.train.distributed import DistInfo
from ddn.train.run_files import MetricsLog, checkpoints, load_checkpoint


def _toy(run: Path, iters: int, every: int = 0):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    progress = loop.Progress(iters, 0, None, DistInfo(), 1, "toy")
    state = checkpoint.checkpoint_state(model, optimizer, scheduler, {"toy": 1}, 4, 8)
    ckpt = checkpoint.Checkpointer(run, every, DistInfo(), None, state)
    return model, optimizer, scheduler, progress, ckpt


def _batches(n: int, size: int):
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(size, 3, generator=g), "y": torch.randn(size, 1, generator=g)}
            for _ in range(n)]  # fmt: skip


def _run(tmp_path: Path, accum: int, batches: list, iters: int = 1, **kw) -> nn.Module:
    toy = _toy(tmp_path, iters, kw.pop("every", 0))
    kw.pop("keep", []).append(toy[0])
    model, optimizer, scheduler, progress, ckpt = toy

    def micro_loss(batch):
        return nn.functional.mse_loss(model(batch["x"]), batch["y"])

    step = loop.train_steps(
        model, micro_loss, iter(batches), optimizer, scheduler, progress, ckpt,
        step=0, iters=iters, accum=accum, global_batch=4, epoch_size=8, **kw,
    )  # fmt: skip
    assert step == iters
    return model


def test_accumulated_step_is_the_step_on_the_whole_batch(tmp_path):
    halves = _batches(2, 2)
    whole = [{k: torch.cat([b[k] for b in halves]) for k in ("x", "y")}]
    a = _run(tmp_path / "a", accum=2, batches=halves)
    b = _run(tmp_path / "b", accum=1, batches=whole)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_hooks_order_and_checkpoints(tmp_path):
    seen: list[tuple[str, int, list[int]]] = []
    saved = lambda: [s for s, _ in checkpoints(tmp_path)]  # noqa: E731
    _run(
        tmp_path, accum=1, batches=_batches(4, 2), iters=4, every=2,
        after_step=lambda s: seen.append(("after", s, saved())),
        on_step=lambda s: seen.append(("on", s, saved())),
    )  # fmt: skip
    # after_step runs before the step's checkpoint, on_step after it.
    assert seen[2:4] == [("after", 2, []), ("on", 2, [2])]
    assert load_checkpoint(checkpoints(tmp_path)[-1][1])["epoch"] == 2  # 4 steps x 4 / 8


def test_interrupt_checkpoints_the_last_finished_step(tmp_path):
    def stop(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, accum=1, batches=_batches(5, 2), iters=5, on_step=stop)
    assert [s for s, _ in checkpoints(tmp_path)] == [3]


def test_non_finite_loss_stops_before_the_update(tmp_path):
    batches = _batches(2, 2)
    one_step = _run(tmp_path / "a", accum=1, batches=batches[:1])
    batches[1]["y"][0, 0] = float("nan")
    kept: list[nn.Module] = []
    with pytest.raises(loop.NonFiniteLoss, match="loss is nan at step 2"):
        _run(tmp_path / "b", accum=1, batches=batches, iters=2, keep=kept)
    assert torch.equal(kept[0].weight, one_step.weight)  # step 2 never applied


@dataclass
class _Cfg:
    data: str
    out: str
    iters: int | None = None
    seed: int = 0


def test_run_config_keeps_field_order_and_appends_the_rest(tmp_path):
    config = start.run_config(_Cfg("rel", "o"), "train-x", iters=7, extra=[1])
    assert list(config) == ["data", "out", "iters", "seed", "trainer", "extra", "ddn_version"]
    assert config["data"] == str(Path("rel").resolve()) and config["iters"] == 7
    assert config["ddn_version"] == __version__


# ---------------------------------------------------------------- progress and plan lines


def _progress_lines(capsys, total: int, log_every: int, metrics=None) -> list[str]:
    """The steps of the plain lines a run of ``total`` steps prints (stderr no terminal)."""
    progress = loop.Progress(total, 0, metrics, DistInfo(), log_every, "toy")
    for step in range(1, total + 1):
        progress.step(step, step / total, 1.0, 0.1, 4)
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    return [line.split()[2] for line in err.splitlines() if line.startswith("toy step")]


def test_plain_lines_after_the_first_step_every_n_and_at_the_end(capsys):
    assert _progress_lines(capsys, 25, 10) == ["1/25", "10/25", "20/25", "25/25"]


def test_plain_line_when_a_minute_has_passed_and_metrics_keep_their_rows(
    capsys, monkeypatch, tmp_path
):
    monkeypatch.setattr(loop, "PLAIN_LINE_S", 0.0)  # every step is a minute later
    metrics = MetricsLog(tmp_path / "metrics.csv", ["step", "loss"], None)
    assert _progress_lines(capsys, 25, 10, metrics) == [f"{s}/25" for s in range(1, 26)]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [10, 20, 25]  # as without the time rule


def test_plan_line_on_rank_0_only(capsys):
    plan = dict(iters=10, batch=8, accum=4, unit="crops", examples=99, schedule="constant lr")
    loop.print_plan(DistInfo(rank=1, world_size=2), "toy", **plan)
    assert capsys.readouterr().err == ""
    loop.print_plan(DistInfo(rank=0, world_size=2), "toy", **plan, start=3)
    assert capsys.readouterr().err == (
        "toy: 10 steps of 64 crops (batch 8 x accum 4 x 2 processes), constant lr; "
        "99 training crops; resuming after step 3\n"
    )
