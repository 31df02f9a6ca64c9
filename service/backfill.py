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
from collections.abc import Container, Iterable
from dataclasses import dataclass
from enum import Enum

from service.klines import Kline, KlineEvent, interval_ms
from service.metrics import Metrics
from service.rest import Backoff, ConfigError, RestError, RestForbidden, RestKlines

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
    """Ordering state of one symbol: ``last_start`` is the newest closed candle delivered.

    ``grace_ms`` is how long (exchange time) after a candle's end its confirm may still
    arrive before the candle is fetched by REST instead.
    """

    def __init__(self, symbol: str, interval: str, *, grace_ms: int = 10_000) -> None:
        self.symbol = symbol
        self.interval = interval
        self.step = interval_ms(interval)
        self.grace_ms = grace_ms
        self.last_start: int | None = None
        self._retry_at_ts = 0

    def classify(self, kline: Kline) -> Verdict:
        """Where a closed candle stands relative to what was delivered."""
        last = self.last_start
        if last is None or kline.start == last + self.step:
            return Verdict.NEXT
        if kline.start <= last:
            return Verdict.DUPLICATE
        return Verdict.GAP

    def gap_before(self, kline: Kline) -> FillRange:
        """The missing closed candles between the last delivered one and ``kline``."""
        assert self.last_start is not None
        return FillRange(self.last_start + self.step, kline.start - self.step)

    def is_live(self, kline: Kline) -> bool:
        """True for an interim update of a candle newer than the last closed one."""
        return self.last_start is None or kline.start > self.last_start

    def accept(self, kline: Kline) -> None:
        """Record ``kline`` as delivered (call only for NEXT candles or take() results)."""
        self.last_start = kline.start

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
                self.last_start = k.start
        return out

    def due_fill(self, exchange_ts: int) -> FillRange | None:
        """Candles whose window ended more than ``grace_ms`` ago with no confirm seen.

        Covers both a missing confirm and the bars lost while disconnected: the first frame
        after a reconnect carries an exchange ``ts`` far past the last delivered candle.
        """
        if self.last_start is None or exchange_ts < self._retry_at_ts:
            return None
        first = self.last_start + self.step
        n = (exchange_ts - self.grace_ms - first - self.step) // self.step  # extra closed bars
        if n < 0:
            return None
        return FillRange(first, first + n * self.step)

    def defer(self, exchange_ts: int, delay_ms: int) -> None:
        """Do not retry a fill before ``exchange_ts + delay_ms`` (REST empty or failing)."""
        self._retry_at_ts = exchange_ts + delay_ms


class Backfiller:
    """Fetches closed candles by REST and delivers them in order onto ``out``.

    ``stats`` is the feed's counter dict (shared, so one snapshot shows both sides).
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

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    async def warm_up(self, seq: CandleSequencer, bars: int) -> None:
        """The newest ``bars`` closed candles; retried until REST answers (ConfigError raises)."""
        while True:
            try:
                klines = await self.rest.fetch_latest(seq.symbol, self.interval, bars)
                break
            except RestForbidden as e:
                wait = self.forbidden_backoff_s
                log.error("backfill %s: %s; pausing REST %.0f s", seq.symbol, e, wait)
                await asyncio.sleep(wait)
            except ConfigError:
                raise
            except RestError as e:
                delay = self.backoff.next_delay()
                log.warning("backfill %s failed (%s); retrying in %.1f s", seq.symbol, e, delay)
                await asyncio.sleep(delay)
        self.backoff.reset()
        await self._deliver(seq.symbol, seq.take(klines))
        log.info("backfilled %d closed %s klines for %s", len(klines), self.interval, seq.symbol)

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
            klines = await self.rest.fetch_range(seq.symbol, self.interval, first, last)
        except ConfigError:
            raise
        except RestError as e:
            wait_ms = int(self.forbidden_backoff_s * 1000) if isinstance(e, RestForbidden) else 0
            log.warning("REST fill %s [%d, %d] failed: %s", seq.symbol, first, last, e)
            seq.defer(ts, max(wait_ms, self.fill_retry_ms))
            self._count("fill_errors")
            return False
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
