"""One symbol's kline sequencing, sans I/O: klines and clock readings in, decisions out.

:class:`CandleSequencer` is the single place that decides, for one symbol, whether a closed
candle is the next one to deliver, a duplicate, untrustworthy, or the far side of a gap, and
which bounded range must be fetched by REST because its confirm never arrived. It does no
I/O and reads no clock: the feed hands it parsed frames (:meth:`CandleSequencer.on_frame`),
REST answers (:meth:`~CandleSequencer.on_fetched`, :meth:`~CandleSequencer.on_fetch_failed`)
and the exchange time other symbols have shown (:meth:`~CandleSequencer.on_time`), and carries
out the :class:`Decision` each returns: deliver these candles, fetch this range, count these
refusals. So a frame goes socket → parse → sequencer → pipeline and never comes back, and
every rule here is tested on plain values.

At most one fetch is outstanding per symbol. While it is (and while its answer is being
handed on), closed candles are *held* here, bounded by the history kept (older ones are in
what the fetch brings), and go out in order after it: the feed can then run each symbol's
REST in that symbol's own task and never make another symbol wait.

Every decision is made on exchange time (candle ``start`` and the frame's ``ts``), never on
the local clock, so an accelerated replay of old data behaves like the live exchange. REST
rows pass the same price check as a websocket confirm (DESIGN section 10): each against the
last delivered close or the previous row, within ``max_jump``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from statistics import median

from service.market.klines import Kline, KlineEvent, interval_ms

__all__ = ["CandleSequencer", "Decision", "Fetch", "FillRange", "Verdict"]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask REST for closed candles: the newest ``latest`` (warm-up), or [first, last]."""

    symbol: str
    first: int = 0
    last: int = 0
    latest: int = 0  # > 0: the warm-up's newest-N request


