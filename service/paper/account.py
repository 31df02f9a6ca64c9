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

from service.metrics import Metrics
from service.paper.journal import (
    AccountTerms,
    CurveState,
    DuplicateFill,
    EquityPoint,
    Fill,
    Journal,
)
from service.pipeline.signals import TARGET, Signal

log = logging.getLogger(__name__)
# Terms an account may be opened with (a reset outside them is a 422; DESIGN section 10):
# amounts from 1 USDT to 1e12 USDT keep every fill, fee and PnL of any real price far from
# float under- and overflow; fees and slippage are at most 10 %.
MIN_USDT = 1.0
MAX_USDT = 1e12
MAX_BPS = 1_000.0
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


class PaperError(ValueError):
    """A fill or mark the account refuses; ``reason`` is a ``paper_errors_total`` label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_terms(initial_usdt: float, notional_usdt: float, fee_bps: float, slip_bps: float) -> None:
    """Raise ValueError unless an account with these terms can trade (see ``MIN_USDT``)."""
    for name, x in (("initial_usdt", initial_usdt), ("notional_usdt", notional_usdt)):
        if not MIN_USDT <= x <= MAX_USDT:  # also False for NaN
            raise ValueError(f"{name} must be within [{MIN_USDT:g}, {MAX_USDT:g}] USDT, got {x}")
    for name, x in (("fee_bps", fee_bps), ("slippage_bps", slip_bps)):
        if not 0.0 <= x <= MAX_BPS:
            raise ValueError(f"{name} must be within [0, {MAX_BPS:g}], got {x}")


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


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
        """The fill that moves ``signal.symbol`` to its target, or None if already there.

        Raises :class:`PaperError` for a fill the account could not hold: a price that is not
        finite and positive, an amount that is not, or one that would leave any figure of
        the account non-finite (the account never holds a non-finite value)."""
        target_sign = TARGET[signal.action]
        pos = self.position(signal.symbol)
        current = pos.qty
        current_sign = (current > 0.0) - (current < 0.0)
        if target_sign == current_sign:
            return None  # hold: the position is not resized while the side is unchanged
        close = signal.close
        if not (math.isfinite(close) and close > 0.0):
            raise PaperError("invalid_amount", f"{signal.symbol}: close {close} is not a price")
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
        if not (_finite(target, qty, price, fee, realized) and qty > 0.0 and price > 0.0):
            raise PaperError(
                "invalid_amount",
                f"{signal.symbol}: a fill of {qty} at {price} (fee {fee}) cannot be booked",
            )
        # the equity after booking it, marked at the close: must stay finite too
        others = math.fsum(p.unrealized for s, p in self.positions.items() if s != signal.symbol)
        after = (
            self.terms.initial_usdt
            + (self.realized_pnl + realized)
            - (self.fees + fee)
            + others
            + target * (close - avg_after)
        )
        if not math.isfinite(after):
            raise PaperError("invalid_amount", f"{signal.symbol}: the fill would overflow equity")
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
        """Revalue ``symbol`` at a new close; :class:`PaperError` (and the old mark kept) for
        a close that is not a price or would make the equity non-finite."""
        pos = self.position(symbol)
        if not (math.isfinite(close) and close > 0.0):
            raise PaperError("invalid_amount", f"{symbol}: close {close} is not a price")
        old, pos.mark = pos.mark, close
        if not math.isfinite(self.equity):
            pos.mark = old
            raise PaperError("invalid_amount", f"{symbol}: marking at {close} overflows equity")

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


def replay_fills(
    terms: AccountTerms, fills: list[Fill], curve: CurveState | None = None
) -> PaperAccount:
    """Rebuild an account from its journal (restart): every fill applied in order, then the
    journaled equity curve, peak and marks (so the curve and drawdown continue unchanged).

    A journaled fill that is not finite (written before fills were checked) is skipped and
    logged, so an old poisoned journal cannot poison the account again."""
    account = PaperAccount(terms)
    for f in fills:
        if not _finite(f.qty, f.price, f.close, f.fee, f.realized_pnl, f.position_after):
            log.error(
                "paper: journaled fill %s %d is not finite; skipped", f.symbol, f.candle_start
            )
            continue
        account.apply(f)
        if not math.isfinite(account.equity):  # pragma: no cover - only an old journal
            log.error("paper: journaled fill %s %d overflows equity", f.symbol, f.candle_start)
    if curve is not None and curve.points:
        finite = [p for p in curve.points if math.isfinite(p.equity)]
        account.curve.clear()
        account.curve.extend((p.candle_start, p.equity) for p in finite)
        if curve.peak is not None and math.isfinite(curve.peak):
            account.peak_equity = max(account.peak_equity, curve.peak)
        for symbol, close in curve.marks.items():
            if symbol in account.positions and math.isfinite(close) and close > 0:
                account.positions[symbol].mark = close
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
        self.failing: str | None = None  # why a signal was not booked since the last fill
        self.failures = 0  # signals not booked since the last booked fill
        self.update_gauges()

    def offer(self, signal: Signal) -> None:
        """Hand a signal over without waiting (the pipeline's sink); drop it if backed up."""
        try:
            self.queue.put_nowait(signal)
        except asyncio.QueueFull:
            self.dropped += 1  # the trader is stuck (journal?); health shows the errors
            self.metrics.paper_errors.labels("queue_full").inc()
            self._failed("queue_full", "paper trader backed up: dropping signals")

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
                fill = await self.on_signal(signal)
            except Exception as exc:
                self.errors += 1
                reason = exc.reason if isinstance(exc, PaperError) else "journal"
                self.metrics.paper_errors.labels(reason).inc()
                what = f"signal {signal.symbol} {signal.candle_start} not traded"
                self._failed(reason, f"{what}: {type(exc).__name__}: {exc}", exc)
            else:  # a booked fill proves the account works again (a hold proves nothing)
                if fill is not None and self.failing is not None:
                    log.info("paper: trading again after %d failed signals", self.failures)
                    self.failing, self.failures = None, 0

    def _failed(self, reason: str, message: str, exc: BaseException | None = None) -> None:
        """One signal not booked: the first since the last fill is logged in full, then one
        line in a hundred (a journal that keeps failing does not flood the log)."""
        self.failures += 1
        self.failing = f"{reason}: {message}"[:300]
        if self.failures == 1:
            log.error("paper: %s", message, exc_info=exc)
        elif self.failures % 100 == 0:
            log.error(
                "paper: %d signals not booked since the last fill; latest: %s",
                self.failures,
                message,
            )

    def problems(self) -> list[str]:
        """Why the account is not trading, for /health (empty while it books)."""
        if self.failing is None:
            return []
        return [
            f"paper account failing: {self.failures} signal(s) in a row not booked ({self.failing})"
        ]

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
        if signal.live:
            if fill is None:
                account.record(signal.candle_start)
            at_ms, equity = account.curve[-1]
            point = EquityPoint(signal.symbol, at_ms, signal.close, equity)
            await self.journal.call(self.journal.insert_point, account.terms.epoch, point)
        self.update_gauges()
        return fill

    async def reset(self, initial_usdt: float, notional_usdt: float) -> PaperAccount:
        """Open a fresh account (new journal epoch); the old fills stay in the journal.
        ValueError (nothing changed) for terms an account cannot trade with."""
        terms_now = self.account.terms
        check_terms(initial_usdt, notional_usdt, terms_now.fee_bps, terms_now.slippage_bps)
        async with self.lock:
            terms = await self.journal.call(
                self.journal.new_account,
                initial_usdt,
                notional_usdt,
                self.account.terms.fee_bps,
                self.account.terms.slippage_bps,
            )
            self.account = PaperAccount(terms)
            self.failing, self.failures = None, 0
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
