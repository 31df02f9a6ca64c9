"""Windows, labels and chronological splits: no leakage across the purge gap."""

from __future__ import annotations

import numpy as np
import pytest

from service import features as fx
from service.kline_io import load_bundled
from service.klines import KlineTable
from training.config import DataConfig
from training.data import batch_indices, build_dataset, features_with_gaps, load_dataset

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
    assert ds.train.y[i] == int(btc_slice.close[end + 1] > btc_slice.open[end + 1])
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
    assert np.isnan(labels[1499])  # the bar before the gap has no next candle
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
