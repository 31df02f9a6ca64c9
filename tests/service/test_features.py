"""The feature pipeline: hand-computed values, batch == incremental on all bundled data."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from service.features import (
    FEATURE_NAMES,
    FEATURE_SPEC,
    FEATURE_SPEC_HASH,
    WARMUP_BARS,
    WINDOW,
    FeatureWindow,
    IncrementalFeatures,
    batch_features,
    feature_spec_hash,
    make_head_labels,
    make_labels,
    make_vol_labels,
    make_windows,
    window_ends,
)
from service.market.kline_io import DATA_DIR, load_klines

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _incremental(o, h, lo, c, v) -> np.ndarray:
    inc = IncrementalFeatures()
    rows = []
    for args in zip(o, h, lo, c, v, strict=True):
        r = inc.update(*(float(a) for a in args))
        rows.append(np.full(len(FEATURE_NAMES), np.nan) if r is None else r)
    return np.array(rows)


def _series(n: int = 60, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.r_[100.0, c[:-1]]
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.005, n))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.005, n))
    v = rng.uniform(1, 50, n)
    return o, h, lo, c, v


def test_names_and_spec_hash() -> None:
    assert FEATURE_NAMES == (
        "ret_1", "logret_1", "open_rel", "high_rel", "low_rel", "range_rel", "vol_z",
        "vwap_rel", "volatility_20", "sma10_rel", "sma30_rel", "rsi_14",
    )  # fmt: skip
    assert WINDOW == 32
    assert feature_spec_hash() == FEATURE_SPEC_HASH
    changed = dict(FEATURE_SPEC, version=999)
    assert feature_spec_hash(changed) != FEATURE_SPEC_HASH


def test_each_feature_by_hand() -> None:
    o, h, lo, c, v = _series()
    feats = batch_features(o, h, lo, c, v)
    t = 55
    assert np.isnan(feats[: WARMUP_BARS - 1]).all()
    assert not np.isnan(feats[WARMUP_BARS - 1 :]).any()
    row = feats[t]
    assert row[COL["ret_1"]] == pytest.approx(c[t] / c[t - 1] - 1, abs=1e-15)
    assert row[COL["logret_1"]] == pytest.approx(math.log(c[t] / c[t - 1]), abs=1e-15)
    assert row[COL["open_rel"]] == pytest.approx(o[t] / c[t] - 1, abs=1e-15)
    assert row[COL["high_rel"]] == pytest.approx(h[t] / c[t] - 1, abs=1e-15)
    assert row[COL["low_rel"]] == pytest.approx(lo[t] / c[t] - 1, abs=1e-15)
    assert row[COL["range_rel"]] == pytest.approx((h[t] - lo[t]) / c[t], abs=1e-15)
    x = [math.log(1 + v[i]) for i in range(t - 47, t + 1)]
    vol_z = (x[-1] - statistics.fmean(x)) / statistics.pstdev(x)
    assert row[COL["vol_z"]] == pytest.approx(vol_z, abs=1e-12)
    tp = [(h[i] + lo[i] + c[i]) / 3 for i in range(t - 11, t + 1)]
    vw = sum(p * q for p, q in zip(tp, v[t - 11 : t + 1], strict=True)) / sum(v[t - 11 : t + 1])
    assert row[COL["vwap_rel"]] == pytest.approx(c[t] / vw - 1, abs=1e-13)
    lr = [math.log(c[i] / c[i - 1]) for i in range(t - 19, t + 1)]
    assert row[COL["volatility_20"]] == pytest.approx(statistics.pstdev(lr), abs=1e-14)
    assert row[COL["sma10_rel"]] == pytest.approx(c[t] / statistics.fmean(c[t - 9 : t + 1]) - 1)
    assert row[COL["sma30_rel"]] == pytest.approx(c[t] / statistics.fmean(c[t - 29 : t + 1]) - 1)
    # RSI: Wilder averages seeded by the simple mean of the first 14 changes.
    d = np.diff(c)
    g = sum(max(x, 0) for x in d[:14]) / 14
    lo_avg = sum(max(-x, 0) for x in d[:14]) / 14
    for i in range(14, t):
        g = (13 * g + max(d[i], 0)) / 14
        lo_avg = (13 * lo_avg + max(-d[i], 0)) / 14
    rsi = 100 - 100 / (1 + g / lo_avg)
    assert row[COL["rsi_14"]] == pytest.approx((rsi - 50) / 50, abs=1e-12)


def test_literal_values_on_a_tiny_series() -> None:
    # 48 flat bars, then one bar up 1 %: every rule can be checked with pencil and paper.
    n = 49
    c = np.full(n, 100.0)
    c[-1] = 101.0
    o = np.r_[np.full(n - 1, 100.0), 100.0]
    h = np.r_[np.full(n - 1, 100.0), 102.0]
    lo = np.r_[np.full(n - 1, 100.0), 99.0]
    v = np.r_[np.zeros(n - 1), 10.0]
    f = batch_features(o, h, lo, c, v)
    assert f[47, COL["rsi_14"]] == 0.0  # no gains, no losses → RSI 50 → 0
    assert f[47, COL["vol_z"]] == 0.0  # zero variance → 0
    assert f[47, COL["vwap_rel"]] == 0.0  # Σ v = 0 → 0
    assert f[47, COL["volatility_20"]] == 0.0
    last = f[48]
    assert last[COL["ret_1"]] == pytest.approx(0.01)
    assert last[COL["open_rel"]] == pytest.approx(100 / 101 - 1)
    assert last[COL["high_rel"]] == pytest.approx(102 / 101 - 1)
    assert last[COL["range_rel"]] == pytest.approx(3 / 101)
    assert last[COL["rsi_14"]] == 1.0  # L = 0 < G → RSI 100
    # vwap over the last 12 bars: only the last has volume → VWAP = its typical price
    assert last[COL["vwap_rel"]] == pytest.approx(101 / ((102 + 99 + 101) / 3) - 1)
    # vol_z: x = [0]*47 + [ln 11]: mean ln11/48, std ln11·sqrt(47)/48 → z = sqrt(47)
    assert last[COL["vol_z"]] == pytest.approx(math.sqrt(47))
    assert last[COL["sma10_rel"]] == pytest.approx(101 / 100.1 - 1)
    assert last[COL["sma30_rel"]] == pytest.approx(101 / (3001 / 30) - 1)
    np.testing.assert_allclose(_incremental(o, h, lo, c, v), f, atol=1e-12)


def test_incremental_warmup_and_fixed_memory() -> None:
    o, h, lo, c, v = _series(200)
    inc = IncrementalFeatures()
    outs = [inc.update(*map(float, a)) for a in zip(o, h, lo, c, v, strict=True)]
    assert all(x is None for x in outs[: WARMUP_BARS - 1])
    assert all(x is not None for x in outs[WARMUP_BARS - 1 :])
    # ring buffers never grow with history
    assert {len(b) for b in (inc._close, inc._logret, inc._volx, inc._pv, inc._vol)} == {48}


BUNDLED = sorted(DATA_DIR.glob("*.csv.gz"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: Path(p).name)
def test_batch_equals_incremental_on_bundled_data(path: Path) -> None:
    t = load_klines(path, drop_last_unconfirmed=True)
    b = batch_features(t.open, t.high, t.low, t.close, t.volume)
    i = _incremental(t.open, t.high, t.low, t.close, t.volume)
    assert np.array_equal(np.isnan(b), np.isnan(i))
    m = ~np.isnan(b)
    assert np.abs(b[m] - i[m]).max() <= 1e-9


def test_zero_volume_bars_are_in_the_bundle() -> None:
    zero = [p.name for p in BUNDLED if (load_klines(p).volume == 0).any()]
    assert zero, "parity must cover real zero-volume bars (BNBUSDT 1m has them)"


def test_labels_and_windows() -> None:
    o, h, lo, c, v = _series(100)
    y = make_labels(o, c)
    assert np.isnan(y[-1])
    assert y[10] == float(c[11] > o[11])
    f = batch_features(o, h, lo, c, v)
    ends = window_ends(f, y)
    assert ends[0] == WARMUP_BARS - 1 + WINDOW - 1
    assert ends[-1] == len(c) - 2  # the last bar has no label
    x = make_windows(f, ends)
    assert x.shape == (len(ends), len(FEATURE_NAMES), WINDOW) and x.dtype == np.float32
    np.testing.assert_allclose(x[3, :, -1], f[ends[3]], rtol=1e-6)
    np.testing.assert_allclose(x[3, :, 0], f[ends[3] - WINDOW + 1], rtol=1e-6)


def test_vol_labels_by_hand() -> None:
    # close 1 everywhere, so the range (h - l)/c is h - l. Bars 0..47 have ranges 1..48
    # (median over t-47..t = 24.5 at t = 47); then a range of 30, 10, 30.
    n = 51
    c = np.ones(n)
    lo = np.zeros(n)
    h = np.r_[np.arange(1.0, 49.0), 30.0, 10.0, 30.0]
    y = make_vol_labels(h, lo, c)
    assert np.isnan(y[:47]).all()  # fewer than 48 ranges up to bar t
    assert y[47] == 1.0  # next range 30 > median(1..48) = 24.5
    # t = 48: ranges 2..48 and 30 -> sorted middle pair 25, 26 -> median 25.5; next is 10
    assert y[48] == 0.0
    # t = 49: ranges 3..48, 30, 10 -> middle pair 25, 26 again -> 25.5; next is 30
    assert y[49] == 1.0
    assert np.isnan(y[50])  # the last bar has no next candle
    # equal to the median is not above it
    flat = make_vol_labels(np.ones(50), np.zeros(50), np.ones(50))
    assert flat[47] == 0.0 and flat[48] == 0.0
    both = make_head_labels(np.zeros(n), h, lo, c)
    assert both.shape == (n, 2)
    np.testing.assert_array_equal(both[:, 1], y)
    np.testing.assert_array_equal(both[:, 0], make_labels(np.zeros(n), c))
    # a window is usable only where every head's label exists
    f = np.zeros((n, 3))
    assert window_ends(f, both, window=4).tolist() == [47, 48, 49]


def test_feature_window_matches_batch_windows() -> None:
    o, h, lo, c, v = _series(150)
    f = batch_features(o, h, lo, c, v)
    win = FeatureWindow()
    inc = IncrementalFeatures()
    for t in range(len(c)):
        r = inc.update(float(o[t]), float(h[t]), float(lo[t]), float(c[t]), float(v[t]))
        if r is not None:
            win.push(r)
    assert win.full
    np.testing.assert_allclose(win.view(), f[-WINDOW:].T, atol=1e-12)


def test_prepared_and_unprepared_updates_agree() -> None:
    # prepare() only moves work ahead of the candle: the vectors must not depend on it
    o, h, lo, c, v = _series(200)
    a, b = IncrementalFeatures(), IncrementalFeatures()
    for t in range(len(c)):
        row = (float(o[t]), float(h[t]), float(lo[t]), float(c[t]), float(v[t]))
        b.prepare()
        ra, rb = a.update(*row), b.update(*row)
        assert (ra is None) == (rb is None)
        if ra is not None and rb is not None:
            assert np.array_equal(ra, rb)
    flat = IncrementalFeatures()  # constant market: the exact zero-variance rules still hold
    for _ in range(60):
        r = flat.update(1.0, 1.0, 1.0, 1.0, 7.0)
    assert r is not None and r[COL["vol_z"]] == 0.0 and r[COL["volatility_20"]] == 0.0
