"""Recovery policy for the feed: retry backoff and per-symbol candle sequencing (pure, no I/O).

The sequencer is the single place that decides, for one symbol, whether a closed candle is
the next one to deliver, a duplicate, or the far side of a gap, and which range must be
fetched by REST because its confirm never arrived. Every decision is made on exchange time
(candle ``start`` and the frame's ``ts``), never on the local clock, so an accelerated
replay of old data behaves like the live exchange.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from service.klines import Kline, interval_ms


class Backoff:
    """Exponential backoff with jitter: ``initial · factor^n`` capped at ``max_s``, ±``jitter``.

    Injectable so tests reconnect in milliseconds; :meth:`reset` after a healthy period.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s < 0 or max_s < initial_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("Backoff needs 0 <= initial_s <= max_s, factor >= 1, 0 <= jitter < 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (grows until :meth:`reset`)."""
        base = min(self.max_s, self.initial_s * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Back to the initial delay."""
        self.attempt = 0


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
