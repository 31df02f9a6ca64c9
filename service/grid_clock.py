"""When will the next candles close, in local time? From the exchange's clock and its grid.

Candles close on a fixed grid of the *exchange's* clock (every ``step_ms`` of ``ts``), so once
the rate between that clock and the local ``perf_counter_ns`` is known, the next close can
be placed in local time before any candle has closed. That rate is 1 ms per ms against live
Bybit, and whatever the speed-up is against the replay exchange; it is measured, not
assumed, from the ``(ts, received_ns)`` of the kline frames read so far, interim pushes
included.

:class:`service.keep_warm.BurstClock` learns the arrival times from the closed candles
themselves and needs two bursts to do it; this clock aims the keep-warm spin at the bursts
before that (the first candles after a start were the slowest). Pure bookkeeping: no I/O, no
clock of its own.
"""

from __future__ import annotations

_MS = 1_000_000


class GridClock:
    """Local time of the next interval boundary, from frames' exchange and receive times."""

    def __init__(self, step_ms: int, *, lead_ms: float = 20.0, min_span_ms: float = 100.0) -> None:
        if step_ms <= 0:
            raise ValueError(f"step_ms must be positive, got {step_ms}")
        self.step_ms = step_ms
        self.lead_ns = int(lead_ms * _MS)
        self.min_span_ns = int(min_span_ms * _MS)  # anchor → latest, before a rate is trusted
        self._anchor: tuple[int, int] | None = None  # (ts ms, received ns) of the first frame
        self._latest: tuple[int, int] | None = None
        self.rate: float | None = None  # local ns per exchange ms

    def observe(self, frame: tuple[int, int] | None) -> None:
        """A kline frame's ``(exchange ts in ms, received_ns)``; repeats are ignored.

        An exchange clock that goes backwards (a replay restarted, another exchange) or a
        rate that stops fitting (the replay's speed changed) starts the estimate again.
        """
        if frame is None or frame == self._latest:
            return
        ts, rx = frame
        anchor = self._anchor
        if anchor is None or ts < anchor[0] or rx < anchor[1]:
            self._anchor, self._latest, self.rate = frame, frame, None
            return
        if self.rate is not None and self._latest is not None:
            # where this frame should have arrived, by the rate so far: a miss by more than
            # the lead (delivery jitter is far smaller) means the clocks' relation changed
            expected = self._latest[1] + (ts - self._latest[0]) * self.rate
            if abs(rx - expected) > self.lead_ns:
                self._anchor, self._latest, self.rate = frame, frame, None
                return
        self._latest = frame
        if ts > anchor[0] and rx - anchor[1] >= self.min_span_ns:
            self.rate = (rx - anchor[1]) / (ts - anchor[0])

    def window(self, now_ns: int) -> tuple[int, int] | None:
        """(start, end) in local ns around the next boundary whose window is not over at
        ``now_ns``; None until the rate is known."""
        latest, rate = self._latest, self.rate
        if latest is None or rate is None:
            return None
        ts, rx = latest
        boundary = (ts // self.step_ms + 1) * self.step_ms  # exchange ms
        at = rx + (boundary - ts) * rate  # local ns
        period = self.step_ms * rate
        if now_ns > at + self.lead_ns:  # that close came (or not) already: aim at the next
            at += period * (1 + int((now_ns - at - self.lead_ns) // period))
        centre = int(at)
        return centre - self.lead_ns, centre + self.lead_ns
