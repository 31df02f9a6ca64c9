"""Windows, labels and chronological splits: no leakage across the purge gap."""

from __future__ import annotations

import numpy as np
import pytest

from service import features as fx
from service.market.kline_io import load_bundled
from service.market.klines import KlineTable
from training.config import DataConfig
from training.data.dataset import (
    balanced_order,
    batch_indices,
    build_dataset,
    features_with_gaps,
    load_dataset,
    load_series,
    make_split,
    norm_stats,
    pool_series,
    pooled_folds,
    time_split_rows,
)

T = fx.WINDOW


@pytest.fixture(scope="module")
def btc_slice() -> KlineTable:
    table = load_bundled("BTCUSDT", "5")
    return table.slice(len(table) - 3000, None)


def _bars_used(pos: np.ndarray) -> tuple[int, int]:
    """First input bar and label bar of a split, by bar position."""
    return int(pos.min()) - (T - 1), int(pos.max()) + 1


def test_splits_are_chronological_and_purged(btc_slice: KlineTable) -> None:
    ds = build_dataset(btc_slice, DataConfig())
    assert len(ds.train) > len(ds.val) > 0 and len(ds.test) > 0
    for a, b in ((ds.train, ds.val), (ds.val, ds.test)):
        _, last_label_bar = _bars_used(a.pos)
        first_input_bar, _ = _bars_used(b.pos)
        assert last_label_bar < first_input_bar  # no bar is shared, labels included
        assert b.pos.min() - a.pos.max() == T + 1  # exactly one window purged
        assert np.all(np.diff(a.pos) > 0)
    assert ds.train.x.shape[1:] == (fx.N_FEATURES, T)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64


def test_windows_and_labels_match_the_feature_code(btc_slice: KlineTable) -> None:
    ds = build_dataset(btc_slice, DataConfig())
    feats = fx.batch_features(
        btc_slice.open, btc_slice.high, btc_slice.low, btc_slice.close, btc_slice.volume
    )
    i = 100
    end = int(ds.train.pos[i])  # no gaps in this slice: position == row
    np.testing.assert_allclose(ds.train.x[i], feats[end - T + 1 : end + 1].T.astype(np.float32))
    assert ds.train.y[i, 0] == int(btc_slice.close[end + 1] > btc_slice.open[end + 1])
    r = (btc_slice.high - btc_slice.low) / btc_slice.close
    assert ds.train.y[i, 1] == int(r[end + 1] > np.median(r[end - 47 : end + 1]))
    assert ds.train.head("volatility")[i] == ds.train.y[i, 1]
    assert ds.train.start_ms[i] == btc_slice.start[end]


def test_normalisation_uses_training_rows_only(btc_slice: KlineTable) -> None:
    ds = build_dataset(btc_slice, DataConfig())
    feats = fx.batch_features(
        btc_slice.open, btc_slice.high, btc_slice.low, btc_slice.close, btc_slice.volume
    )
    lo, hi = int(ds.train.pos.min()) - T + 1, int(ds.train.pos.max())
    np.testing.assert_allclose(ds.mean, feats[lo : hi + 1].mean(axis=0))
    np.testing.assert_allclose(ds.std, feats[lo : hi + 1].std(axis=0))


def test_gaps_restart_features_and_drop_crossing_windows(btc_slice: KlineTable) -> None:
    keep = np.ones(len(btc_slice), dtype=bool)
    keep[1500:1510] = False  # ten missing bars
    t = btc_slice
    gappy = KlineTable(
        t.symbol,
        t.interval,
        t.start[keep],
        t.open[keep],
        t.high[keep],
        t.low[keep],
        t.close[keep],
        t.volume[keep],
        t.turnover[keep],
    )
    feats, labels, _ = features_with_gaps(gappy)
    assert np.isnan(labels[1499]).all()  # the bar before the gap has no next candle
    assert np.isnan(labels[1500 : 1500 + fx.VOL_LABEL_BARS - 1, 1]).all()  # median restarts
    assert np.isnan(feats[1500 : 1500 + fx.WARMUP_BARS - 1]).all()  # look-backs restart
    ds = build_dataset(gappy, DataConfig(val_fraction=0.1, test_fraction=0.1))
    for split in (ds.train, ds.val, ds.test):
        first_bar = split.pos - (T - 1)
        assert not np.any((first_bar <= 1509) & (split.pos >= 1500))


def test_last_bars_and_too_little_data() -> None:
    ds = load_dataset(DataConfig(last_bars=1200))
    assert len(ds.train) + len(ds.val) + len(ds.test) < 1200
    with pytest.raises(ValueError, match="too little data"):
        load_dataset(DataConfig(last_bars=60))


