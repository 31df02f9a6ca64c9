"""Klines → feature windows → chronological train/validation/test splits.

The features, windows and labels come from ``service.features`` (one implementation for
training and the live service). Splits are chronological with a purge gap of one window at
each boundary: a window ending at bar e is labelled by bar e + 1, so the next split starts
with the window ending at e + T + 1 at the earliest — no bar (input or label) is shared.
Normalisation statistics come from the training split only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service import features as fx
from service.kline_io import load_bundled, load_klines
from service.klines import KlineTable, interval_ms
from training.config import DataConfig

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """One split: inputs, labels and where each window sits in time."""

    x: F32  # (M, F, T) raw features, channels first
    y: I64  # (M,) 1 = next candle closes above its open
    pos: I64  # (M,) bar position of the window's last bar (gaps counted): adjacency for CRD
    start_ms: I64  # (M,) candle start of the window's last bar

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    mean: F64  # (F,) training-split feature means
    std: F64  # (F,) training-split feature standard deviations
    symbol: str
    interval: str
    window: int

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

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


def load_table(cfg: DataConfig) -> KlineTable:
    """The configured klines: a CSV path, else the bundled file; optionally the last N bars."""
    table = (
        load_klines(Path(cfg.path), drop_last_unconfirmed=True)
        if cfg.path
        else load_bundled(cfg.symbol, cfg.interval)
    )
    if cfg.last_bars > 0:
        table = table.slice(max(0, len(table) - cfg.last_bars), None)
    return table


def features_with_gaps(table: KlineTable) -> tuple[F64, F64, I64]:
    """Features (N, F), labels (N,) and bar positions (N,), computed per contiguous run.

    A gap restarts the look-backs (features before it never mix with bars after it) and the
    bar before a gap gets no label (its next candle is missing).
    """
    step = interval_ms(table.interval)
    pos = ((table.start - table.start[0]) // step).astype(np.int64)  # (N,)
    feats = np.full((len(table), fx.N_FEATURES), np.nan)
    labels = np.full(len(table), np.nan)
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(table)], strict=True):
        seg = table.slice(int(lo), int(hi))
        feats[lo:hi] = fx.batch_features(seg.open, seg.high, seg.low, seg.close, seg.volume)
        labels[lo:hi] = fx.make_labels(seg.open, seg.close)
    return feats, labels, pos


def split_indices(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Boundaries (train_end, val_end) of a chronological split of n windows."""
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    return n - n_val - n_test, n - n_test


def purge_mask(pos: I64, boundary_pos: int, purge: int) -> npt.NDArray[np.bool_]:
    """Windows whose last bar lies more than ``purge`` bars after ``boundary_pos`` survive."""
    return pos > boundary_pos + purge


def build_dataset(table: KlineTable, cfg: DataConfig) -> Dataset:
    """Feature windows of a kline table, split chronologically with purge gaps."""
    window = cfg.window
    purge = window if cfg.purge < 0 else cfg.purge
    feats, labels, pos = features_with_gaps(table)
    ends = fx.window_ends(feats, labels, window)  # (M,) row indices, chronological
    # A window must not span a gap: its T rows need consecutive bar positions.
    contiguous = pos[ends] - pos[ends - (window - 1)] == window - 1
    ends = ends[contiguous]
    if ends.shape[0] < 10:
        raise ValueError(f"only {ends.shape[0]} usable windows in {table.symbol}: too little data")
    train_end, val_end = split_indices(ends.shape[0], cfg.val_fraction, cfg.test_fraction)
    tr, va, te = ends[:train_end], ends[train_end:val_end], ends[val_end:]
    va = va[purge_mask(pos[va], int(pos[tr[-1]]), purge)]
    te = te[purge_mask(pos[te], int(pos[va[-1]] if va.size else pos[tr[-1]]), purge)]

    # Statistics over the feature rows the training windows see (no later bar leaks in).
    rows = np.unique((tr[:, None] - np.arange(window)[None, :]).ravel())
    mean = feats[rows].mean(axis=0)
    std = feats[rows].std(axis=0)

    def make(idx: I64) -> Split:
        return Split(
            x=fx.make_windows(feats, idx, window),
            y=labels[idx].astype(np.int64),
            pos=pos[idx],
            start_ms=table.start[idx].astype(np.int64),
        )

    return Dataset(make(tr), make(va), make(te), mean, std, table.symbol, table.interval, window)


def load_dataset(cfg: DataConfig) -> Dataset:
    """:func:`load_table` then :func:`build_dataset`."""
    return build_dataset(load_table(cfg), cfg)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world: int = 1,
) -> Iterator[I64]:
    """Index batches for one epoch; reproducible from (seed, epoch).

    Under DDP every rank draws the same permutation and takes every world-th element, after
    truncating to a multiple of world × batch_size so all ranks run the same number of steps.
    """
    order = (
        np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    ).astype(np.int64)
    if world > 1:
        usable = (n // (world * batch_size)) * world * batch_size or (n // world) * world
        order = order[:usable][rank::world]
    for lo in range(0, order.shape[0], batch_size):
        chunk = order[lo : lo + batch_size]
        if shuffle and chunk.shape[0] < 2:
            break  # a 1-sample batch breaks BatchNorm and in-batch contrast
        yield chunk
