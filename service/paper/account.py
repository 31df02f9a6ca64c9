"""Paper trading (DESIGN section 8): pure account arithmetic plus the task that trades.

The account holds USDT. On each live signal a policy (:mod:`service.paper.policy`, shared with
the backtest) sets the symbol's target: a signed fraction of ``notional_usdt``, converted to
base units at the candle close; while the policy keeps the target the position is held, not
resized. An order fills at the close moved adversely by ``slippage_bps`` (buys higher, sells
lower) and pays ``fee_bps`` of the filled notional. An order that reduces a position realises
PnL against the average entry; one that adds averages the entry; a flip (long → short) is one
fill of the combined size whose opening part starts a new entry at the fill price.

Equity = initial + realised − fees + Σ qty·(mark − avg_entry). The Σ is kept incrementally,
so a signal costs O(1) however many symbols the account holds (issue 30): marking, planning
and booking touch only the signal's symbol, and the gauges are set for that symbol only.
:class:`PaperAccount` only computes (``on_close`` → journal → ``book``: the backtest calls the
same two methods without the journal); :class:`PaperTrader` journals every fill to SQLite
(off the event loop, committed) before the account applies it, so a fill that counts survives
kill -9.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.metrics import Metrics
from service.paper import policy as pol
from service.paper.journal import (
    AccountTerms,
    CurveState,
    DuplicateFill,
    EquityPoint,
    Fill,
    Journal,
)
from service.paper.policy import PolicyConfig
from service.pipeline.signals import Signal

log = logging.getLogger(__name__)
# Terms an account may be opened with (a reset outside them is a 422; DESIGN section 10):
# amounts from 1 USDT to 1e12 USDT keep every fill, fee and PnL of any real price far from
# float under- and overflow; fees and slippage are at most 10 %.
MIN_USDT = 1.0
MAX_USDT = 1e12
MAX_BPS = 1_000.0
# A journaled fill's notional, fee or realised PnL beyond this (a thousand times the largest
# account) cannot come from this service: replay skips it, so the running sums stay finite.
MAX_FILL_USDT = MAX_USDT * 1e3
QUEUE_SIZE = 10_000  # signals waiting for the trader (backfill delivers a few hundred)
SETTLE_S = 0.005  # wait after a signal before journaling: a burst of closes is scored first
EQUITY_POINTS = 1000  # equity curve points kept in memory (the dashboard's chart)
ROUND_TRIPS_KEPT = 200  # closed round trips kept in memory (the dashboard's table)
FRACTION_DIGITS = 6  # a journaled fill's target fraction is recovered to this precision
BUY = "buy"
SELL = "sell"


class Scored(Protocol):
    """What the account reads from a signal (:class:`service.pipeline.signals.Signal` has it;
    the backtest builds its own)."""

    @property
    def symbol(self) -> str: ...
    @property
    def interval(self) -> str: ...
    @property
    def candle_start(self) -> int: ...
    @property
    def close(self) -> float: ...
    @property
    def probability_up(self) -> float: ...
    @property
    def probability_high_vol(self) -> float: ...
    @property
    def live(self) -> bool: ...


_UNIT_MS = {"D": 86_400_000, "W": 7 * 86_400_000, "M": 30 * 86_400_000}


def step_ms(interval: str) -> int:
    """Bybit's interval spelling in ms ("5" → 300000, "D" → 86400000; a month as 30 days)."""
    return int(interval) * 60_000 if interval.isdigit() else _UNIT_MS.get(interval, 60_000)


