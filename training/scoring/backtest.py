"""The backtest through the served path (DESIGN section 11): one implementation, the service's.

Every closed kline goes through the objects the service runs: ``IncrementalFeatures`` and
``FeatureWindow`` (``service.features``), the ONNX ``Predictor`` (``service.model.predictor``:
the same session settings, I/O binding and one row at a time), and the paper account
(``service.paper.account``: its policy, fill price, fee and PnL arithmetic). Bars before the
period warm the features and the account's E|r| (marked, never traded), as the service's REST
backfill does; bars inside it are "live" and traded. So a period the service consumed from a
replay gives the same fills here, to the cent (tests/training/scoring/test_served_backtest.py).

Figures (RESULT of DESIGN section 11) are fractions of the starting equity: the portfolio
starts with ``initial_usdt``, each symbol's sleeve with ``notional_usdt``. ``net_return`` is
the liquidation value at the last close (an open position pays its closing fee and slippage),
``gross_return`` the same before fees (slippage stays in the prices), Sharpe is annualised
from per-bar returns of the marked equity (PnL over the starting equity, so a sleeve that
loses more than it had still has one) with the factor sqrt(bars per year) (105,120 bars
a year at 5 minutes), ``hit_rate`` the share of closed round trips that made money after fees,
``exposure`` the mean gross position over the sleeve's notional, ``turnover`` the traded
notional over the starting equity. Buy and hold buys the notional at the first traded close
(paying fee and slippage) and sells at the last; flat never trades.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.features import FeatureWindow, IncrementalFeatures
from service.market.klines import KlineTable, interval_ms
from service.model.predictor import Predictor
from service.paper.account import PaperAccount, fill_price
from service.paper.journal import AccountTerms, Fill
from service.paper.policy import PolicyConfig

MINUTES_PER_YEAR = 365 * 24 * 60


class Close(NamedTuple):
    """One scored closed candle, as the paper account reads a signal."""

    symbol: str
    interval: str
    candle_start: int
    close: float
    probability_up: float
    probability_high_vol: float
    live: bool


def score(predictor: Predictor, table: KlineTable, first_ms: int, last_ms: int) -> list[Close]:
    """Every bar of ``table`` up to ``last_ms`` through the service's features and student,
    one row at a time; bars from ``first_ms`` on are live (traded)."""
    feats, window = IncrementalFeatures(), FeatureWindow()
    out: list[Close] = []
    for i in range(len(table)):
        start = int(table.start[i])
        if start > last_ms:
            break
        close = float(table.close[i])
        vec = feats.update(
            float(table.open[i]),
            float(table.high[i]),
            float(table.low[i]),
            close,
            float(table.volume[i]),
        )
        if vec is None:
            continue
        window.push(vec)
        if not window.full:
            continue
        p = predictor.predict(window.view())
        pv = predictor.high_vol
        if math.isfinite(p) and math.isfinite(pv):
            out.append(Close(table.symbol, table.interval, start, close, p, pv, start >= first_ms))
    return out


@dataclass
class Run:
    """One policy over the merged streams: the fills, and per-bar marked values."""

    account: PaperAccount
    fills: list[Fill] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # live candle starts
    equity: list[float] = field(default_factory=list)  # portfolio, marked
    sleeves: dict[str, list[float]] = field(default_factory=dict)  # per symbol, marked
    gross: dict[str, list[float]] = field(default_factory=dict)  # |position| · mark per bar
    closes: dict[str, list[float]] = field(default_factory=dict)  # marks at live candles
    traded: dict[str, float] = field(default_factory=dict)  # notional filled per symbol


def merge(streams: Iterable[Sequence[Close]]) -> list[Close]:
    """One stream in candle order (symbols of one candle in the given order), as the
    service's trader receives a burst."""
    rows = [(c.candle_start, k, c) for k, s in enumerate(streams) for c in s]
    rows.sort(key=lambda r: (r[0], r[1]))
    return [c for _, _, c in rows]


