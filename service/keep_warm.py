"""Between candles: keep the hot path hot and do the garbage collector's work at idle times.

A closed candle arrives once per interval per symbol; in between the service idles, and on a
shared VM the first candle after a quiet spell then runs several times slower than the same
code back to back (BENCHMARKS.md, section 6: caches, branch predictors and the vCPU go cold).
Two measures, both run by the runtime's keep-warm task every ``APPRENTICE_KEEP_WARM_MS``:

* :class:`ShadowPath` pushes a synthetic Bybit frame through the *same* code the live path
  runs — a shadow ``KlineFeed`` (parse, sequencing, the direct hand-off) into a shadow
  ``Pipeline`` (features, the serving student, signal, store, histograms), with their own
  symbol, state, store and unregistered metrics. Nothing it does is served, counted or
  traded. Warming only parts of the path (the parser and the student) left the untouched
  parts ~10× slower than hot; the whole path is what works. That warms the code; the live
  symbols' own data is touched too, changing nothing anyone sees (``Pipeline.warm_live``:
  feature sums prepared again, the streamed student's step dry-run on the symbol's own
  buffers, the store read; ``KlineFeed.warm``: the sequencers' overdue check). Left a
  second untouched, that data made the first candle of a burst ~10–15 µs slower. The task
  primes the shadow at start (``ShadowPath.prime``): its window filled back to back, it
  scores from the first tick on, before the first live candle can come.
* :class:`BurstClock` learns when the next closed candles arrive (they close on a fixed grid,
  so they come in bursts one interval apart) and the task *spins* — yields to the event loop
  without sleeping, a shadow candle every ``SPIN_TICK_S`` — from a little before that moment
  until the burst is in. A sleeping vCPU wakes slowly: the first candle of a burst ran ~2×
  slower than the next ones even with 2 ms ticks. The spin costs a few ms of CPU per
  interval; anywhere else the task sleeps. Until two bursts have come,
  :class:`service.grid_clock.GridClock` aims the spin instead: it places the exchange's next
  candle close in local time from the frames read so far (interim pushes too), so the first
  bursts after a start are spun for as well (unspun, their first candle ran ~2× slower).
* :class:`IdleCollector` turns CPython's allocation-triggered collections off and runs the
  same generational policy from the tick instead, so a collection (tens of µs, more for an
  older generation) never lands inside a candle's frame → signal path. It freezes the
  start-up objects (``gc.freeze``) so older-generation passes stay short, and restores the
  collector as it found it on stop.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from service.feed import KlineFeed
from service.grid_clock import GridClock
from service.klines import interval_ms
from service.metrics import Metrics
from service.pipeline import BARS_TO_FIRST_SIGNAL, Pipeline
from service.rest import RestKlines
from service.signals import SignalStore

SHADOW_SYMBOL = "SHADOWUSDT"  # never subscribed, never served
SPIN_TICK_S = 0.00025  # shadow candles while spinning
_MS = 1_000_000

# A Bybit v5 kline push (reference §3), confirm=true, filled in per tick.
_FRAME = (
    '{{"topic":"kline.{iv}.{sym}","data":[{{"start":{start},"end":{end},"interval":"{iv}",'
    '"open":"{o}","close":"{c}","high":"{h}","low":"{lo}","volume":"{v}",'
    '"turnover":"{t}","confirm":true,"timestamp":{end}}}],"ts":{ts},"type":"snapshot"}}'
)


def shadow_frame(interval: str, n: int) -> str:
    """The ``n``-th synthetic closed-candle frame: candle ``n`` of a gently zig-zagging market
    (every feature branch that real data takes: up and down closes, non-zero volume)."""
    step = interval_ms(interval)
    start = n * step
    up = n & 1
    o = 100.0
    c = 100.1 if up else 99.9
    v = 10.0 + (n % 7)
    return _FRAME.format(
        iv=interval,
        sym=SHADOW_SYMBOL,
        start=start,
        end=start + step - 1,
        o=f"{o:.1f}",
        c=f"{c:.1f}",
        h=f"{max(o, c) + 0.05:.2f}",
        lo=f"{min(o, c) - 0.05:.2f}",
        v=f"{v:.1f}",
        t=f"{v * c:.2f}",
        ts=start + step + 3,
    )


class ShadowPath:
    """The live path on scratch state: synthetic frame → shadow feed → shadow pipeline."""

    def __init__(self, live: Pipeline) -> None:
        self.interval = live.interval
        metrics = Metrics(CollectorRegistry())  # unregistered: never scraped
        self.pipeline = Pipeline(
            symbols=[SHADOW_SYMBOL],
            interval=live.interval,
            slot=live.slot,  # the serving student: its code and weights are what must be warm
            store=SignalStore([SHADOW_SYMBOL]),
            metrics=metrics,
            long_threshold=live.long_threshold,
            short_threshold=live.short_threshold,
            defer=live.defer,
        )
        self.feed = KlineFeed(
            symbols=[SHADOW_SYMBOL],
            interval=live.interval,
            ws_url="ws://shadow.invalid/",  # never connected: frames come via handle_frame
            rest=RestKlines("http://shadow.invalid"),  # never asked: shadow candles are never late
            out=asyncio.Queue(),
            metrics=metrics,
            backfill_bars=0,
            emit_interim=False,
            direct=self.pipeline.handle,
        )
        self.live = live
        self.live_feed: KlineFeed | None = None  # the runtime's feed, once it exists
        self.ticks = 0

    async def prime(self) -> None:
        """Shadow candles back to back until the shadow's window is full and it scores.

        Run once at start: until then a tick exercises only the feed and the features, and
        the first live candle after a start — often due before ~80 ticks have passed —
        found the student, the signal and the store cold."""
        for _ in range(BARS_TO_FIRST_SIGNAL + 1):
            if self.pipeline.processed or self.live.slot.current is None:
                return
            await self.tick()

    async def tick(self) -> None:
        """One synthetic closed candle through the feed and the pipeline, then what the
        shadow cannot warm: the live symbols' own data (``Pipeline.warm_live``: feature
        rings, student step bindings, store) and the live feed's (``KlineFeed.warm``)."""
        raw = shadow_frame(self.interval, self.ticks)
        self.ticks += 1
        await self.feed.handle_frame(raw, time.perf_counter_ns())
        await asyncio.sleep(0)  # a frame that came meanwhile is read before the rest
        self.live.warm_live()
        if self.live_feed is not None:
            self.live_feed.warm()


