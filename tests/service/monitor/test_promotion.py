"""The paired live comparison and the promotion rule, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.monitor.live_metrics import log_loss
from service.monitor.promotion import PairedDiff, decide, paired_difference, row_log_loss


def test_row_log_loss_matches_the_live_score() -> None:
    y = [1.0, 0.0, 1.0, 0.0]
    p = [0.9, 0.2, 0.0, 1.0]  # the last two are clipped as the live score clips them
    assert float(row_log_loss(y, p).mean()) == pytest.approx(log_loss(y, p))


def test_paired_difference_by_hand() -> None:
    y = [1.0, 0.0]
    d = paired_difference(y, [0.5, 0.5], [0.8, 0.4])
    assert d is not None
    want = ((-math.log(0.8)) - math.log(2) + (-math.log(0.6)) - math.log(2)) / 2
    assert d.diff == pytest.approx(want)
    assert d.champion == pytest.approx(math.log(2))
    assert d.low <= d.diff <= d.high
    assert paired_difference([], [], []) is None
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.5], [])


def test_identical_models_differ_by_exactly_zero_and_the_interval_covers_the_truth() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.5).astype(float).tolist()
    p = rng.uniform(0.2, 0.8, 500).tolist()
    same = paired_difference(y, p, p)
    assert same is not None and same.diff == same.low == same.high == 0.0
    # a challenger that is truly better (it sees the label a little): interval below zero
    better = [0.5 + 0.3 * (yi - 0.5) for yi in y]
    d = paired_difference(y, [0.5] * 500, better, seed=1)
    assert d is not None and d.high < 0 and d.diff == pytest.approx(d.challenger - d.champion)


def test_the_rule() -> None:
    worse = PairedDiff(300, 0.05, 0.01, 0.09, 0.62, 0.67)
    tie = PairedDiff(300, 0.0, -0.01, 0.01, 0.62, 0.62)
    few = decide(10, tie, min_scored=288, margin=0.0)
    assert not few.promote and "APPRENTICE_PROMOTE_MIN_SCORED=288" in few.reason
    refused = decide(300, worse, min_scored=288, margin=0.01)
    assert not refused.promote and "worse" in refused.reason and "+0.0500" in refused.reason
    assert decide(300, worse, min_scored=288, margin=0.06).promote
    assert decide(300, tie, min_scored=288, margin=0.0).promote
    assert decide(0, None, min_scored=288, margin=0.0, force=True).promote
