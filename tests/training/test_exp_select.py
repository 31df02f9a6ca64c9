"""The committed student's candidates may read more training and validation windows than A's
runs, on the same test rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from service.klines import interval_ms
from training.exp_pooled import PooledOutcome
from training.exp_select import n_runs, reads_more, selection_fold
from training.report_config import load_report_config
from training.results import SettingResult
from training.series import calendar_folds, load_series, pooled_fold


def test_the_selection_fold_reads_every_window_and_keeps_as_test() -> None:
    cfg = load_report_config(None)
    cfg = replace(
        cfg,
        pooled=replace(cfg.pooled, symbols=("BTCUSDT", "ETHUSDT"), train_stride=6, val_stride=6),
        select=replace(cfg.select, train_stride=1, val_stride=1),
    )
    series = [load_series(s, "5", "", 3000) for s in cfg.pooled.symbols]
    cf = calendar_folds(series[0].times, interval_ms("5"), 2, 32, 0.1, 0.15)[-1]
    last = pooled_fold(series, cf, 6, val_stride=6)
    empty = SettingResult("A", "", "", last.test.y, last.test.start_ms, last.test_symbol)
    a = PooledOutcome(empty, [], last, series, {}, cf)
    pf = selection_fold(cfg, a)
    assert len(pf.train) > 5 * len(last.train)
    assert len(pf.val) > 5 * len(last.val)
    assert set(last.val.start_ms) <= set(pf.val.start_ms)
    np.testing.assert_array_equal(pf.test.x, last.test.x)
    # A's own windows are among the selection's: the first of them is the same window
    np.testing.assert_array_equal(pf.train.x[0], last.train.x[0])
    # stride 0 (or A's own) reuses A's fold
    same = replace(cfg, select=replace(cfg.select, train_stride=0, val_stride=0))
    assert selection_fold(same, a) is last
    # reading more windows, the selection trains its own ensemble teacher on them
    assert reads_more(cfg) and not reads_more(same)
    assert n_runs(cfg) == n_runs(same) + len(cfg.members)
