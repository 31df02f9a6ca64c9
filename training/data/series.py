"""The report's data: one symbol's windows (`Series`) and the pooled walk-forward folds.

A `Series` holds a symbol's features, both heads' labels (DESIGN section 3: column 0
direction, column 1 volatility) and the window ends that span no gap. Several series are
pooled by calendar time: every fold's boundaries are instants, the same for every symbol,
so no symbol's training rows come from a period another symbol is tested on, and each split
keeps an equal number of windows per symbol (balanced, evenly thinned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service import features as fx
from service.market.kline_io import DATA_DIR, load_klines
from service.market.klines import KlineTable, interval_ms
from training.data.dataset import Split
from training.data.walkforward import Fold

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
POS_STRIDE = 10_000_000  # pooled bar positions: symbol k's bars live in [k·stride, (k+1)·stride)


@dataclass(frozen=True)
class Series:
    """One symbol's bars and usable windows (row i of `ends` is a sample, in time order)."""

    symbol: str
    interval: str
    feats: F64  # (N, F)
    labels: F64  # (N, H) direction, volatility (NaN where undefined)
    pos: I64  # (N,) bar position (gaps counted)
    start: I64  # (N,) bar start, ms
    close: F64  # (N,)
    ends: I64  # (M,) window end rows

    @property
    def times(self) -> I64:
        return self.start[self.ends]


def bundled_file(symbol: str, interval: str, period: str = "", data_dir: Path = DATA_DIR) -> Path:
    """The bundled file of (symbol, interval) whose first date starts with `period`
    ("" = the earliest file, "20251101" = the Nov–Jan one)."""
    token = f"{interval}m"
    files = sorted(data_dir.glob(f"bybit_linear_{symbol}_{token}_{period}*.csv.gz"))
    if not files:
        raise FileNotFoundError(f"no bundled {symbol} {token} file for period {period!r}")
    return files[0]


def series_from_table(table: KlineTable, window: int = fx.WINDOW) -> Series:
    """Features and both labels per contiguous run → the window ends that span no gap."""
    step = interval_ms(table.interval)
    pos = ((table.start - table.start[0]) // step).astype(np.int64)
    feats = np.full((len(table), fx.N_FEATURES), np.nan)
    labels = np.full((len(table), 2), np.nan)
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(table)], strict=True):
        seg = table.slice(int(lo), int(hi))
        feats[lo:hi] = fx.batch_features(seg.open, seg.high, seg.low, seg.close, seg.volume)
        labels[lo:hi] = fx.make_head_labels(seg.open, seg.high, seg.low, seg.close)
    ends = fx.window_ends(feats, labels, window)
    ends = ends[pos[ends] - pos[ends - (window - 1)] == window - 1]
    return Series(table.symbol, table.interval, feats, labels, pos, table.start, table.close, ends)


def load_series(symbol: str, interval: str, period: str = "", last_bars: int = 0) -> Series:
    """A bundled file as a Series (`last_bars` > 0 keeps only the latest bars: quick mode)."""
    table = load_klines(bundled_file(symbol, interval, period), drop_last_unconfirmed=True)
    if last_bars > 0:
        table = table.slice(max(0, len(table) - last_bars), None)
    return series_from_table(table)


def backtesting_series(name: str, last_bars: int = 0) -> Series:
    """EURUSD hourly or GOOG daily bars shipped by the `backtesting` package, as a Series."""
    import backtesting.test as bt  # the train extra; only the cross-domain experiment needs it

    df = {"EURUSD": bt.EURUSD, "GOOG": bt.GOOG}[name]
    if last_bars > 0:
        df = df.iloc[-last_bars:]
    start = (df.index.astype("datetime64[ms]").astype(np.int64)).to_numpy()
    # the bars are irregular (weekends, holidays): positions count rows, so windows span
    # trading bars, as the data's own calendar does
    n = len(df)
    table = KlineTable(
        name,
        "60" if name == "EURUSD" else "D",
        start.astype(np.int64),
        df["Open"].to_numpy(np.float64),
        df["High"].to_numpy(np.float64),
        df["Low"].to_numpy(np.float64),
        df["Close"].to_numpy(np.float64),
        df["Volume"].to_numpy(np.float64),
        np.full(n, np.nan),
    )
    feats = fx.batch_features(table.open, table.high, table.low, table.close, table.volume)
    labels = fx.make_head_labels(table.open, table.high, table.low, table.close)
    ends = fx.window_ends(feats, labels)
    return Series(name, table.interval, feats, labels, np.arange(n), start, table.close, ends)


def windows(series: Series, rows: I64, window: int = fx.WINDOW) -> Split:
    """The Split of the series' samples `rows` (indices into `ends`)."""
    idx = series.ends[rows]
    return Split(
        x=fx.make_windows(series.feats, idx, window),
        y=series.labels[idx].astype(np.int64),
        pos=series.pos[idx],
        start_ms=series.start[idx].astype(np.int64),
    )


def concat(splits: Sequence[Split], pos_offsets: Sequence[int] | None = None) -> Split:
    """Splits of several symbols as one (bar positions shifted apart so CRD's adjacency
    never links two symbols' bars)."""
    offs = pos_offsets or [k * POS_STRIDE for k in range(len(splits))]
    return Split(
        np.concatenate([s.x for s in splits]),
        np.concatenate([s.y for s in splits]),
        np.concatenate([s.pos + o for s, o in zip(splits, offs, strict=True)]),
        np.concatenate([s.start_ms for s in splits]),
    )