@dataclass(slots=True)
class Position:
    """One symbol: signed base-unit quantity, average entry, latest mark (close), the policy's
    target fraction in force and since when, the symbol's own realised PnL and fees, the
    recent absolute bar returns (the policy's E|r|), and the open round trip."""

    qty: float = 0.0
    avg_entry: float = 0.0
    mark: float = math.nan
    frac: float = 0.0
    since: int = 0  # candle_start of the fill that set ``frac``
    realized: float = 0.0
    fees: float = 0.0
    fills: int = 0
    unreal: float = 0.0  # cached qty · (mark − avg_entry), kept in step with the account's sum
    first_close: float = math.nan  # first live close: the buy-and-hold reference
    bh: float = 0.0  # notional · (mark / first_close − 1)
    returns: deque[float] = field(default_factory=lambda: deque(maxlen=pol.RETURN_WINDOW))
    trip: dict[str, Any] | None = None

    @property
    def unrealized(self) -> float:
        """qty · (mark − avg_entry); 0 when flat or not yet marked."""
        if self.qty == 0.0 or math.isnan(self.mark):
            return 0.0
        return self.qty * (self.mark - self.avg_entry)

    @property
    def mean_abs_return(self) -> float:
        """Mean |close/previous close − 1| over the last RETURN_WINDOW bars (NaN before)."""
        r = self.returns
        return math.fsum(r) / len(r) if len(r) == r.maxlen else math.nan


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


def _sign(x: float) -> int:
    return (x > 0.0) - (x < 0.0)


def fill_price(close: float, side: str, slippage_bps: float) -> float:
    """The close moved against the order: up for a buy, down for a sell."""
    slip = slippage_bps / 10_000.0
    return close * (1.0 + slip) if side == BUY else close * (1.0 - slip)


def side_label(frac: float) -> str:
    """``long``, ``short`` or ``flat`` for a target fraction (the journal's ``action``)."""
    return "long" if frac > 0 else "short" if frac < 0 else "flat"


