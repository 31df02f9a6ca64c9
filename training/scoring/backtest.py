"""Fee-aware backtest of a direction signal with next-bar execution.

The signal for bar t (known at its close) sets the position held over bar t+1: long when
p > upper, short when p < lower, flat otherwise. The position earns bar t+1's return and
every unit of position change pays the taker fee (a flip long→short pays twice). The caller
passes `next_ret[t]` = return of bar t+1, so nothing here can look ahead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

TAKER_FEE_BPS = 5.5
BARS_PER_YEAR_5M = 365 * 24 * 12


@dataclass(frozen=True)
class BacktestResult:
    """Summary of one backtest; returns are fractions, costs in basis points."""

    n_bars: int
    total_return: float
    gross_return: float
    sharpe: float
    max_drawdown: float
    hit_rate: float
    exposure: float
    turnover: float
    n_round_trips: float
    fees_paid: float
    break_even_bps_round_trip: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON / tables."""
        return {k: float(v) for k, v in asdict(self).items()}


def positions(p: ArrayLike, upper: float = 0.5, lower: float = 0.5) -> NDArray[np.float64]:
    """+1 / −1 / 0 per bar from up-probabilities and the two thresholds."""
    pa = np.asarray(p, dtype=np.float64).ravel()
    if lower > upper:
        raise ValueError("lower threshold must not exceed upper")
    return np.where(pa > upper, 1.0, np.where(pa < lower, -1.0, 0.0))


def backtest(
    p: ArrayLike,
    next_ret: ArrayLike,
    upper: float = 0.5,
    lower: float = 0.5,
    fee_bps: float = TAKER_FEE_BPS,
    bars_per_year: float = BARS_PER_YEAR_5M,
) -> tuple[BacktestResult, NDArray[np.float64]]:
    """Run the signal over `next_ret` (N,), return the summary and the net equity curve (N,).

    The account starts flat and the last position is closed (and charged) after the last bar.
    Break-even cost: the round-trip cost (2 × per-side fee) at which the net P&L (sum of
    simple bar returns) would be zero; negative when the gross edge itself is negative.
    """
    pos = positions(p, upper, lower)
    r = np.asarray(next_ret, dtype=np.float64).ravel()
    if r.shape != pos.shape:
        raise ValueError("p and next_ret differ in length")
    fee = fee_bps / 1e4
    change = np.abs(np.diff(np.concatenate([[0.0], pos])))  # (N,) trades entering bar t+1
    closing = abs(pos[-1]) if pos.size else 0.0
    gross = pos * r
    net = gross - fee * change
    if pos.size:
        net[-1] -= fee * closing
    turnover_units = float(change.sum() + closing)
    equity: NDArray[np.float64] = np.cumprod(1.0 + net).astype(np.float64)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    drawdown = float(np.max(1.0 - equity / peak)) if equity.size else 0.0
    held = pos != 0
    std = float(np.std(net))
    sharpe = float(np.mean(net) / std * np.sqrt(bars_per_year)) if std > 0 else 0.0
    gross_sum = float(gross.sum())
    be = 2.0 * gross_sum / turnover_units * 1e4 if turnover_units > 0 else 0.0
    result = BacktestResult(
        n_bars=int(pos.size),
        total_return=float(equity[-1] - 1.0) if equity.size else 0.0,
        gross_return=float(np.prod(1.0 + gross) - 1.0),
        sharpe=sharpe,
        max_drawdown=drawdown,
        hit_rate=float(np.mean(gross[held] > 0)) if held.any() else 0.0,
        exposure=float(held.mean()) if pos.size else 0.0,
        turnover=turnover_units / max(1, pos.size),
        n_round_trips=turnover_units / 2.0,
        fees_paid=fee * turnover_units,
        break_even_bps_round_trip=be,
    )
    return result, equity


def next_bar_returns(close: ArrayLike) -> NDArray[np.float64]:
    """Close-to-close return of the bar after each bar: r[t] = c[t+1]/c[t] − 1 (NaN last)."""
    c = np.asarray(close, dtype=np.float64).ravel()
    out = np.full(c.shape, np.nan)
    out[:-1] = c[1:] / c[:-1] - 1.0
    return out
