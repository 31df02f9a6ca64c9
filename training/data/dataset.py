"""Klines → feature windows (both labels) → chronological splits, for one symbol or a pool.

The features, windows and labels come from ``service.features`` (one implementation for
training and the live service); every window carries both labels, ``y`` (M, 2) with columns
in head order (direction, volatility).

Pooling several symbols (the default training set is the five 5-minute symbols of Apr–Jul):

* features and labels are computed **per symbol** (:func:`load_series`), per contiguous run
  of bars, never across symbols or gaps;
* the windows of all symbols are merged into one time-sorted :class:`Pool` (ties: symbol
  order); each window's symbol is recorded (``Split.symbol``) so metrics break down per symbol;
* splits are **by time**, one set of boundaries for all symbols (:func:`time_split_rows`,
  :func:`pooled_folds`): a boundary is an instant, every symbol's windows on either side of
  it fall on that side, with the same purge gap (one window) after each boundary;
* normalisation statistics come from the feature rows the training windows see, of all
  symbols (:func:`norm_stats`);
* balance: **equal windows per symbol in every epoch** (:func:`batch_indices` with
  ``groups``): each epoch draws the smallest symbol's training count from every symbol,
  without replacement and a fresh draw per epoch, so every loss term (task, KD, features)
  sees the symbols equally often and no weights are needed. Over epochs the larger symbols'
  windows all get used.

Purge: a window ending at bar e is labelled by bar e + 1, so the next split starts with the
window ending at e + T + 1 at the earliest — no bar (input or label) is shared. Bar positions
``pos`` count bars from the pool's earliest candle (one clock for all symbols), which is also
the adjacency CRD uses to keep near-duplicate windows out of its negatives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service import features as fx
from service.market.kline_io import load_bundled, load_klines
from service.market.klines import KlineTable, interval_ms
from service.model.card import HEADS
from training.config import DataConfig
from training.data.walkforward import Fold, walk_forward_folds

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Strs = npt.NDArray[np.str_]

# The default pooled training set (DESIGN: five 5-minute symbols of Apr–Jul, bundled).
POOLED_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")


@dataclass(frozen=True)
class Split:
    """One split: inputs, both labels and where (and on which symbol) each window sits."""

    x: F32  # (M, F, T) raw features, channels first
    y: I64  # (M, H) labels per head: [:, 0] next candle up, [:, 1] next range above median
    pos: I64  # (M,) bar position of the window's last bar (gaps counted): adjacency for CRD
    start_ms: I64  # (M,) candle start of the window's last bar
    symbol: Strs | None = None  # (M,) each window's symbol; None = a single unnamed symbol

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def head(self, name: str) -> I64:
        """Labels (M,) of one head ("direction" or "volatility")."""
        return self.y[:, HEADS.index(name)]

    def symbols(self) -> Strs:
        """(M,) symbol per window ("" where unknown)."""
        return self.symbol if self.symbol is not None else np.full(len(self), "", dtype="<U1")

    def take(self, idx: npt.ArrayLike) -> Split:
        """Rows ``idx`` (indices or a boolean mask) as a new split."""
        i = np.asarray(idx)
        return Split(
            self.x[i],
            self.y[i],
            self.pos[i],
            self.start_ms[i],
            None if self.symbol is None else self.symbol[i],
        )


@dataclass(frozen=True)
class Series:
    """One symbol's features and labels over its whole history; ``ends`` are usable windows."""

    symbol: str
    interval: str
    feats: F64  # (N, F)
    labels: F64  # (N, H), NaN where undefined
    start: I64  # (N,) candle start (ms)
    close: F64  # (N,)
    ends: I64  # (M,) row indices of window ends: full features, both labels, no gap inside

    @property
    def times(self) -> I64:
        """(M,) candle start of each usable window's last bar."""
        return self.start[self.ends]


@dataclass(frozen=True)
class Pool:
    """Windows of one or more symbols, merged and sorted by time (ties: symbol order)."""

    series: tuple[Series, ...]
    sym: I64  # (R,) index into ``series`` of each pooled window
    end: I64  # (R,) row of the window's last bar in its series
    times: I64  # (R,) candle start of the window's last bar, non-decreasing
    pos: I64  # (R,) bar position from the pool's earliest candle (one clock for all)
    window: int
    interval: str

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(s.symbol for s in self.series)

    def __len__(self) -> int:
        return int(self.sym.shape[0])

    def unique_times(self) -> I64:
        """Sorted distinct window-end times (the axis time boundaries are drawn on)."""
        return np.unique(self.times)

    def next_return(self, rows: I64) -> F64:
        """(M,) close-to-close return of the bar after each window's last bar."""
        out = np.empty(rows.shape[0])
        for k, s in enumerate(self.series):
            m = self.sym[rows] == k
            e = self.end[rows][m]
            out[m] = s.close[np.minimum(e + 1, s.close.shape[0] - 1)] / s.close[e] - 1.0
        return out


