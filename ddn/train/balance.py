"""Loss weights for rare positives: the foreground of the segmenter's crops, the classes of
the classifier's images.

Both stages learn a yes/no question whose "yes" is rare: foreground pixels are ~11-30% of
a crop's labelled pixels on photographs, and a class is in ~1/C of the images. Trained
briefly with a plain cross-entropy, a network stays near that prior: on a 15-class photo
set after 100 classifier steps, positives had a mean probability of 0.34 on val and 71%
of the true labels stayed under the 0.5 that picks a label (precision 1.0, recall 0.29).
Weighting positives by w moves the decision point from p = 0.5 to p = 1 / (1 + w).

"auto" uses w = sqrt((1 - f) / f) for a positive share f, clipped to [1, 10]: the
geometric mean between the plain loss (w = 1, decision at 0.5) and full balancing (w =
(1 - f) / f, decision at the prior f, which calls every pixel or image whose odds beat
the prior positive and floods the output with false positives). At f = 0.07 (one class
of 15) w = 3.6, at f = 0.25 w = 1.7, and a positive share of 1/2 or more is left plain.
A number is used as given; 1 is the reference's plain loss.
"""

from __future__ import annotations

import math

from pipeline.errors import UserError

AUTO = "auto"
MAX_AUTO_WEIGHT = 10.0


def parse_weight(setting: str | float, option: str) -> float | None:
    """None for "auto", else the positive number ``setting`` names (``option`` in errors)."""
    if str(setting).strip().lower() == AUTO:
        return None
    try:
        value = float(setting)
    except ValueError:
        raise UserError(f"{option}: expected 'auto' or a number, got {setting!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{option}: must be a positive number, got {setting!r}")
    return value


def balance_weight(share: float) -> float:
    """The "auto" weight of positives that make up ``share`` (0..1) of the examples."""
    if not share > 0:
        return 1.0  # no positive seen: nothing to weight
    return float(min(MAX_AUTO_WEIGHT, max(1.0, math.sqrt((1 - share) / share))))
