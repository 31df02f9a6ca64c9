"""Transfer helpers: channel distance/selection and timeframe alignment."""

from __future__ import annotations

import numpy as np

from training.data.transfer import aligned_rows, channel_distance, select_channels


def test_channel_distance_zero_for_same_statistics_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(0, 1, (500, 4, 8))
    tgt = src.copy()
    tgt[:, 1] += 2.0  # mean shift of 2σ
    tgt[:, 2] *= np.e  # std ratio e → |ln| = 1
    d = channel_distance(src, tgt)
    assert d[0] == 0.0 and d[3] == 0.0
    assert d[1] > 1.9
    assert (
        abs(d[2] - (np.abs(src[:, 2].mean() * (1 - np.e)) / np.sqrt((1 + np.e**2) / 2) + 1.0)) < 0.1
    )
    assert select_channels(d, 0.5).tolist() == [0, 3]
    assert select_channels(d, 0.01).tolist() == [0]


def test_channel_distance_on_vectors() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (300, 3))
    assert channel_distance(a, a).tolist() == [0.0, 0.0, 0.0]


def test_aligned_rows_end_at_the_same_instant() -> None:
    minute = 60_000
    five = 5 * minute
    t1 = np.arange(0, 60) * minute  # 1-minute window-end bar starts
    t5 = np.array([0, five, 2 * five, 20 * five])
    out = aligned_rows(t5, five, t1, minute)
    assert out.tolist() == [4, 9, 14, -1]
    # bar starting at 5 min closes at 10 min; 1-minute bar 9 (starts 9 min) closes then
    assert t1[out[1]] + minute == t5[1] + five
