"""Between candles: keep the hot path hot and do the garbage collector's work at idle times.

A closed candle arrives once per interval per symbol; in between the service idles, and on a
shared VM the first candle after a quiet spell then runs several times slower than the same
code back to back (BENCHMARKS.md, section 6: caches, branch predictors and the vCPU go cold).
Two measures, both run by the runtime's keep-warm task every ``APPRENTICE_KEEP_WARM_MS``:

* :class:`ShadowPath` pushes a synthetic Bybit frame through the *same* code the live path
  runs — ``parse_frame``, then ``Pipeline.process`` of a shadow pipeline (its own symbol
  state, signal store and unregistered metrics, the serving predictor) — so features, the
  student, signal building, the store and the histograms are all warm. Nothing it does is
  served, counted or traded. Warming only parts of the path (the parser and the student)
  left the untouched parts ~10× slower than hot; the whole path is what works.
* :class:`IdleCollector` turns CPython's allocation-triggered collections off and runs the
  same generational policy from the tick instead, so a collection (tens of µs, more for an
  older generation) never lands inside a candle's frame → signal path. It freezes the
  start-up objects (``gc.freeze``) so older-generation passes stay short, and restores the
  collector as it found it on stop.
"""

from __future__ import annotations

import asyncio
import gc

from prometheus_client import CollectorRegistry

from service.bybit import KlineFrame, parse_frame
from service.klines import KlineEvent, interval_ms
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.signals import SignalStore

SHADOW_SYMBOL = "SHADOWUSDT"  # never subscribed, never served

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
    """The live path on scratch state: synthetic frame → parse → shadow pipeline."""

    def __init__(self, live: Pipeline) -> None:
        self.interval = live.interval
        self.pipeline = Pipeline(
            symbols=[SHADOW_SYMBOL],
            interval=live.interval,
            slot=live.slot,  # the serving student: its code and weights are what must be warm
            store=SignalStore([SHADOW_SYMBOL]),
            metrics=Metrics(CollectorRegistry()),  # unregistered: never scraped
            long_threshold=live.long_threshold,
            short_threshold=live.short_threshold,
        )
        self.ticks = 0

    def tick(self) -> None:
        """One synthetic closed candle through parse and process (~one live candle's work)."""
        frame = parse_frame(shadow_frame(self.interval, self.ticks))
        self.ticks += 1
        if isinstance(frame, KlineFrame):
            self.pipeline.handle(KlineEvent(frame.klines[0], frame.ts, 0, "ws"))


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


async def keep_warm(shadow: ShadowPath, collector: IdleCollector, period_s: float) -> None:
    """Every ``period_s`` until cancelled: one shadow candle, then any due collection."""
    collector.start()
    try:
        while True:
            await asyncio.sleep(period_s)
            shadow.tick()
            collector.tick()
    finally:
        collector.stop()