@dataclass
class PaperAccount:
    """The account's state; :meth:`on_close` marks and plans, :meth:`book` books.

    Every figure the API and the gauges read is kept incrementally: unrealised PnL (Σ over
    positions), gross exposure, buy-and-hold PnL, per-symbol realised PnL and fees, so a
    signal costs O(1) in the number of symbols."""

    terms: AccountTerms
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    positions: dict[str, Position] = field(default_factory=dict)
    realized_pnl: float = 0.0
    fees: float = 0.0
    trades: int = 0  # fills
    round_trips: int = 0  # closed round trips
    peak_equity: float = math.nan
    curve: deque[tuple[int, float, float]] = field(
        default_factory=lambda: deque(maxlen=EQUITY_POINTS)
    )
    trips: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ROUND_TRIPS_KEPT))
    _unreal: float = 0.0
    _exposure: float = 0.0  # Σ |qty · mark|
    _bh: float = 0.0  # Σ notional · (mark / first live close − 1)
    _open: int = 0  # positions not flat
    first_live_ms: int | None = None  # the first and last traded candle (the period shown)
    last_live_ms: int | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.peak_equity):
            self.peak_equity = self.terms.initial_usdt
        self.policy = pol.check(self.policy)

    @property
    def round_trip_cost(self) -> float:
        """A round trip's fees and slippage as a fraction of its notional."""
        return 2.0 * (self.terms.fee_bps + self.terms.slippage_bps) / 10_000.0

    def position(self, symbol: str) -> Position:
        """The symbol's position (created flat on first use)."""
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position()
        return pos

    @property
    def unrealized_pnl(self) -> float:
        """Σ over symbols of qty · (mark − avg_entry), kept incrementally."""
        return self._unreal

    @property
    def exposure(self) -> float:
        """Σ |qty · mark| over the symbols: the gross notional held, USDT."""
        return self._exposure

    @property
    def equity(self) -> float:
        """initial + realised − fees + unrealised, in USDT."""
        return self.terms.initial_usdt + self.realized_pnl - self.fees + self._unreal

    @property
    def buy_and_hold_equity(self) -> float:
        """initial + what ``notional_usdt`` of every traded symbol, bought at its first live
        close and held, would have made (before fees): the line to beat."""
        return self.terms.initial_usdt + self._bh

    @property
    def drawdown(self) -> float:
        """Fraction below the peak equity seen (0 at a new high)."""
        peak = self.peak_equity
        return max(0.0, (peak - self.equity) / peak) if peak > 0 else 0.0

    def _revalue(self, pos: Position, qty: float, avg: float, mark: float) -> None:
        """Set a position's qty, entry and mark, moving the account's sums by the change."""
        old_unreal, old_expo = pos.unreal, abs(pos.qty * pos.mark) if pos.qty else 0.0
        self._open += (qty != 0.0) - (pos.qty != 0.0)
        pos.qty, pos.avg_entry, pos.mark = qty, avg, mark
        pos.unreal = pos.unrealized
        if self._open == 0:  # every position flat: the sums are exactly 0, not rounding dust
            self._unreal = self._exposure = 0.0
            return
        self._unreal += pos.unreal - old_unreal
        self._exposure += (abs(qty * mark) if qty else 0.0) - old_expo

    def on_close(self, signal: Scored, ts_ms: int) -> Fill | None:
        """Mark the symbol at the close; for a live signal, the fill its policy wants (or
        None). Book the fill with :meth:`book` once it is journaled."""
        self.mark(signal.symbol, signal.close, live=signal.live)
        return self.plan(signal, ts_ms) if signal.live else None

    def book(self, signal: Scored, fill: Fill | None) -> None:
        """Apply a journaled fill (if any) and, for a live signal, the candle's equity point."""
        if fill is not None:
            self.apply(fill)
        if signal.live:
            self.record(signal.candle_start)

    def plan(self, signal: Scored, ts_ms: int) -> Fill | None:
        """The fill that moves ``signal.symbol`` to its policy's target, or None (hold).

        Raises :class:`PaperError` for a fill the account could not hold: a price that is not
        finite and positive, an amount that is not, or one that would leave any figure of
        the account non-finite (the account never holds a non-finite value)."""
        pos = self.position(signal.symbol)
        held = (signal.candle_start - pos.since) // step_ms(signal.interval) if pos.fills else 0
        frac = pol.target(
            self.policy,
            signal.probability_up,
            signal.probability_high_vol,
            pos.frac,
            int(held),
            pos.mean_abs_return,
            self.round_trip_cost,
        )
        if frac == pos.frac:
            return None  # hold: the position is not resized while the target stands
        close = signal.close
        if not (math.isfinite(close) and close > 0.0):
            raise PaperError("invalid_amount", f"{signal.symbol}: close {close} is not a price")
        current = pos.qty
        target = frac * self.terms.notional_usdt / close  # base units
        delta = target - current
        side = BUY if delta > 0.0 else SELL
        qty = abs(delta)
        price = fill_price(close, side, self.terms.slippage_bps)
        fee = qty * price * self.terms.fee_bps / 10_000.0
        realized = 0.0
        cur_sign, new_sign = _sign(current), _sign(target)
        if cur_sign != 0 and _sign(delta) != cur_sign:  # the order closes (part of) it
            closed = min(abs(current), qty)
            realized = closed * (price - pos.avg_entry) * cur_sign
        if new_sign == 0:
            avg_after = 0.0
        elif new_sign != cur_sign:  # opened or flipped: a new entry
            avg_after = price
        elif abs(target) > abs(current):  # added to: the entry averages
            avg_after = (abs(current) * pos.avg_entry + qty * price) / abs(target)
        else:  # reduced: the entry stands
            avg_after = pos.avg_entry
        if not (_finite(target, qty, price, fee, realized, avg_after) and qty > 0 and price > 0):
            raise PaperError(
                "invalid_amount",
                f"{signal.symbol}: a fill of {qty} at {price} (fee {fee}) cannot be booked",
            )
        # the equity after booking it, marked at the close: must stay finite too
        after = (
            self.terms.initial_usdt
            + (self.realized_pnl + realized)
            - (self.fees + fee)
            + (self._unreal - pos.unreal)
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
            action=side_label(frac),
            ts_ms=ts_ms,
        )

    def apply(self, fill: Fill) -> None:
        """Book a journaled fill: position, average entry, realised PnL, fees, mark, the
        target in force and the round trip it opens, extends or closes."""
        pos = self.position(fill.symbol)
        before = pos.qty
        self._revalue(pos, fill.position_after, fill.avg_entry_after, fill.close)
        notional = self.terms.notional_usdt
        pos.frac = round(fill.position_after * fill.close / notional, FRACTION_DIGITS) + 0.0
        pos.since = fill.candle_start
        pos.fills += 1
        pos.realized += fill.realized_pnl
        pos.fees += fill.fee
        self.realized_pnl += fill.realized_pnl
        self.fees += fill.fee
        self.trades += 1
        self._trip(pos, fill, before)

    def _trip(self, pos: Position, fill: Fill, before: float) -> None:
        """Round trips: flat → in opens one, back to flat closes it, a flip does both (its
        fee split by quantity between the closing and the opening part)."""
        after = fill.position_after
        closing_qty = abs(before) if _sign(after) != _sign(before) else 0.0
        close_share = min(1.0, closing_qty / fill.qty) if fill.qty > 0 else 0.0
        trip = pos.trip
        if trip is not None:
            trip["realized"] += fill.realized_pnl
            trip["fees"] += fill.fee * (close_share if closing_qty else 1.0)
            if closing_qty:
                trip.update(exit_ms=fill.candle_start, exit_price=fill.price)
                trip["net_pnl"] = trip["realized"] - trip["fees"]
                trip["return"] = trip["net_pnl"] / trip["entry_notional"]
                self.trips.append(trip)
                self.round_trips += 1
                pos.trip = None
        if after != 0.0 and pos.trip is None:
            pos.trip = {
                "symbol": fill.symbol,
                "side": "long" if after > 0 else "short",
                "entry_ms": fill.candle_start,
                "entry_price": fill.price,
                "entry_notional": abs(after) * fill.price,
                "realized": 0.0,
                "fees": fill.fee * (1.0 - close_share),
            }

    def mark(self, symbol: str, close: float, *, live: bool = True) -> None:
        """Revalue ``symbol`` at a new close and remember the bar's return; :class:`PaperError`
        (and the old mark kept) for a close that is not a price or overflows the equity."""
        pos = self.position(symbol)
        if not (math.isfinite(close) and close > 0.0):
            raise PaperError("invalid_amount", f"{symbol}: close {close} is not a price")
        old = pos.mark
        old_unreal, old_expo, old_bh, old_pos_bh = pos.unreal, self._exposure, self._bh, pos.bh
        self._revalue(pos, pos.qty, pos.avg_entry, close)
        if math.isnan(pos.first_close) and live:
            pos.first_close = close
        if not math.isnan(pos.first_close):  # buy and hold follows every close once begun
            bh = self.terms.notional_usdt * (close / pos.first_close - 1.0)
            self._bh += bh - pos.bh
            pos.bh = bh
        if not math.isfinite(self.equity) or not math.isfinite(self._bh):
            self._unreal += old_unreal - pos.unreal
            pos.mark, pos.unreal, self._exposure, self._bh = old, old_unreal, old_expo, old_bh
            pos.bh = old_pos_bh
            raise PaperError("invalid_amount", f"{symbol}: marking at {close} overflows equity")
        if not math.isnan(old) and old > 0.0:
            pos.returns.append(abs(close / old - 1.0))

    def record(self, at_ms: int) -> None:
        """The equity point of candle ``at_ms`` (exchange time): one per candle, the last
        symbol of a burst overwriting the earlier ones; tracks the peak."""
        eq = self.equity
        self.peak_equity = max(self.peak_equity, eq)
        if self.first_live_ms is None:
            self.first_live_ms = at_ms
        self.last_live_ms = at_ms
        point = (at_ms, eq, self.buy_and_hold_equity)
        if self.curve and self.curve[-1][0] == at_ms:
            self.curve[-1] = point
        else:
            self.curve.append(point)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view for the API (off the hot path: O(symbols) here is fine)."""
        return {
            "currency": "USDT",
            "account": self.terms.epoch,
            "policy": self.policy.name,
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
            "fills": self.trades,
            "round_trips": self.round_trips,
            "exposure_usdt": self.exposure,
            "buy_and_hold_equity": self.buy_and_hold_equity,
            "positions": [
                {
                    "symbol": s,
                    "qty": p.qty,
                    "side": side_label(p.qty),
                    "target": p.frac,
                    "avg_entry": p.avg_entry,
                    "mark": None if math.isnan(p.mark) else p.mark,
                    "unrealized_pnl": p.unreal,
                    "realized_pnl": p.realized,
                    "fees": p.fees,
                    "net_pnl": p.realized - p.fees + p.unreal,
                    "fills": p.fills,
                }
                for s, p in sorted(self.positions.items())
            ],
            "round_trip_list": [_trip_out(t) for t in reversed(self.trips)],
            "equity_curve": [[t, e] for t, e, _ in self.curve],
            "buy_and_hold_curve": [[t, b] for t, _, b in self.curve],
        }


def _trip_out(t: dict[str, Any]) -> dict[str, Any]:
    return {
        k: t[k]
        for k in (
            "symbol",
            "side",
            "entry_ms",
            "entry_price",
            "exit_ms",
            "exit_price",
            "realized",
            "fees",
            "net_pnl",
            "return",
        )
    }


def replay_fills(
    terms: AccountTerms,
    fills: list[Fill],
    curve: CurveState | None = None,
    policy: PolicyConfig | None = None,
) -> PaperAccount:
    """Rebuild an account from its journal (restart): every fill applied in order, then the
    journaled equity curve (one point per candle), peak and marks (so the curve and drawdown
    continue unchanged).

    A journaled fill that is not finite (written before fills were checked), or whose
    amounts no account of these terms can reach, is skipped and logged, and so is one that
    would take the running sums (cash, fees, realised PnL, equity) out of the finite: each fill
    alone can be finite while two of them sum to infinity (hand-edited fills of 1e308), so an
    old or edited journal cannot poison the account again."""
    account = PaperAccount(terms, policy or PolicyConfig())
    for f in fills:
        if not _finite(f.qty, f.price, f.close, f.fee, f.realized_pnl, f.position_after):
            log.error(
                "paper: journaled fill %s %d is not finite; skipped", f.symbol, f.candle_start
            )
            continue
        if max(abs(f.qty * f.price), abs(f.fee), abs(f.realized_pnl)) > MAX_FILL_USDT:
            log.error(
                "paper: journaled fill %s %d is beyond any account's amounts; skipped",
                f.symbol,
                f.candle_start,
            )
            continue
        account.apply(f)
        if not math.isfinite(account.equity):  # unreachable with the bound above; a guard
            raise ValueError(
                f"journaled fill {f.symbol} {f.candle_start} takes the account's equity out "
                "of the finite"
            )
    if curve is not None and curve.points:
        finite = [p for p in curve.points if math.isfinite(p.equity)]
        account.curve.clear()
        for sym, first in curve.firsts.items():
            if math.isfinite(first) and first > 0:
                account.position(sym).first_close = first
        for p in finite:  # several symbols journal a point per candle: keep the last
            pos = account.position(p.symbol)
            if math.isfinite(p.close) and p.close > 0 and not math.isnan(pos.first_close):
                bh = terms.notional_usdt * (p.close / pos.first_close - 1.0)
                account._bh += bh - pos.bh
                pos.bh = bh
            point = (p.candle_start, p.equity, account.buy_and_hold_equity)
            if account.first_live_ms is None:
                account.first_live_ms = p.candle_start
            account.last_live_ms = p.candle_start
            if account.curve and account.curve[-1][0] == p.candle_start:
                account.curve[-1] = point
            else:
                account.curve.append(point)
        if curve.peak is not None and math.isfinite(curve.peak):
            account.peak_equity = max(account.peak_equity, curve.peak)
        for symbol, close in curve.marks.items():
            if symbol in account.positions and math.isfinite(close) and close > 0:
                pos = account.positions[symbol]
                account._revalue(pos, pos.qty, pos.avg_entry, close)
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
        # equity points booked but not yet journaled, with their account's epoch: a burst's
        # points go in one transaction (one fsync), not one each (measured: at 500 symbols
        # the per-point commits were a quarter of the service's CPU in bench.scale)
        self._points: list[tuple[int, EquityPoint]] = []
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
            async with self.lock:  # the queue is drained: the burst's points, committed once
                try:
                    await self.flush_points()
                except Exception as exc:
                    self._error("journal", f"equity points not journaled: {exc}", exc)

    async def _trade(self, signal: Signal) -> None:
        async with self.lock:
            try:
                fill = await self._book(signal)
            except Exception as exc:
                reason = exc.reason if isinstance(exc, PaperError) else "journal"
                what = f"signal {signal.symbol} {signal.candle_start} not traded"
                self._error(reason, f"{what}: {type(exc).__name__}: {exc}", exc)
            else:  # a booked fill proves the account works again (a hold proves nothing)
                if fill is not None and self.failing is not None:
                    log.info("paper: trading again after %d failed signals", self.failures)
                    self.failing, self.failures = None, 0

    def _error(self, reason: str, message: str, exc: BaseException) -> None:
        """A booking or journal write that raised: counted, then as :meth:`_failed`."""
        self.errors += 1
        self.metrics.paper_errors.labels(reason).inc()
        self._failed(reason, message, exc)

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
        """Mark, plan, journal, then book (O(1) in the number of symbols), its equity point
        committed before it returns. Returns the booked fill, if any."""
        fill = await self._book(signal)
        await self.flush_points()
        return fill

    async def flush_points(self) -> None:
        """Journal the equity points booked since the last flush, in one transaction. A
        failure loses those points of the curve (logged by the caller), never a fill."""
        if not self._points:
            return
        points, self._points = self._points, []
        await self.journal.call(self.journal.insert_points, points)

    async def _book(self, signal: Signal) -> Fill | None:
        """:meth:`on_signal` without the flush: the fill is committed before it is booked,
        the equity point is queued for :meth:`flush_points`."""
        account = self.account
        fill = account.on_close(signal, int(time.time() * 1000))
        if fill is not None:
            try:
                await self.journal.call(self.journal.insert_fill, account.terms.epoch, fill)
            except DuplicateFill:
                # (symbol, candle) already in the journal: a candle never trades twice.
                self.duplicates += 1
                fill = None
            else:
                self.metrics.paper_trades.labels(symbol=fill.symbol, side=fill.side).inc()
        account.book(signal, fill)
        if signal.live:
            point = EquityPoint(signal.symbol, signal.candle_start, signal.close, account.equity)
            self._points.append((account.terms.epoch, point))
        self.update_gauges(signal.symbol)
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
            self.account = PaperAccount(terms, self.account.policy)
            self.failing, self.failures = None, 0
            self.metrics.paper_position.clear()
            self.update_gauges()
            log.info("paper account reset: account %d, %.2f USDT", terms.epoch, initial_usdt)
            return self.account

    def update_gauges(self, symbol: str | None = None) -> None:
        """Equity, PnL, fees, drawdown, and the position of ``symbol`` (the one that moved:
        O(1) per signal), or of every symbol when None (start, reset, reload)."""
        a, m = self.account, self.metrics
        m.paper_equity_usdt.set(a.equity)
        m.paper_realized_pnl_usdt.set(a.realized_pnl)
        m.paper_unrealized_pnl_usdt.set(a.unrealized_pnl)
        m.paper_fees_usdt.set(a.fees)
        m.paper_drawdown_ratio.set(a.drawdown)
        if symbol is not None:
            pos = a.positions.get(symbol)
            if pos is not None:
                m.paper_position.labels(symbol=symbol).set(pos.qty)
            return
        for s, p in a.positions.items():
            m.paper_position.labels(symbol=s).set(p.qty)
