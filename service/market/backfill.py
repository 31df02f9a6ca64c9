"""The feed's REST side: warm-up history, and per-symbol sequencing of closed candles.

:class:`CandleSequencer` (pure) is the single place that decides, for one symbol, whether
a closed candle is the next one to deliver, a duplicate, or the far side of a gap, and which
range must be fetched by REST because its confirm never arrived. Every decision is made on
exchange time (candle ``start`` and the frame's ``ts``), never on the local clock, so an
accelerated replay of old data behaves like the live exchange. :class:`Backfiller` does the I/O: it
fetches what the sequencer asks for and puts it on the feed's queue with ``source="rest"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from service.market.bybit import short
from service.market.klines import Kline, KlineEvent, interval_ms
from service.market.rest import Backoff, ConfigError, RestError, RestForbidden, RestKlines
from service.metrics import Metrics

__all__ = ["Backfiller", "Backoff", "CandleSequencer", "FillRange", "Verdict"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FillRange:
    """Closed candles to fetch by REST: starts ``first``..``last`` inclusive."""

    first: int
    last: int


class Verdict(Enum):
    """What to do with a closed candle from the websocket."""

    NEXT = "next"  # deliver it now
    DUPLICATE = "duplicate"  # already delivered (duplicate confirm, replayed old data)
    GAP = "gap"  # fetch the missing range first, then deliver it


class CandleSequencer:
    """Ordering state and clock of one symbol: ``last_start`` is the newest closed candle
    delivered, ``clock`` the newest exchange time the symbol has shown (a frame's ``ts`` that
    was admitted, or REST's ``time``).

    ``grace_ms`` is how long (exchange time) after a candle's end its confirm may still
    arrive before the candle is fetched by REST instead. ``history_bars`` bounds every fill
    range (a gap larger than the history kept is fetched as that history). ``ahead_intervals``
    is the tolerance of :meth:`admit`: one frame moves the clock by at most that much.
    ``max_jump`` and ``early_ms`` are the websocket-confirm checks of :meth:`check_confirm`.
    """

    def __init__(
        self,
        symbol: str,
        interval: str,
        *,
        grace_ms: int = 10_000,
        history_bars: int = 1000,
        ahead_intervals: int = 3,
        max_jump: float = 0.2,
        early_ms: int = 1_000,
    ) -> None:
        self.symbol = symbol
        self.interval = interval
        self.step = interval_ms(interval)
        self.grace_ms = grace_ms
        self.history_bars = max(1, history_bars)
        self.ahead_ms = ahead_intervals * self.step
        self.max_jump = max_jump
        self.early_ms = early_ms
        self.last_start: int | None = None
        self.last_close: float | None = None
        self.clock: int | None = None
        self._retry_at_ts = 0
        self._open: Kline | None = None  # the latest update of the open candle, if seen

    # the clock ----------------------------------------------------------------------------
    def observe_time(self, exchange_ts: int) -> None:
        """The exchange's own clock from REST (``time``): moves the clock forward."""
        if self.clock is None or exchange_ts > self.clock:
            self.clock = exchange_ts

    def admit(self, ts: int, klines: Sequence[Kline]) -> str | None:
        """None if a frame with this ``ts`` and these klines may be used (the clock moves to
        ``ts``), else the reason it is refused (the clock stays where it was).

        Refused: a ``ts`` or a candle start more than ``ahead_intervals`` intervals ahead of
        the clock. Before the symbol has shown any time (no REST answer, no frame), a frame is
        admitted only if it describes its own present: its newest candle around its ``ts``.
        """
        newest = max(k.start for k in klines)
        base = self.clock
        if self.last_start is not None:  # a delivered candle has ended: time is past it
            ended = self.last_start + self.step
            base = ended if base is None else max(base, ended)
        if base is None:
            if not newest - self.ahead_ms <= ts <= newest + self.step + self.ahead_ms:
                return "future"
            self.clock = ts
            return None
        limit = base + self.ahead_ms
        if ts > limit or newest > limit:
            return "future"
        self.clock = max(base, ts)
        return None

    # websocket candles --------------------------------------------------------------------
    def _plausible(self, k: Kline, ref: float | None) -> bool:
        if ref is None:
            return True
        lo, hi = ref / (1.0 + self.max_jump), ref * (1.0 + self.max_jump)
        return lo <= k.close <= hi and lo <= k.open <= hi

    def _reference(self, start: int) -> float | None:
        """The price a kline of candle ``start`` is held against: the candle's own latest
        update if one was seen, else the last delivered close."""
        seen = self._open
        return seen.close if seen is not None and seen.start == start else self.last_close

    def note_interim(self, k: Kline) -> str | None:
        """Record an interim update of the open candle; the reason if it is implausible."""
        if not self._plausible(k, self._reference(k.start)):
            return "implausible_price"
        if self.last_start is None or k.start > self.last_start:
            self._open = k
        return None

    def check_confirm(self, k: Kline, ts: int) -> str | None:
        """None if a websocket confirm can be trusted, else why not. A refused confirm is not
        lost: its candle stays due and is fetched by REST (the exchange's history) after
        ``grace_ms``, so a false alarm costs latency, never a wrong candle.

        - ``early_confirm``: stamped more than ``early_ms`` before its window ends (a candle
          cannot close before its end on the exchange's clock);
        - ``inconsistent_confirm``: it contradicts the candle's own latest update, whose
          open is fixed and whose high, volume only grow and low only falls (each push
          carries the candle's full state);
        - ``implausible_price``: open or close more than ``max_jump`` away from the candle's
          own latest update (or, if none was seen, from the previous close).
        """
        if ts < k.start + self.step - self.early_ms:
            return "early_confirm"
        seen = self._open
        if (
            seen is not None
            and seen.start == k.start
            and not (
                k.open == seen.open
                and k.high >= seen.high
                and k.low <= seen.low
                and k.volume >= seen.volume
            )
        ):
            return "inconsistent_confirm"
        if not self._plausible(k, self._reference(k.start)):
            return "implausible_price"
        return None

    # sequencing ---------------------------------------------------------------------------
    def classify(self, kline: Kline) -> Verdict:
        """Where a closed candle stands relative to what was delivered."""
        last = self.last_start
        if last is None or kline.start == last + self.step:
            return Verdict.NEXT
        if kline.start <= last:
            return Verdict.DUPLICATE
        return Verdict.GAP

    def _bounded(self, first: int, last: int) -> FillRange:
        return FillRange(max(first, last - (self.history_bars - 1) * self.step), last)

    def gap_before(self, kline: Kline) -> FillRange:
        """The missing closed candles between the last delivered one and ``kline``, at most
        ``history_bars`` of them (the newest)."""
        assert self.last_start is not None
        return self._bounded(self.last_start + self.step, kline.start - self.step)

    def is_live(self, kline: Kline) -> bool:
        """True for an interim update of a candle newer than the last closed one."""
        return self.last_start is None or kline.start > self.last_start

    def accept(self, kline: Kline) -> None:
        """Record ``kline`` as delivered (call only for NEXT candles or take() results)."""
        self.last_start = kline.start
        self.last_close = kline.close

    def take(self, klines: Iterable[Kline], *, before: int | None = None) -> list[Kline]:
        """REST candles newer than the last delivered (and older than ``before``), in order.

        Advances ``last_start``; duplicates inside ``klines`` are dropped. A candle that REST
        does not have is not waited for: the exchange's history is the truth.
        """
        out: list[Kline] = []
        for k in sorted(klines, key=lambda k: k.start):
            if before is not None and k.start >= before:
                continue
            if self.last_start is None or k.start > self.last_start:
                out.append(k)
                self.accept(k)
        return out

    def due_fill(self, exchange_ts: int) -> FillRange | None:
        """Candles whose window ended more than ``grace_ms`` ago with no confirm seen, at most
        ``history_bars`` of them (the newest).

        Covers both a missing confirm and the bars lost while disconnected: the first frame
        after a reconnect carries an exchange ``ts`` far past the last delivered candle.
        """
        if self.last_start is None or exchange_ts < self._retry_at_ts:
            return None
        first = self.last_start + self.step
        n = (exchange_ts - self.grace_ms - first - self.step) // self.step  # extra closed bars
        if n < 0:
            return None
        return self._bounded(first, first + n * self.step)

    def defer(self, exchange_ts: int, delay_ms: int) -> None:
        """Do not retry a fill before ``exchange_ts + delay_ms`` (REST empty or failing)."""
        self._retry_at_ts = exchange_ts + delay_ms


class Backfiller:
    """Fetches closed candles by REST and delivers them in order onto ``out``.

    ``stats`` is the feed's counter dict (shared, so one snapshot shows both sides);
    ``backoff`` paces the warm-up's retries (its own: the websocket's reconnects do not
    share it).
    """

    def __init__(
        self,
        *,
        rest: RestKlines,
        interval: str,
        out: asyncio.Queue[KlineEvent],
        metrics: Metrics,
        backoff: Backoff,
        stats: dict[str, int],
        fill_retry_ms: int = 5_000,
        forbidden_backoff_s: float = 600.0,
    ) -> None:
        self.rest = rest
        self.interval = interval
        self.step = interval_ms(interval)
        self.out = out
        self.metrics = metrics
        self.backoff = backoff
        self.stats = stats
        self.fill_retry_ms = fill_retry_ms
        self.forbidden_backoff_s = forbidden_backoff_s
        self.problems: dict[str, str] = {}  # symbol -> why its warm-up is still waiting

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    async def warm_up(self, seq: CandleSequencer, bars: int) -> list[Kline]:
        """The newest ``bars`` closed candles, delivered; retried with ``backoff`` until REST
        answers (ConfigError raises). Each request is one attempt, so every wait is the one
        logged here; ``problems[symbol]`` says why it is still waiting."""
        while True:
            try:
                klines = await self.rest.fetch_latest(seq.symbol, self.interval, bars, attempts=1)
                break
            except ConfigError:
                raise
            except RestError as e:
                wait = (
                    self.forbidden_backoff_s
                    if isinstance(e, RestForbidden)
                    else self.backoff.next_delay()
                )
                self.problems[seq.symbol] = f"REST backfill failing ({short(str(e), 120)})"
                log.warning("backfill %s failed (%s); retrying in %.2f s", seq.symbol, e, wait)
                await asyncio.sleep(wait)
        self.backoff.reset()
        self.problems.pop(seq.symbol, None)
        self._observe(seq)
        got = seq.take(klines)
        await self._deliver(seq.symbol, got)
        log.info("backfilled %d closed %s klines for %s", len(klines), self.interval, seq.symbol)
        return got

    def _observe(self, seq: CandleSequencer) -> None:
        if self.rest.server_time is not None:
            seq.observe_time(self.rest.server_time)

    def due(
        self, seqs: Iterable[CandleSequencer], ts: int, skip: Container[str]
    ) -> list[tuple[CandleSequencer, FillRange]]:
        """Sequencers whose confirm is overdue at exchange time ``ts``, with their ranges
        (a plain check, so the usual frame with nothing due costs no coroutine)."""
        out = []
        for seq in seqs:
            if seq.symbol in skip:
                continue
            r = seq.due_fill(ts)
            if r is not None:
                out.append((seq, r))
        return out

    async def fill_due(self, due: Iterable[tuple[CandleSequencer, FillRange]], ts: int) -> None:
        """Fetch every overdue range found by :meth:`due`."""
        for seq, r in due:
            self._count("late_fills")
            await self.fill(seq, r.first, r.last, ts)

    async def fill(
        self, seq: CandleSequencer, first: int, last: int, ts: int, before: int | None = None
    ) -> bool:
        """Fetch closed candles [first, last] and deliver them; False if REST failed."""
        try:
            klines = await self.rest.fetch_range(
                seq.symbol, self.interval, first, last, max_candles=seq.history_bars
            )
        except ConfigError:
            raise
        except RestError as e:
            wait_ms = int(self.forbidden_backoff_s * 1000) if isinstance(e, RestForbidden) else 0
            log.warning("REST fill %s [%d, %d] failed: %s", seq.symbol, first, last, e)
            seq.defer(ts, max(wait_ms, self.fill_retry_ms))
            self._count("fill_errors")
            return False
        self._observe(seq)
        got = seq.take(klines, before=before)
        if not got and before is None:
            seq.defer(ts, self.fill_retry_ms)  # not on REST yet: ask again a little later
        await self._deliver(seq.symbol, got)
        return True

    async def _deliver(self, symbol: str, klines: list[Kline]) -> None:
        for k in klines:
            self.metrics.backfilled_klines.labels(symbol).inc()
            self._count("closed_rest")
            # exchange_ts: the candle's close; received_ns: when it reached us
            await self.out.put(KlineEvent(k, k.start + self.step, time.perf_counter_ns(), "rest"))