def run(stream: Sequence[Close], policy: PolicyConfig, terms: AccountTerms) -> Run:
    """The paper account's own on_close → book over the stream (no journal)."""
    acc = PaperAccount(terms, policy)
    r = Run(acc)
    symbols = sorted({c.symbol for c in stream})
    for s in symbols:
        r.sleeves[s], r.gross[s], r.closes[s] = [], [], []
    for i, c in enumerate(stream):
        fill = acc.on_close(c, 0)
        acc.book(c, fill)
        if fill is not None:
            r.fills.append(fill)
            r.traded[c.symbol] = r.traded.get(c.symbol, 0.0) + fill.qty * fill.price
        end_of_candle = i + 1 == len(stream) or stream[i + 1].candle_start != c.candle_start
        if c.live and end_of_candle:
            r.times.append(c.candle_start)
            r.equity.append(acc.equity)
            for s in symbols:
                p = acc.positions.get(s)
                if p is None or math.isnan(p.mark):
                    continue  # not scored yet: the sleeve starts at its first close
                r.sleeves[s].append(terms.notional_usdt + p.realized - p.fees + p.unreal)
                r.gross[s].append(abs(p.qty * p.mark) if p.qty else 0.0)
                r.closes[s].append(p.mark)
    return r


def _liquidation_cost(qty: float, close: float, terms: AccountTerms) -> float:
    """Fee and slippage of closing ``qty`` at ``close``."""
    if qty == 0.0:
        return 0.0
    side = "sell" if qty > 0 else "buy"
    price = fill_price(close, side, terms.slippage_bps)
    return abs(qty) * (abs(price - close) + price * terms.fee_bps / 10_000.0)


def sharpe_interval(
    rets: NDArray[np.float64], bars_per_year: float, n_boot: int = 1000, seed: int = 0
) -> list[float]:
    """95 % day-block bootstrap interval of the annualised Sharpe: whole days of bar returns
    resampled with replacement (returns cluster within a day)."""
    per_day = max(1, round(bars_per_year / 365))
    days = [rets[i : i + per_day] for i in range(0, rets.size, per_day)]
    if len(days) < 3:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        r = np.concatenate([days[k] for k in rng.integers(0, len(days), len(days))])
        std = float(np.std(r))
        out.append(float(np.mean(r) / std * math.sqrt(bars_per_year)) if std > 0 else 0.0)
    lo, hi = np.percentile(out, [2.5, 97.5])
    return [float(lo), float(hi)]


def curve_stats(
    values: Sequence[float], base: float, bars_per_year: float, interval: bool = False
) -> dict[str, Any]:
    """Sharpe (annualised from per-bar returns on the starting equity ``base``), max drawdown,
    and with ``interval`` the Sharpe's 95 % day-block bootstrap interval, of a value series."""
    v: NDArray[np.float64] = np.asarray([base, *values], dtype=np.float64)
    if v.size < 3:
        out: dict[str, Any] = {"sharpe": 0.0, "max_drawdown": 0.0}
        return {**out, "sharpe_95": [math.nan, math.nan]} if interval else out
    rets = np.diff(v) / base  # per-bar PnL on the starting equity: defined below zero too
    std = float(np.std(rets))
    sharpe = float(np.mean(rets) / std * math.sqrt(bars_per_year)) if std > 0 else 0.0
    peak = np.maximum.accumulate(v)
    out = {"sharpe": sharpe, "max_drawdown": float(np.max(1.0 - v / peak))}
    if interval:
        out["sharpe_95"] = sharpe_interval(rets, bars_per_year) if std > 0 else [0.0, 0.0]
    return out


