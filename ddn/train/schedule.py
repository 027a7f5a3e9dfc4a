"""Learning-rate schedules and the reference's segmenter iteration table.

`LRSchedule` is a picklable multiplier for `torch.optim.lr_scheduler.LambdaLR` (a
lambda would not survive `state_dict()`), applied to each parameter group's own base
learning rate, so the classifier head's 10x stays 10x throughout.

Segmenter iterations (DESIGN.md section 2; effective batch 64, step decay x0.1):

=========  ==========  ==================================================
strong     iterations  decay step
=========  ==========  ==================================================
5/class      5,500      4,000 (released code)
10/class     7,500      5,500 (not released: 73 % of the run, as for 5)
25/class    15,000      9,000 (not released: 60 %, between 5's 73 % and
                        full's 57 %)
full        17,500     10,000 (released code)
=========  ==========  ==================================================

Other per-class counts interpolate linearly between the table's rows (below 5: the
5 row; above 25: the full row). ``--iters N`` replaces the count and moves the decay
step to the same fraction of N.
"""

from __future__ import annotations

import math

# strong images per class (None = every mask) -> (iterations, decay step)
REFERENCE_ITERS: dict[int | None, tuple[int, int]] = {
    5: (5_500, 4_000),
    10: (7_500, 5_500),
    25: (15_000, 9_000),
    None: (17_500, 10_000),
}


def reference_iters(strong_per_class: int | None) -> tuple[int, int]:
    """(iterations, decay step) for a strong split of ``strong_per_class`` images/class."""
    if strong_per_class is None or strong_per_class > 25:
        return REFERENCE_ITERS[None]
    points = sorted(k for k in REFERENCE_ITERS if k is not None)
    if strong_per_class <= points[0]:
        return REFERENCE_ITERS[points[0]]
    for lo, hi in zip(points, points[1:], strict=False):
        if strong_per_class <= hi:
            t = (strong_per_class - lo) / (hi - lo)
            (i0, s0), (i1, s1) = REFERENCE_ITERS[lo], REFERENCE_ITERS[hi]
            return round(i0 + t * (i1 - i0)), round(s0 + t * (s1 - s0))
    raise AssertionError("unreachable")


def segmenter_schedule(strong_per_class: int | None, iters: int | None = None) -> tuple[int, int]:
    """(iterations, decay step): the table's, or ``iters`` with the step at the same share."""
    ref_iters, ref_step = reference_iters(strong_per_class)
    if iters is None:
        return ref_iters, ref_step
    return iters, max(1, round(iters * ref_step / ref_iters))


DECAYS = ("cosine", "step", "constant", "wsd")
# --decay wsd: the share of the steps after warm-up spent decaying. 0.2 is the usual
# choice of warmup-stable-decay schedules (Hu et al. 2024, "MiniCPM"; Hägele et al. 2024
# find 10-20% matches cosine); not tuned here.
WSD_TAIL = 0.2


class LRSchedule:
    """Linear warm-up over ``warmup`` steps, then constant, cosine, step or wsd decay.

    - ``"constant"``: 1 after warm-up.
    - ``"cosine"``: from 1 at the end of warm-up to ``final`` at ``total``.
    - ``"step"``: multiplied by ``gamma`` at each of ``milestones`` (optimizer steps).
    - ``"wsd"`` (warmup-stable-decay): 1, then linear to ``final`` over the last
      `WSD_TAIL` of the steps after warm-up. A run that is still learning fast when it
      must stop keeps the full rate for 80% of it and still ends annealed.

    Called with the number of optimizer steps taken so far (LambdaLR's counter).
    """

    def __init__(
        self,
        total: int,
        warmup: int = 0,
        decay: str = "cosine",
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        final: float = 0.0,
    ) -> None:
        if decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}")
        self.total, self.warmup, self.decay = int(total), int(warmup), decay
        self.milestones, self.gamma, self.final = [int(m) for m in milestones], gamma, final

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            # (step + 1) / warmup: the first step already moves, the last reaches 1.
            return (step + 1) / self.warmup
        if self.decay == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.decay == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(1.0, (step - self.warmup) / span)
            return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t))
        if self.decay == "wsd":
            tail = max(1, round(WSD_TAIL * (self.total - self.warmup)))
            left = self.total - step  # steps still to take, this one included
            return 1.0 if left >= tail else self.final + (1 - self.final) * left / tail
        return 1.0
