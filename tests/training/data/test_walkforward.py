"""Walk-forward folds: chronology, purge and embargo."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.walkforward import check_no_leakage, walk_forward_folds

STEP = 300_000  # 5 minutes


def test_folds_are_chronological_purged_and_embargoed() -> None:
    times = np.arange(5000, dtype=np.int64) * STEP
    folds = walk_forward_folds(times, STEP, n_folds=3, horizon=1, embargo=32)
    assert len(folds) == 3
    prev_test_end = -1
    for f in folds:
        check_no_leakage(f, times, STEP, horizon=1, embargo=32)
        assert f.train.max() < f.val.min() < f.val.max() < f.test.min()
        # exactly horizon + embargo bars removed before the test block (t + 33 < t0)
        assert f.test.min() - f.val.max() == 34
        assert f.val.min() - f.train.max() == 34
        assert f.test.min() > prev_test_end
        prev_test_end = f.test.max()
    assert folds[-1].test.max() == 4999
    # test blocks tile the end of history without gaps
    assert folds[1].test.min() == folds[0].test.max() + 1
    # training expands
    assert folds[0].train.size < folds[1].train.size < folds[2].train.size


def test_gaps_in_time_are_respected() -> None:
    times = np.r_[np.arange(1000), np.arange(1100, 2000)].astype(np.int64) * STEP
    for f in walk_forward_folds(times, STEP, n_folds=3, test_frac=0.2):
        check_no_leakage(f, times, STEP, horizon=1, embargo=32)


def test_leak_detector_fires() -> None:
    times = np.arange(1000, dtype=np.int64) * STEP
    f = walk_forward_folds(times, STEP, n_folds=3)[0]
    with pytest.raises(AssertionError):
        check_no_leakage(f, times, STEP, horizon=1, embargo=200)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        walk_forward_folds(np.array([2, 1]), STEP)
    with pytest.raises(ValueError):
        walk_forward_folds(np.arange(100) * STEP, STEP, n_folds=7, test_frac=0.15)
