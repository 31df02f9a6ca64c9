"""Paper trading (DESIGN section 8): pure account arithmetic plus the task that trades.

The account holds USDT. Each live signal sets a per-symbol target position of +1, −1 or 0
times ``notional_usdt`` (converted to base units at the candle close); while the target's
sign is unchanged the position is held, not resized. An order fills at the close moved
adversely by ``slippage_bps`` (buys higher, sells lower) and pays ``fee_bps`` of the filled
notional. A flip (long → short) is one fill of the combined size: its closing part realises
PnL against the average entry, its opening part starts a new entry at the fill price.

Equity = initial + realised − fees + Σ qty·(mark − avg_entry). :class:`PaperAccount` only
computes; :class:`PaperTrader` journals every fill to SQLite (off the event loop, committed)
before the account applies it, so a fill that counts survives kill -9.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from service.journal import AccountTerms, DuplicateFill, Fill, Journal
from service.metrics import Metrics
from service.signals import TARGET, Signal

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000  # signals waiting for the trader (backfill delivers a few hundred)
SETTLE_S = 0.005  # wait after a signal before journaling: a burst of closes is scored first
EQUITY_POINTS = 1000  # equity curve points kept in memory (the dashboard's chart)
BUY = "buy"
SELL = "sell"


@dataclass(slots=True)
class Position:
    """Signed base-unit quantity, its average entry price and the latest mark (close)."""

    qty: float = 0.0
    avg_entry: float = 0.0
    mark: float = math.nan

    @property
    def unrealized(self) -> float:
        """qty · (mark − avg_entry); 0 when flat or not yet marked."""
        if self.qty == 0.0 or math.isnan(self.mark):
            return 0.0
        return self.qty * (self.mark - self.avg_entry)


def fill_price(close: float, side: str, slippage_bps: float) -> float:
    """The close moved against the order: up for a buy, down for a sell."""
    slip = slippage_bps / 10_000.0
    return close * (1.0 + slip) if side == BUY else close * (1.0 - slip)


@dataclass
class PaperAccount:
    """The account's state; :meth:`plan` computes a fill, :meth:`apply` books it."""

    terms: AccountTerms
    positions: dict[str, Position] = field(default_factory=dict)
    realized_pnl: float = 0.0
    fees: float = 0.0
    trades: int = 0
    peak_equity: float = math.nan
    curve: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=EQUITY_POINTS))

    def __post_init__(self) -> None:
        if math.isnan(self.peak_equity):
            self.peak_equity = self.terms.initial_usdt

    def position(self, symbol: str) -> Position:
        """The symbol's position (created flat on first use)."""
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position()
        return pos

    @property
    def unrealized_pnl(self) -> float:
        """Σ over symbols of qty · (mark − avg_entry)."""
        return math.fsum(p.unrealized for p in self.positions.values())

    @property
    def equity(self) -> float:
        """initial + realised − fees + unrealised, in USDT."""
        return self.terms.initial_usdt + self.realized_pnl - self.fees + self.unrealized_pnl

    @property
    def drawdown(self) -> float:
        """Fraction below the peak equity seen (0 at a new high)."""
        peak = self.peak_equity
        return max(0.0, (peak - self.equity) / peak) if peak > 0 else 0.0

    def plan(self, signal: Signal, ts_ms: int) -> Fill | None:
        """The fill that moves ``signal.symbol`` to its target, or None if already there."""
        target_sign = TARGET[signal.action]
        pos = self.position(signal.symbol)
        current = pos.qty
        current_sign = (current > 0.0) - (current < 0.0)
        if target_sign == current_sign:
            return None  # hold: the position is not resized while the side is unchanged
        close = signal.close
        target = target_sign * self.terms.notional_usdt / close  # base units
        delta = target - current
        side = BUY if delta > 0.0 else SELL
        qty = abs(delta)
        price = fill_price(close, side, self.terms.slippage_bps)
        fee = qty * price * self.terms.fee_bps / 10_000.0
        realized = 0.0
        if current_sign != 0:  # the order closes (part of) the current position
            closed = min(abs(current), qty)
            realized = closed * (price - pos.avg_entry) * current_sign
        avg_after = price if target_sign != 0 else 0.0
        return Fill(
            symbol=signal.symbol,
            candle_start=signal.candle_start,
            side=side,
            qty=qty,
            price=price,
            close=close,
            fee=fee,
            realized_pnl=realized,
            position_after=target,
            avg_entry_after=avg_after,
            probability_up=signal.probability_up,
            action=signal.action,
            ts_ms=ts_ms,
        )

    def apply(self, fill: Fill) -> None:
        """Book a journaled fill: position, average entry, realised PnL, fees, mark."""
        pos = self.position(fill.symbol)
        pos.qty = fill.position_after
        pos.avg_entry = fill.avg_entry_after
        pos.mark = fill.close
        self.realized_pnl += fill.realized_pnl
        self.fees += fill.fee
        self.trades += 1
        self.record(fill.candle_start)

    def mark(self, symbol: str, close: float) -> None:
        """Revalue ``symbol`` at a new close."""
        self.position(symbol).mark = close

    def record(self, at_ms: int) -> None:
        """Append an equity point (exchange time of the candle) and track the peak."""
        eq = self.equity
        self.peak_equity = max(self.peak_equity, eq)
        self.curve.append((at_ms, eq))

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view for the API (off the hot path)."""
        return {
            "currency": "USDT",
            "account": self.terms.epoch,
            "initial_usdt": self.terms.initial_usdt,
            "notional_usdt": self.terms.notional_usdt,
            "fee_bps": self.terms.fee_bps,
            "slippage_bps": self.terms.slippage_bps,
            "equity": self.equity,
            "realized_pnl": self.realized_pnl,
            "unrealized_pnl": self.unrealized_pnl,
            "fees": self.fees,
            "net_pnl": self.equity - self.terms.initial_usdt,
            "drawdown": self.drawdown,
            "trades": self.trades,
            "positions": [
                {
                    "symbol": s,
                    "qty": p.qty,
                    "side": "long" if p.qty > 0 else "short" if p.qty < 0 else "flat",
                    "avg_entry": p.avg_entry,
                    "mark": None if math.isnan(p.mark) else p.mark,
                    "unrealized_pnl": p.unrealized,
                }
                for s, p in sorted(self.positions.items())
            ],
            "equity_curve": [[t, e] for t, e in self.curve],
        }


def replay_fills(terms: AccountTerms, fills: list[Fill]) -> PaperAccount:
    """Rebuild an account from its journal (restart): every fill applied in order."""
    account = PaperAccount(terms)
    for f in fills:
        account.apply(f)
    return account


class PaperTrader:
    """Consumes signals, journals fills (committed) and books them; one task, one writer."""

    def __init__(
        self,
        journal: Journal,
        account: PaperAccount,
        metrics: Metrics,
        *,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.journal = journal
        self.settle_s = settle_s
        self.account = account
        self.metrics = metrics
        self.queue: asyncio.Queue[Signal] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.lock = asyncio.Lock()  # serialises trading with reset
        self.duplicates = 0
        self.dropped = 0
        self.errors = 0
        self.update_gauges()

    def offer(self, signal: Signal) -> None:
        """Hand a signal over without waiting (the pipeline's sink); drop it if backed up."""
        try:
            self.queue.put_nowait(signal)
        except asyncio.QueueFull:
            self.dropped += 1  # the trader is stuck (journal?); health shows the errors
            if self.dropped == 1:
                log.error("paper trader backed up: dropping signals")

    async def run(self) -> None:
        """Trade each queued live signal; mark-to-market on backfilled ones.

        A failed journal write books nothing (the next signal plans again); it is logged,
        never fatal, so one bad disk moment does not stop paper trading for good.
        """
        while True:
            signal = await self.queue.get()
            if self.settle_s > 0:
                # Candles of several symbols close together: let the pipeline score the whole
                # burst before the journal thread starts (its Python side competes for the GIL
                # with the hot path). Fills are at the candle's close, so the wait costs nothing.
                await asyncio.sleep(self.settle_s)
            while True:
                await self._trade(signal)
                if self.queue.empty():
                    break
                signal = self.queue.get_nowait()

    async def _trade(self, signal: Signal) -> None:
        async with self.lock:
            try:
                await self.on_signal(signal)
            except Exception:
                self.errors += 1
                log.exception("paper: signal %s %s not traded", signal.symbol, signal.candle_start)

    async def on_signal(self, signal: Signal) -> Fill | None:
        """Mark, plan, journal, then book. Returns the booked fill, if any."""
        account = self.account
        account.mark(signal.symbol, signal.close)
        fill = account.plan(signal, int(time.time() * 1000)) if signal.live else None
        if fill is not None:
            try:
                await self.journal.call(self.journal.insert_fill, account.terms.epoch, fill)
            except DuplicateFill:
                # (symbol, candle) already in the journal: a candle never trades twice.
                self.duplicates += 1
                fill = None
            else:
                account.apply(fill)
                self.metrics.paper_trades.labels(symbol=fill.symbol, side=fill.side).inc()
        if signal.live and fill is None:
            account.record(signal.candle_start)
        self.update_gauges()
        return fill

    async def reset(self, initial_usdt: float, notional_usdt: float) -> PaperAccount:
        """Open a fresh account (new journal epoch); the old fills stay in the journal."""
        async with self.lock:
            terms = await self.journal.call(
                self.journal.new_account,
                initial_usdt,
                notional_usdt,
                self.account.terms.fee_bps,
                self.account.terms.slippage_bps,
            )
            self.account = PaperAccount(terms)
            self.metrics.paper_position.clear()
            self.update_gauges()
            log.info("paper account reset: account %d, %.2f USDT", terms.epoch, initial_usdt)
            return self.account

    def update_gauges(self) -> None:
        """Equity, PnL, fees, drawdown and positions into the Prometheus gauges."""
        a, m = self.account, self.metrics
        m.paper_equity_usdt.set(a.equity)
        m.paper_realized_pnl_usdt.set(a.realized_pnl)
        m.paper_unrealized_pnl_usdt.set(a.unrealized_pnl)
        m.paper_fees_usdt.set(a.fees)
        m.paper_drawdown_ratio.set(a.drawdown)
        for s, p in a.positions.items():
            m.paper_position.labels(symbol=s).set(p.qty)