# ----------------------------------------------------------------------- one symbol


def load_table(cfg: DataConfig) -> KlineTable:
    """The configured klines: a CSV path, else the bundled file; optionally the last N bars."""
    table = (
        load_klines(Path(cfg.path), drop_last_unconfirmed=True)
        if cfg.path
        else load_bundled(cfg.symbol, cfg.interval)
    )
    return _last(table, cfg.last_bars)


def _last(table: KlineTable, last_bars: int) -> KlineTable:
    if last_bars > 0:
        return table.slice(max(0, len(table) - last_bars), None)
    return table


def features_with_gaps(table: KlineTable) -> tuple[F64, F64, I64]:
    """Features (N, F), labels (N, H) and bar positions (N,), computed per contiguous run.

    A gap restarts the look-backs (features before it never mix with bars after it) and the
    bar before a gap gets no label (its next candle is missing).
    """
    step = interval_ms(table.interval)
    pos = ((table.start - table.start[0]) // step).astype(np.int64)  # (N,)
    feats = np.full((len(table), fx.N_FEATURES), np.nan)
    labels = np.full((len(table), len(HEADS)), np.nan)
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(table)], strict=True):
        seg = table.slice(int(lo), int(hi))
        feats[lo:hi] = fx.batch_features(seg.open, seg.high, seg.low, seg.close, seg.volume)
        labels[lo:hi] = fx.make_head_labels(seg.open, seg.high, seg.low, seg.close)
    return feats, labels, pos


def series_from_table(table: KlineTable, window: int = fx.WINDOW) -> Series:
    """Features and labels of one table; usable windows span no gap."""
    feats, labels, pos = features_with_gaps(table)
    ends = fx.window_ends(feats, labels, window)  # (M,) row indices, chronological
    ends = ends[pos[ends] - pos[ends - (window - 1)] == window - 1]
    return Series(table.symbol, table.interval, feats, labels, table.start, table.close, ends)


def load_series(
    symbol: str, interval: str = "5", last_bars: int = 0, window: int = fx.WINDOW, path: str = ""
) -> Series:
    """A bundled file (or a CSV ``path``), optionally its last N bars, as a :class:`Series`."""
    if path:
        table = load_klines(Path(path), drop_last_unconfirmed=True)
    else:
        table = load_bundled(symbol, interval)
    return series_from_table(_last(table, last_bars), window)


# ------------------------------------------------------------------------------ pool