def buy_and_hold(
    closes: Sequence[float], notional: float, base: float, terms: AccountTerms, bpy: float
) -> dict[str, float]:
    """Long ``notional`` from the first close (fee and slippage in and out)."""
    if not closes:
        return {"net_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0}
    entry = fill_price(closes[0], "buy", terms.slippage_bps)
    qty = notional / closes[0]
    fee_in = qty * entry * terms.fee_bps / 10_000.0
    values = [base - fee_in + qty * (c - entry) for c in closes]
    final = values[-1] - _liquidation_cost(qty, closes[-1], terms)
    return {"net_return": (final - base) / base, **curve_stats(values, base, bpy)}


def _trips(fills: Sequence[Fill]) -> list[float]:
    """Net PnL of each closed round trip (flat → in → flat, a flip closes one)."""
    out: list[float] = []
    open_pnl: dict[str, float] = {}
    pos: dict[str, float] = {}
    for f in fills:
        before = pos.get(f.symbol, 0.0)
        after = f.position_after
        closing = before != 0.0 and (after == 0.0 or (after > 0) != (before > 0))
        share = min(1.0, abs(before) / f.qty) if closing else 0.0
        if before != 0.0:
            open_pnl[f.symbol] = open_pnl.get(f.symbol, 0.0) + f.realized_pnl
            open_pnl[f.symbol] -= f.fee * (share if closing else 1.0)
        if closing:
            out.append(open_pnl.pop(f.symbol))
        if after != 0.0 and f.symbol not in open_pnl:
            open_pnl[f.symbol] = -f.fee * (1.0 - share)
        pos[f.symbol] = after
    return out


def result(
    r: Run,
    fills: Sequence[Fill],
    values: Sequence[float],
    gross_values: Sequence[float],
    base: float,
    terms: AccountTerms,
    bpy: float,
    closes: dict[str, list[float]],
) -> dict[str, Any]:
    """DESIGN section 11's RESULT for one sleeve (or the portfolio)."""
    fees = math.fsum(f.fee for f in fills)
    days = (r.times[-1] - r.times[0]) / 86_400_000 + 1 / (bpy / 365) if r.times else 0.0
    liquidation = 0.0
    for s in closes:
        p = r.account.positions.get(s)
        if p is not None and closes[s]:
            liquidation += _liquidation_cost(p.qty, closes[s][-1], terms)
    final = (values[-1] if values else base) - liquidation
    trips = _trips(fills)
    n = len(closes)
    bh_values: list[float] = []
    if closes and all(closes.values()):
        sleeves = [
            buy_and_hold(c, terms.notional_usdt, terms.notional_usdt, terms, bpy)
            for c in closes.values()
        ]
        bh_net = math.fsum(b["net_return"] for b in sleeves) * terms.notional_usdt / base
        length = min(len(c) for c in closes.values())
        for k in range(length):  # the portfolio of sleeves, marked per bar
            v = base
            for c in closes.values():
                qty = terms.notional_usdt / c[0]
                entry = fill_price(c[0], "buy", terms.slippage_bps)
                v += qty * (c[k] - entry) - qty * entry * terms.fee_bps / 10_000.0
            bh_values.append(v)
        bh = {"net_return": bh_net, **curve_stats(bh_values, base, bpy, interval=True)}
    else:
        bh = {"net_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0}
    held = float(np.mean(gross_values)) / (terms.notional_usdt * max(n, 1)) if gross_values else 0.0
    return {
        "net_return": (final - base) / base,
        "gross_return": (final + fees - base) / base,
        "fees": fees / base,
        "round_trips": len(trips),
        "fills": len(fills),
        "hit_rate": (sum(1 for t in trips if t > 0) / len(trips)) if trips else 0.0,
        **curve_stats(values, base, bpy, interval=True),
        "fees_per_30d": fees / base * 30.0 / days if days > 0 else 0.0,
        "exposure": held,
        "turnover": math.fsum(f.qty * f.price for f in fills) / base,
        "buy_and_hold": bh,
        "flat": {"net_return": 0.0},
    }


def summarise(r: Run, terms: AccountTerms, interval: str) -> dict[str, Any]:
    """Per symbol and portfolio RESULTs of one run."""
    bpy = MINUTES_PER_YEAR * 60_000 / interval_ms(interval)
    per_symbol: dict[str, Any] = {}
    for s in sorted(r.sleeves):
        fills = [f for f in r.fills if f.symbol == s]
        per_symbol[s] = result(
            r,
            fills,
            r.sleeves[s],
            r.gross[s],
            terms.notional_usdt,
            terms,
            bpy,
            {s: r.closes[s]},
        )
    gross_total = [math.fsum(g[k] for g in r.gross.values()) for k in range(len(r.times))]
    portfolio = result(r, r.fills, r.equity, gross_total, terms.initial_usdt, terms, bpy, r.closes)
    return {"symbols": per_symbol, "portfolio": portfolio}
