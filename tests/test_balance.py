"""The "auto" loss weights of rare positives (classifier classes, segmenter foreground)."""

from __future__ import annotations

import math

import pytest

from ddn.train.balance import balance_weight, parse_weight
from pipeline.errors import UserError


def test_balance_weight_is_the_square_root_of_the_odds_against_clipped():
    assert balance_weight(0.2) == pytest.approx(2.0)  # sqrt(0.8 / 0.2)
    assert balance_weight(1 / 15) == pytest.approx(math.sqrt(14))
    assert balance_weight(0.5) == 1.0 and balance_weight(0.9) == 1.0  # common: left plain
    assert balance_weight(1e-4) == 10.0  # clipped
    assert balance_weight(0.0) == 1.0  # never seen: nothing to weight


def test_parse_weight():
    assert parse_weight("auto", "--x") is None and parse_weight(" AUTO ", "--x") is None
    assert parse_weight("1", "--x") == 1.0 and parse_weight(2.5, "--x") == 2.5
    for bad in ("heavy", "0", "-2", "inf", "nan"):
        with pytest.raises(UserError, match="--x"):
            parse_weight(bad, "--x")