def test_batches_are_reproducible_and_shard_under_ddp() -> None:
    a = [b.tolist() for b in batch_indices(103, 10, seed=1, epoch=2)]
    assert a == [b.tolist() for b in batch_indices(103, 10, seed=1, epoch=2)]
    assert a != [b.tolist() for b in batch_indices(103, 10, seed=1, epoch=3)]
    assert sorted(i for b in a for i in b) == list(range(103))
    shards = [list(batch_indices(103, 10, seed=1, epoch=2, rank=r, world=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])  # every rank runs the same number of steps
    flat = [set(np.concatenate(s).tolist()) for s in shards]
    assert not flat[0] & flat[1]


@pytest.fixture(scope="module")
def pool3():  # type: ignore[no-untyped-def]
    # three symbols' last 1500 bars (their files end on the same candle)
    series = [load_series(s, "5", last_bars=1500) for s in ("BTCUSDT", "ETHUSDT", "XRPUSDT")]
    return pool_series(series)


def test_pool_keeps_features_per_symbol_and_records_the_symbol(pool3) -> None:  # type: ignore[no-untyped-def]
    assert np.all(np.diff(pool3.times) >= 0)
    split = make_split(pool3, np.arange(len(pool3)))
    for name in ("ETHUSDT", "XRPUSDT"):
        k = pool3.symbols.index(name)
        rows = np.flatnonzero(pool3.sym == k)
        own = load_series(name, "5", last_bars=1500)
        assert rows.size == own.ends.size
        # the window is that symbol's own feature rows (computed on its own klines only)
        np.testing.assert_array_equal(
            split.x[rows[5]], fx.make_windows(own.feats, own.ends[5:6])[0]
        )
        np.testing.assert_array_equal(split.y[rows], own.labels[own.ends].astype(np.int64))
        assert set(split.symbol[rows].tolist()) == {name}


def test_pooled_split_has_one_set_of_time_boundaries(pool3) -> None:  # type: ignore[no-untyped-def]
    tr, va, te = time_split_rows(pool3, 0.15, 0.15, T)
    step = 300_000
    assert pool3.times[tr].max() + (T + 1) * step == pool3.times[va].min()
    assert pool3.times[va].max() + (T + 1) * step == pool3.times[te].min()
    for k in range(3):  # every symbol sits on both sides of the same instant
        assert (
            (pool3.sym[tr] == k).any() and (pool3.sym[va] == k).any() and (pool3.sym[te] == k).any()
        )
    mean, std = norm_stats(pool3, tr)
    seen = []
    for k, s in enumerate(pool3.series):
        e = pool3.end[tr][pool3.sym[tr] == k]
        seen.append(s.feats[e.min() - T + 1 : e.max() + 1])  # contiguous: no gaps here
    np.testing.assert_allclose(mean, np.concatenate(seen).mean(axis=0))
    np.testing.assert_allclose(std, np.concatenate(seen).std(axis=0))


def test_pooled_walk_forward_folds_split_by_time(pool3) -> None:  # type: ignore[no-untyped-def]
    folds = pooled_folds(pool3, n_folds=2, embargo=T, test_frac=0.2, val_frac=0.15)
    for f in folds:
        t = pool3.times
        assert t[f.train].max() < t[f.val].min() and t[f.val].max() < t[f.test].min()
        assert t[f.test].min() - t[f.val].max() > T * 300_000
        for part in (f.train, f.val, f.test):  # all rows of an instant land in one part
            times = set(t[part].tolist())
            others = np.setdiff1d(np.arange(len(pool3)), part)
            assert not times & set(t[others].tolist())


def test_balanced_epochs_draw_equal_windows_per_symbol() -> None:
    groups = np.r_[np.zeros(50), np.ones(20), np.full(30, 2)].astype(np.int64)
    order = balanced_order(groups, np.random.default_rng(0))
    assert np.bincount(groups[order]).tolist() == [20, 20, 20]
    assert len(set(order.tolist())) == 60  # without replacement
    a = np.concatenate(list(batch_indices(100, 16, seed=0, epoch=0, groups=groups)))
    b = np.concatenate(list(batch_indices(100, 16, seed=0, epoch=1, groups=groups)))
    assert np.bincount(groups[a]).tolist() == [20, 20, 20]
    assert set(a[groups[a] == 0].tolist()) != set(b[groups[b] == 0].tolist())  # a fresh draw
    # one group: the plain permutation, as before pooling
    one = np.zeros(100, dtype=np.int64)
    assert [x.tolist() for x in batch_indices(100, 16, seed=3, epoch=1, groups=one)] == [
        x.tolist() for x in batch_indices(100, 16, seed=3, epoch=1)
    ]


def test_pooled_dataset_from_config() -> None:
    ds = load_dataset(DataConfig(symbols=("BTCUSDT", "SOLUSDT"), last_bars=800))
    assert ds.symbols == ("BTCUSDT", "SOLUSDT") and ds.symbol == "BTCUSDT+SOLUSDT"
    assert set(ds.test.symbol.tolist()) == {"BTCUSDT", "SOLUSDT"}
    assert ds.train.y.shape == (len(ds.train), 2)