class BurstClock:
    """When will the next burst of closed candles arrive? (local ``perf_counter_ns`` clock)

    Fed the receive time of the newest live closed candle (``observe``); candles less than
    ``burst_gap_ms`` apart are one burst. The period is the median gap between the last
    ``history`` bursts (a missed candle makes one gap twice as long: the median ignores it),
    the window half-width three median absolute deviations of the gaps plus ``min_lead_ms``,
    at most ``max_lead_ms`` — and ``max_lead_ms`` while fewer than three gaps are known, so
    the spin starts from the third burst. Pure bookkeeping: no I/O, no clock of its own.
    """

    def __init__(
        self,
        *,
        history: int = 16,
        burst_gap_ms: float = 5.0,
        min_lead_ms: float = 2.0,
        max_lead_ms: float = 20.0,
    ) -> None:
        self.burst_gap_ns = int(burst_gap_ms * _MS)
        self.min_lead_ns = int(min_lead_ms * _MS)
        self.max_lead_ns = int(max_lead_ms * _MS)
        self.gaps: deque[int] = deque(maxlen=history)
        self.burst_start: int | None = None
        self._seen: int | None = None
        self._aim: tuple[int, int] | None = None  # (period, lead) from the gaps; see _learn

    def observe(self, received_ns: int | None) -> None:
        """The newest live closed candle's receive time (repeats are ignored)."""
        if received_ns is None or received_ns == self._seen:
            return
        self._seen = received_ns
        start = self.burst_start
        if start is not None and received_ns - start < self.burst_gap_ns:
            return  # the same burst
        if start is not None and received_ns > start:
            self.gaps.append(received_ns - start)
            self._aim = self._learn()
        self.burst_start = received_ns

    def _learn(self) -> tuple[int, int] | None:
        """(period, lead) from the gaps so far (once per burst, not per poll). One gap gives
        a period; until three give a spread, the window is as wide as allowed."""
        if not self.gaps:
            return None
        period = int(statistics.median(self.gaps))
        if period <= 2 * self.burst_gap_ns:
            return None  # candles faster than bursts can be told apart: nothing to aim at
        if len(self.gaps) < 3:
            return period, self.max_lead_ns
        mad = statistics.median(abs(g - period) for g in self.gaps)
        return period, min(self.max_lead_ns, int(3 * mad) + self.min_lead_ns)

    def window(self, now_ns: int) -> tuple[int, int] | None:
        """(start, end) of the next expected arrival not yet over at ``now_ns``, or None
        until a gap is known."""
        if self.burst_start is None or self._aim is None:
            return None
        period, lead = self._aim
        # the next arrival, skipping any whose window already passed (a missed candle)
        k = max(1, -(-(now_ns - lead - self.burst_start) // period))
        expected = self.burst_start + k * period
        return expected - lead, expected + lead


class IdleCollector:
    """CPython's generational GC policy, run at idle ticks instead of on allocation."""

    def __init__(self) -> None:
        self.active = False
        self._was_enabled = True
        self.collections = [0, 0, 0]

    def start(self) -> None:
        """Collect once, freeze the survivors (start-up objects), take over from the GC."""
        if self.active:
            return
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        self.active = True

    def tick(self) -> int | None:
        """Collect the oldest generation whose threshold is reached; returns it, or None."""
        if not self.active:
            return None
        thresholds = gc.get_threshold()
        counts = gc.get_count()
        if counts[0] < thresholds[0]:
            return None
        gen = 0
        if counts[1] >= thresholds[1]:
            gen = 2 if counts[2] >= thresholds[2] else 1
        gc.collect(gen)
        self.collections[gen] += 1
        return gen

    def stop(self) -> None:
        """Give the collector back as it was."""
        if not self.active:
            return
        self.active = False
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()


async def keep_warm(
    shadow: ShadowPath,
    collector: IdleCollector,
    period_s: float,
    *,
    bursts: BurstClock | None = None,
    newest_live_ns: Callable[[], int | None] = lambda: None,
    grid: GridClock | None = None,
    newest_frame: Callable[[], tuple[int, int] | None] = lambda: None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> None:
    """Until cancelled: a shadow candle and any due collection every ``period_s``; inside
    a :class:`BurstClock` window, spin instead (a shadow candle every ``SPIN_TICK_S``).
    Until the burst clock has learned the arrivals, ``grid`` (fed the newest kline frame's
    ``(ts, received_ns)``) aims the spin at the exchange's next candle close instead."""
    collector.start()
    spin_tick_ns = int(SPIN_TICK_S * 1e9)
    next_tick = 0
    try:
        await shadow.prime()
        while True:
            now = clock()
            window = None
            if bursts is not None:
                bursts.observe(newest_live_ns())
                window = bursts.window(now)
            if window is None and grid is not None:
                grid.observe(newest_frame())
                window = grid.window(now)
            if window is not None and window[0] <= now < window[1]:
                await asyncio.sleep(0)  # spin: the loop still polls the socket every pass
                if now >= next_tick:
                    next_tick = now + spin_tick_ns
                    await shadow.tick()
                continue
            sleep_s = period_s
            if window is not None:
                sleep_s = min(sleep_s, max(0.0, (window[0] - now) / 1e9))
            await asyncio.sleep(sleep_s)
            await shadow.tick()
            collector.tick()
    finally:
        collector.stop()