@dataclass(slots=True)
class Decision:
    """What the feed must do now, in this order: hand on ``deliver`` (closed, in order) then
    ``interim``, count ``refused`` (one ``klines_rejected`` reason each), start ``fetch``,
    and ask REST for the exchange's time if ``probe``."""

    deliver: list[KlineEvent] = field(default_factory=list)
    interim: list[KlineEvent] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    fetch: Fetch | None = None
    probe: bool = False


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
        fill_retry_ms: int = 5_000,
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
        self.fill_retry_ms = fill_retry_ms
        # closed websocket candles waiting for a fetch (or for the hand-over of its answer)
        self._held: deque[KlineEvent] = deque(maxlen=self.history_bars)
        self._busy = False  # a fetch is outstanding, or its answer is being handed on
        self._fetch: Fetch | None = None
        self._forgive: int | None = None  # a held candle whose gap REST was asked about

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

    def due_from(self) -> float:
        """The exchange time from which :meth:`due_fill` asks for something (inf: never yet),
        so a feed can skip a symbol's check on every other symbol's frame until then."""
        if self.last_start is None:
            return math.inf
        return max(self.last_start + 2 * self.step + self.grace_ms, self._retry_at_ts)

    def defer(self, exchange_ts: int, delay_ms: int) -> None:
        """Do not retry a fill before ``exchange_ts + delay_ms`` (REST empty or failing)."""
        self._retry_at_ts = exchange_ts + delay_ms

    # decisions (the feed's whole interface) ----------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a fetch is outstanding or its answer is being handed on."""
        return self._busy

    @property
    def held(self) -> int:
        """Closed websocket candles waiting behind a fetch."""
        return len(self._held)

    def _start(self, fetch: Fetch, d: Decision) -> None:
        self._busy = True
        self._fetch = fetch
        d.fetch = fetch

    def start(self, bars: int) -> Decision:
        """The warm-up: fetch the newest ``bars`` closed candles first (nothing if 0)."""
        d = Decision()
        if bars > 0:
            self._start(Fetch(self.symbol, latest=bars), d)
        return d

    def on_frame(self, ts: int, klines: Sequence[Kline], received_ns: int) -> Decision:
        """A kline push of this symbol (``ts`` its exchange time, ``received_ns`` when it was
        read): admitted against the clock, overdue candles asked for, confirms delivered in
        order or held, interim updates checked."""
        d = Decision()
        refused = self.admit(ts, klines)
        if refused is not None:  # one frame never moves the clock; REST may confirm it
            d.refused.append(refused)
            d.probe = True
            return d
        self._due(ts, d)
        # a closing candle and the next one may share a frame, in any order
        if len(klines) > 1:
            klines = sorted(klines, key=lambda k: (k.start, k.confirm))
        for k in klines:
            if k.confirm:
                self._held.append(KlineEvent(k, ts, received_ns, "ws"))
            elif self.is_live(k):
                implausible = self.note_interim(k)
                if implausible is not None:
                    d.refused.append(implausible)
                else:
                    d.interim.append(KlineEvent(k, ts, received_ns, "ws"))
        self._drain(d)
        return d

    def on_time(self, ts: int) -> Decision:
        """Another symbol's admitted ``ts``: exchange time is one, so an overdue confirm of
        this symbol is noticed even while its own stream is quiet. The clock does not move."""
        d = Decision()
        self._due(ts, d)
        return d

    def _due(self, ts: int, d: Decision) -> None:
        if self._busy:
            return
        r = self.due_fill(ts)
        if r is not None:
            self._start(Fetch(self.symbol, r.first, r.last), d)

    def _drain(self, d: Decision) -> None:
        """Deliver held candles in order until one needs a fetch (or nothing is held)."""
        while self._held and not self._busy:
            ev = self._held[0]
            k = ev.kline
            verdict = self.classify(k)
            if verdict is Verdict.DUPLICATE:
                self._held.popleft()
                d.refused.append("duplicate")
                continue
            untrusted = self.check_confirm(k, ev.exchange_ts)
            if untrusted is not None:  # stays due: REST fetches it after the grace period
                self._held.popleft()
                d.refused.append(untrusted)
                continue
            if verdict is Verdict.GAP and k.start != self._forgive:
                if (self.clock or 0) < self._retry_at_ts:
                    return  # REST failing: the due fill after the pause covers the gap
                gap = self.gap_before(k)
                self._start(Fetch(self.symbol, gap.first, gap.last), d)
                return
            self._held.popleft()
            self.accept(k)
            d.deliver.append(ev)

    def _screen(self, klines: Iterable[Kline], d: Decision) -> list[Kline]:
        """REST rows in order, each within ``max_jump`` of the last delivered close or the
        previous row kept. The warm-up's first row has no close before it: it is held to the
        median of the page's first five (one bad row cannot be the anchor, and a market that
        moved over the page's whole span does not refuse its oldest rows)."""
        rows = sorted(klines, key=lambda k: k.start)
        if not rows:
            return rows
        ref = self.last_close
        if ref is None:
            ref = median(k.close for k in rows[:5])
        kept = []
        for k in rows:
            if self._plausible(k, ref):
                kept.append(k)
                ref = k.close
            else:
                d.refused.append("implausible_price")
        return kept

    def on_fetched(self, klines: Iterable[Kline], server_time: int | None, now_ns: int) -> Decision:
        """The outstanding fetch's answer (closed candles, the exchange's ``time``): its new
        candles go out first, with ``source="rest"``. Call :meth:`handed_over` once they are
        handed on; until then later confirms stay held, so order is kept."""
        d = Decision()
        fetch = self._fetch
        if server_time is not None:
            self.observe_time(server_time)
        warm_up = fetch is not None and fetch.latest > 0
        # a range fill stops short of the held confirms (they keep their websocket stamps);
        # the warm-up takes all it got, and held confirms after it are sequenced as usual
        before = self._held[0].kline.start if self._held and not warm_up else None
        got = self.take(self._screen(klines, d), before=before)
        if before is not None and fetch is not None and fetch.last >= before - self.step:
            # REST was asked for the whole gap before this confirm: what it lacks is not
            # waited for (the exchange's history is the truth)
            self._forgive = before
        elif not got and not warm_up:
            self.defer(self.clock or 0, self.fill_retry_ms)  # not on REST yet: ask later
        d.deliver = [KlineEvent(k, k.start + self.step, now_ns, "rest") for k in got]
        self._fetch = None  # still busy: the hand-over
        return d

    def on_fetch_failed(self, delay_ms: int) -> Decision:
        """The outstanding range fetch failed: try again after ``delay_ms`` of exchange time
        (the held candles wait, bounded; the due fill then covers them). Then as
        :meth:`handed_over`."""
        self._fetch = None
        self.defer(self.clock or 0, delay_ms)
        return self.handed_over()

    def handed_over(self) -> Decision:
        """The last answer's candles are handed on: the held candles that may follow now, or
        the next fetch. While the returned decision delivers candles (and asks no fetch) the
        symbol stays busy: hand them on, then call again until one delivers nothing. So a
        candle read meanwhile is held, never handed on between these (order is kept)."""
        self._busy = False
        d = Decision()
        self._drain(d)
        if self.clock is not None:
            self._due(self.clock, d)
        if d.deliver and not self._busy:
            self._busy = True  # still handing over
        return d