def pool_series(series: Sequence[Series], window: int = fx.WINDOW) -> Pool:
    """Merge several symbols' windows into one time-sorted pool (same interval required)."""
    if not series:
        raise ValueError("pool_series needs at least one series")
    intervals = {s.interval for s in series}
    if len(intervals) != 1:
        raise ValueError(f"cannot pool different intervals {sorted(intervals)}")
    if len({s.symbol for s in series}) != len(series):
        raise ValueError("each symbol may appear once in a pool")
    interval = series[0].interval
    sym = np.concatenate([np.full(s.ends.shape[0], k, np.int64) for k, s in enumerate(series)])
    end = np.concatenate([s.ends for s in series]).astype(np.int64)
    times = np.concatenate([s.times for s in series]).astype(np.int64)
    order = np.lexsort((sym, times))  # by time, then symbol
    origin = min(int(s.start[0]) for s in series)
    pos = ((times - origin) // interval_ms(interval)).astype(np.int64)
    return Pool(tuple(series), sym[order], end[order], times[order], pos[order], window, interval)


def load_pool(
    symbols: Sequence[str] = POOLED_SYMBOLS,
    interval: str = "5",
    last_bars: int = 0,
    window: int = fx.WINDOW,
) -> Pool:
    """The bundled files of ``symbols`` (earliest file each: Apr–Jul for 5 m), pooled."""
    return pool_series([load_series(s, interval, last_bars, window) for s in symbols], window)


def make_split(pool: Pool, rows: npt.ArrayLike) -> Split:
    """Windows (x, both labels, positions, times, symbols) of the pool rows ``rows``."""
    r = np.asarray(rows, dtype=np.int64)
    x = np.empty((r.shape[0], fx.N_FEATURES, pool.window), dtype=np.float32)
    y = np.empty((r.shape[0], len(HEADS)), dtype=np.int64)
    for k, s in enumerate(pool.series):
        m = pool.sym[r] == k
        if m.any():
            e = pool.end[r][m]
            x[m] = fx.make_windows(s.feats, e, pool.window)
            y[m] = s.labels[e].astype(np.int64)
    names = np.asarray(pool.symbols)[pool.sym[r]]
    return Split(x, y, pool.pos[r], pool.times[r], names)


def split_indices(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Boundaries (train_end, val_end) of a chronological split of n items."""
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    return n - n_val - n_test, n - n_test


def purge_mask(pos: I64, boundary_pos: int, purge: int) -> npt.NDArray[np.bool_]:
    """Windows whose last bar lies more than ``purge`` bars after ``boundary_pos`` survive."""
    return pos > boundary_pos + purge


def time_split_rows(
    pool: Pool, val_fraction: float, test_fraction: float, purge: int
) -> tuple[I64, I64, I64]:
    """Pool rows of a chronological train/val/test split with one set of time boundaries.

    The fractions apply to the distinct window-end times (for one symbol: to its windows).
    After each boundary ``purge`` bars of windows are dropped, for every symbol alike.
    """
    ut = pool.unique_times()
    train_end, val_end = split_indices(ut.shape[0], val_fraction, test_fraction)
    if train_end < 1 or val_end <= train_end or val_end >= ut.shape[0]:
        raise ValueError(f"only {ut.shape[0]} window times in the pool: too little data")
    rows = np.arange(len(pool), dtype=np.int64)
    tr = rows[pool.times <= ut[train_end - 1]]
    va = rows[(pool.times >= ut[train_end]) & (pool.times <= ut[val_end - 1])]
    te = rows[pool.times >= ut[val_end]]
    va = va[purge_mask(pool.pos[va], int(pool.pos[tr].max()), purge)]
    last = int(pool.pos[va].max()) if va.size else int(pool.pos[tr].max())
    te = te[purge_mask(pool.pos[te], last, purge)]
    return tr, va, te


def pooled_folds(
    pool: Pool,
    n_folds: int = 3,
    horizon: int = 1,
    embargo: int = fx.WINDOW,
    test_frac: float = 0.15,
    val_frac: float = 0.15,
) -> list[Fold]:
    """Walk-forward folds by time across all symbols: rows of the pool per fold.

    :func:`training.data.walkforward.walk_forward_folds` runs on the distinct window-end times;
    every pool row then joins the part its time fell in (one set of boundaries, purge and
    embargo as there).
    """
    ut = pool.unique_times()
    step = interval_ms(pool.interval)
    tf = walk_forward_folds(ut, step, n_folds, horizon, embargo, test_frac, val_frac)
    at = np.searchsorted(ut, pool.times)  # (R,) index of each row's time in ut
    out: list[Fold] = []
    for f in tf:
        part = np.full(ut.shape[0], -1, dtype=np.int64)
        part[f.train], part[f.val], part[f.test] = 0, 1, 2
        p = part[at]
        out.append(Fold(f.index, *(np.flatnonzero(p == k).astype(np.int64) for k in range(3))))
    return out


def _rows_seen(pool: Pool, rows: I64) -> list[tuple[int, I64]]:
    """Per series: the feature rows the windows ending at pool ``rows`` read."""
    out = []
    for k in range(len(pool.series)):
        e = pool.end[rows[pool.sym[rows] == k]]
        if e.size:
            out.append((k, np.unique((e[:, None] - np.arange(pool.window)[None, :]).ravel())))
    return out


def norm_stats(pool: Pool, rows: I64) -> tuple[F64, F64]:
    """Mean and std (F,) over the feature rows the training windows see, all symbols."""
    stacked = np.concatenate([pool.series[k].feats[r] for k, r in _rows_seen(pool, rows)])
    return stacked.mean(axis=0), stacked.std(axis=0)


def feature_quantiles(pool: Pool, rows: I64, quantiles: Sequence[float]) -> dict[str, list[float]]:
    """Per-feature quantiles of the feature rows the training windows see (the card's
    feature reference for live drift)."""
    stacked = np.concatenate([pool.series[k].feats[r] for k, r in _rows_seen(pool, rows)])
    q = np.quantile(stacked, np.asarray(quantiles), axis=0)  # (Q, F)
    return {name: [float(v) for v in q[:, j]] for j, name in enumerate(fx.FEATURE_NAMES)}


def feature_rows_count(pool: Pool, rows: I64) -> int:
    """How many feature rows the windows at ``rows`` read (all symbols)."""
    return int(sum(r.shape[0] for _, r in _rows_seen(pool, rows)))


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    mean: F64  # (F,) training-split feature means
    std: F64  # (F,) training-split feature standard deviations
    symbols: tuple[str, ...]
    interval: str
    window: int
    pool: Pool | None = None
    train_rows: I64 | None = None  # pool rows of the training split

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def symbol(self) -> str:
        """The symbol, or the pooled symbols joined by "+"."""
        return "+".join(self.symbols)

    def span(self) -> dict[str, object]:
        """First/last candle start (ms) and window count of every split."""
        return {
            name: {
                "first_ms": int(s.start_ms[0]) if len(s) else None,
                "last_ms": int(s.start_ms[-1]) if len(s) else None,
                "windows": len(s),
            }
            for name, s in (("train", self.train), ("val", self.val), ("test", self.test))
        }


def dataset_from_pool(pool: Pool, cfg: DataConfig) -> Dataset:
    """Chronological train/val/test split of a pool (time boundaries, purge gaps)."""
    purge = pool.window if cfg.purge < 0 else cfg.purge
    if len(pool) < 10:
        raise ValueError(f"only {len(pool)} usable windows in {pool.symbols}: too little data")
    tr, va, te = time_split_rows(pool, cfg.val_fraction, cfg.test_fraction, purge)
    mean, std = norm_stats(pool, tr)
    return Dataset(
        make_split(pool, tr),
        make_split(pool, va),
        make_split(pool, te),
        mean,
        std,
        pool.symbols,
        pool.interval,
        pool.window,
        pool,
        tr,
    )


def build_dataset(table: KlineTable, cfg: DataConfig) -> Dataset:
    """Feature windows of one kline table, split chronologically with purge gaps."""
    series = series_from_table(table, cfg.window)
    if series.ends.shape[0] < 10:
        raise ValueError(
            f"only {series.ends.shape[0]} usable windows in {table.symbol}: too little data"
        )
    return dataset_from_pool(pool_series([series], cfg.window), cfg)


def load_dataset(cfg: DataConfig) -> Dataset:
    """One symbol (:func:`load_table`) or, with ``cfg.symbols``, the pooled symbols."""
    if cfg.symbols:
        return dataset_from_pool(
            load_pool(cfg.symbols, cfg.interval, cfg.last_bars, cfg.window), cfg
        )
    return build_dataset(load_table(cfg), cfg)


# --------------------------------------------------------------------------- batches


def balanced_order(groups: I64, rng: np.random.Generator) -> I64:
    """Rows with equally many of every group: each group's smallest count, drawn without
    replacement (a fresh draw per call), then shuffled together."""
    codes = np.unique(groups)
    per = [np.flatnonzero(groups == g) for g in codes]
    m = min(p.shape[0] for p in per)
    picked = np.concatenate([rng.permutation(p)[:m] for p in per])
    return rng.permutation(picked).astype(np.int64)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world: int = 1,
    groups: I64 | None = None,
) -> Iterator[I64]:
    """Index batches for one epoch; reproducible from (seed, epoch).

    ``groups`` (n,) (e.g. symbol codes) balances the epoch: equal rows per group, see
    :func:`balanced_order`; with one group it is the plain permutation.
    Under DDP every rank draws the same permutation and takes every world-th element, after
    truncating to a multiple of world × batch_size so all ranks run the same number of steps.
    """
    rng = np.random.default_rng([seed, epoch])
    if not shuffle:
        order = np.arange(n, dtype=np.int64)
    elif groups is not None and np.unique(groups).shape[0] > 1:
        order = balanced_order(np.asarray(groups), rng)
    else:
        order = rng.permutation(n).astype(np.int64)
    if world > 1:
        m = order.shape[0]
        usable = (m // (world * batch_size)) * world * batch_size or (m // world) * world
        order = order[:usable][rank::world]
    for lo in range(0, order.shape[0], batch_size):
        chunk = order[lo : lo + batch_size]
        if shuffle and chunk.shape[0] < 2:
            break  # a 1-sample batch breaks BatchNorm and in-batch contrast
        yield chunk


def symbol_codes(split: Split) -> I64 | None:
    """(M,) integer code of each window's symbol, or None for a single-symbol split."""
    if split.symbol is None:
        return None
    _, codes = np.unique(split.symbol, return_inverse=True)
    return codes.astype(np.int64)
