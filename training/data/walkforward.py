"""Chronological walk-forward folds with purge and embargo.

Samples are identified by the start time (ms) of the bar their window ends on. A sample at
bar t sees bars t−T+1..t and its label looks `horizon` bars ahead. Before each test fold
starting at bar t0 the training set drops:
- the purge: samples whose label bars reach into the test period (t + horizon ≥ t0);
- the embargo: one more input window (T bars), so no training window overlaps the
  bars that the first test windows are built from.
Training is expanding (everything before the test fold, minus purge and embargo); the last
`val_frac` of it, again separated by purge + embargo, is the validation set for early
stopping. Nothing after a test fold ever trains that fold's model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class Fold:
    """Row indices (into the time-sorted sample array) of one walk-forward fold."""

    index: int
    train: NDArray[np.int64]
    val: NDArray[np.int64]
    test: NDArray[np.int64]

    def span(self, times_ms: NDArray[np.int64], part: str) -> tuple[int, int]:
        """First and last bar start (ms) of `part` ("train", "val" or "test")."""
        idx: NDArray[np.int64] = getattr(self, part)
        return int(times_ms[idx[0]]), int(times_ms[idx[-1]])


def _gap_ms(interval_ms: int, horizon: int, embargo: int) -> int:
    # a training sample at t is allowed only if t + horizon + embargo < t0 (in bars)
    return (horizon + embargo) * interval_ms


def walk_forward_folds(
    times_ms: ArrayLike,
    interval_ms: int,
    n_folds: int = 3,
    horizon: int = 1,
    embargo: int = 32,
    test_frac: float = 0.15,
    val_frac: float = 0.15,
) -> list[Fold]:
    """Split time-sorted samples into `n_folds` consecutive test blocks at the end of history.

    Each test block holds `test_frac` of all samples; the k-th fold trains on everything
    before its test block (purge + embargo removed) and validates on the last `val_frac` of
    that training period. The first fold therefore trains on 1 − n_folds·test_frac of history.
    """
    t = np.asarray(times_ms, dtype=np.int64).ravel()
    if t.size == 0 or np.any(np.diff(t) <= 0):
        raise ValueError("walk-forward needs strictly increasing sample times")
    if n_folds < 1 or n_folds * test_frac >= 0.9:
        raise ValueError("n_folds · test_frac must leave at least 10 % of history to train on")
    n = t.size
    gap = _gap_ms(interval_ms, horizon, embargo)
    test_len = int(n * test_frac)
    first_test = n - n_folds * test_len
    folds: list[Fold] = []
    for k in range(n_folds):
        lo = first_test + k * test_len
        hi = n if k == n_folds - 1 else lo + test_len
        test = np.arange(lo, hi, dtype=np.int64)
        t0 = t[lo]
        pre = np.flatnonzero(t + gap < t0).astype(np.int64)  # purge + embargo before test
        n_val = int(pre.size * val_frac)
        val = pre[pre.size - n_val :]
        if val.size == 0:
            raise ValueError("fold too small for a validation split")
        v0 = t[val[0]]
        train = pre[t[pre] + gap < v0]  # purge + embargo before validation too
        if train.size == 0:
            raise ValueError("fold too small for a training split")
        folds.append(Fold(k, train, val, test))
    return folds


def check_no_leakage(
    fold: Fold, times_ms: ArrayLike, interval_ms: int, horizon: int, embargo: int
) -> None:
    """Raise AssertionError if any train/val sample comes too close to the next part."""
    t = np.asarray(times_ms, dtype=np.int64)
    gap = _gap_ms(interval_ms, horizon, embargo)
    if t[fold.train].max() + gap >= t[fold.val].min():
        raise AssertionError(f"fold {fold.index}: train reaches into validation")
    if t[fold.val].max() + gap >= t[fold.test].min():
        raise AssertionError(f"fold {fold.index}: validation reaches into test")
