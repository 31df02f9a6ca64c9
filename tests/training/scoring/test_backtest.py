"""Fee-aware next-bar backtest against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from training.scoring.backtest import backtest, next_bar_returns, positions


def test_positions_thresholds() -> None:
    p = np.array([0.7, 0.52, 0.5, 0.45, 0.2])
    assert positions(p, 0.55, 0.45).tolist() == [1.0, 0.0, 0.0, 0.0, -1.0]
    assert positions(p).tolist() == [1.0, 1.0, 0.0, -1.0, -1.0]
    with pytest.raises(ValueError):
        positions(p, 0.4, 0.6)


def test_backtest_by_hand() -> None:
    p = np.array([0.9, 0.9, 0.1, 0.5])  # long, long, short, flat
    r = np.array([0.01, -0.02, -0.03, 0.05])
    res, equity = backtest(p, r, 0.6, 0.4, fee_bps=10.0)
    fee = 0.001
    # trades: enter long (1), hold, flip (2), close (1) → 4 units
    net = np.array([0.01 - fee, -0.02, 0.03 - 2 * fee, -fee])
    assert equity == pytest.approx(np.cumprod(1 + net))
    assert res.total_return == pytest.approx(np.prod(1 + net) - 1)
    assert res.turnover == pytest.approx(4 / 4)
    assert res.n_round_trips == pytest.approx(2.0)
    assert res.fees_paid == pytest.approx(4 * fee)
    assert res.hit_rate == pytest.approx(2 / 3)
    assert res.exposure == pytest.approx(0.75)
    # gross simple P&L 0.02 over 4 units → break-even 2 · 0.02 / 4 = 100 bps per round trip
    assert res.break_even_bps_round_trip == pytest.approx(100.0)
    peak = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    assert res.max_drawdown == pytest.approx(np.max(1 - equity / peak))


def test_fees_turn_a_small_edge_into_a_loss() -> None:
    rng = np.random.default_rng(0)
    r = 0.001 * rng.standard_normal(5000)
    p = np.where(r > 0, 0.51, 0.49)  # a perfect but flip-happy oracle
    res, _ = backtest(p, r, fee_bps=5.5)
    assert res.gross_return > 0
    assert res.break_even_bps_round_trip > 11.0
    noisy = rng.random(5000)
    res2, _ = backtest(noisy, r, fee_bps=5.5)
    assert res2.total_return < 0


def test_next_bar_returns() -> None:
    out = next_bar_returns([100.0, 110.0, 99.0])
    assert out[:2] == pytest.approx([0.1, -0.1])
    assert np.isnan(out[2])