def thin(rows: I64, n: int) -> I64:
    """`n` evenly spaced entries of `rows` (all of them when n ≥ len)."""
    if n >= rows.size:
        return rows
    return rows[np.linspace(0, rows.size - 1, n).round().astype(np.int64)]


def calendar_rows(series: Series, lo_ms: int, hi_ms: int) -> I64:
    """Samples whose window ends at a bar starting in [lo_ms, hi_ms)."""
    t = series.times
    return np.flatnonzero((t >= lo_ms) & (t < hi_ms)).astype(np.int64)


@dataclass(frozen=True)
class CalendarFold:
    """One walk-forward fold as instants: train [t0, val0 − gap), val [val0, test0 − gap),
    test [test0, test1)."""

    index: int
    train_lo: int
    val_lo: int
    test_lo: int
    test_hi: int
    gap_ms: int  # purge + embargo between parts


def calendar_folds(
    times_ms: I64,
    interval_ms_: int,
    n_folds: int,
    embargo: int,
    test_fraction: float,
    val_fraction: float,
) -> list[CalendarFold]:
    """Walk-forward folds on one symbol's (or the union's) sorted times, as instants."""
    from training.data.walkforward import walk_forward_folds

    folds: list[Fold] = walk_forward_folds(
        times_ms, interval_ms_, n_folds, 1, embargo, test_fraction, val_fraction
    )
    gap = (1 + embargo) * interval_ms_
    out = []
    for f in folds:
        out.append(
            CalendarFold(
                f.index,
                int(times_ms[0]),
                int(times_ms[f.val[0]]),
                int(times_ms[f.test[0]]),
                int(times_ms[f.test[-1]]) + 1,
                gap,
            )
        )
    return out


@dataclass(frozen=True)
class PooledFold:
    """A fold's splits over several symbols, plus which symbol each test row belongs to."""

    index: int
    train: Split
    val: Split
    test: Split
    test_symbol: NDArray[np.str_]  # (M,)
    test_next_ret: F64  # (M,) close-to-close return of the bar after each test window
    mean: F64  # (F,) training-row feature statistics
    std: F64


def pooled_fold(
    series: Sequence[Series],
    cf: CalendarFold,
    train_stride: int = 1,
    balance: bool = True,
    train_latest: float = 1.0,
    val_stride: int = 1,
) -> PooledFold:
    """Every symbol's rows inside the fold's calendar parts; equal counts per symbol.

    `train_latest` < 1 keeps only that share of each symbol's training rows, the latest
    (the low-data student of the cross-asset setting); the strides keep every k-th window
    (overlapping windows are near-duplicates: a budget knob)."""
    parts: dict[str, list[I64]] = {"train": [], "val": [], "test": []}
    for s in series:
        tr = calendar_rows(s, cf.train_lo, cf.val_lo - cf.gap_ms)
        if train_latest < 1.0:
            tr = tr[tr.size - max(2, round(tr.size * train_latest)) :]
        va = calendar_rows(s, cf.val_lo, cf.test_lo - cf.gap_ms)
        te = calendar_rows(s, cf.test_lo, cf.test_hi)
        parts["train"].append(tr[:: max(1, train_stride)])
        parts["val"].append(va[:: max(1, val_stride)])
        parts["test"].append(te)
    if balance:
        for k, rows in parts.items():
            n = min(r.size for r in rows)
            parts[k] = [thin(r, n) for r in rows]
    return assemble(series, parts, cf.index)


def assemble(series: Sequence[Series], parts: dict[str, list[I64]], index: int) -> PooledFold:
    """Windows of each part's rows per symbol, concatenated; stats over the training rows."""
    tr = concat([windows(s, r) for s, r in zip(series, parts["train"], strict=True)])
    va = concat([windows(s, r) for s, r in zip(series, parts["val"], strict=True)])
    te = concat([windows(s, r) for s, r in zip(series, parts["test"], strict=True)])
    feats = []
    for s, r in zip(series, parts["train"], strict=True):
        e = s.ends[r]
        rows = np.unique((e[:, None] - np.arange(fx.WINDOW)[None, :]).ravel())
        feats.append(s.feats[rows])
    allf = np.concatenate(feats)
    nxt = []
    for s, r in zip(series, parts["test"], strict=True):
        e = s.ends[r]
        nxt.append(s.close[np.minimum(e + 1, s.close.size - 1)] / s.close[e] - 1.0)
    sym = np.concatenate(
        [np.full(r.size, s.symbol) for s, r in zip(series, parts["test"], strict=True)]
    )
    return PooledFold(
        index, tr, va, te, sym, np.concatenate(nxt), allf.mean(axis=0), allf.std(axis=0)
    )


def fold_from_splits(train: Split, val: Split, test: PooledFold, index: int = 0) -> PooledFold:
    """A fold of given training/validation splits and another fold's test rows; statistics
    over the training windows' (N, F, T) values (overlapping windows weigh rows alike)."""
    flat = np.moveaxis(train.x, 1, -1).reshape(-1, train.x.shape[1]).astype(np.float64)
    return PooledFold(
        index,
        train,
        val,
        test.test,
        test.test_symbol,
        test.test_next_ret,
        flat.mean(axis=0),
        flat.std(axis=0),
    )
