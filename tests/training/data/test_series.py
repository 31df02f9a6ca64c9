"""Pooled calendar folds: shared boundaries with purge + embargo, balance, the alt slice."""

from __future__ import annotations

import numpy as np

from service.market.klines import interval_ms
from training.data.series import POS_STRIDE, calendar_folds, load_series, pooled_fold


def test_pooled_folds_share_boundaries_and_keep_the_gap() -> None:
    series = [load_series(s, "5", "", 3000) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    step = interval_ms("5")
    folds = calendar_folds(series[0].times, step, 2, 32, 0.1, 0.15)
    gap = 33 * step  # 1-bar label purge + 32-bar embargo
    for cf in folds:
        pf = pooled_fold(series, cf, train_stride=2)
        # every symbol's training rows end before validation, validation before test
        assert pf.train.start_ms.max() + gap < pf.val.start_ms.min()
        assert pf.val.start_ms.max() + gap < pf.test.start_ms.min()
        # equal windows per symbol in every split (symbol k's positions start at k·stride)
        for split in (pf.train, pf.val, pf.test):
            counts = np.bincount(split.pos // POS_STRIDE, minlength=3)
            assert counts.min() == counts.max() > 0
        assert sorted(set(pf.test_symbol.tolist())) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
        # both heads' labels, statistics from the training rows
        assert pf.train.y.shape[1] == 2 and set(np.unique(pf.train.y)) <= {0, 1}
        assert pf.mean.shape == (12,) and np.all(pf.std > 0)
    # walk-forward: the later fold trains on more and tests later
    a, b = (pooled_fold(series, cf) for cf in folds)
    assert len(b.train) > len(a.train) and b.test.start_ms.min() > a.test.start_ms.max()


def test_train_latest_keeps_the_latest_share() -> None:
    s = load_series("XRPUSDT", "5", "20251101", 3000)
    cf = calendar_folds(s.times, interval_ms("5"), 1, 32, 0.25, 0.15)[0]
    full = pooled_fold([s], cf)
    small = pooled_fold([s], cf, train_latest=0.2)
    assert abs(len(small.train) - 0.2 * len(full.train)) <= 1
    assert small.train.start_ms.min() > full.train.start_ms.min()
    assert small.train.start_ms.max() == full.train.start_ms.max()
    np.testing.assert_array_equal(small.test.start_ms, full.test.start_ms)
    # the Nov–Jan file, not the Apr–Jul one
    assert s.times[0] >= 1_761_955_200_000  # 2025-11-01
