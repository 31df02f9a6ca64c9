"""The hot path: closed kline → incremental features → (F, T) window → student → signal.

One :class:`SymbolState` per configured symbol holds O(1) feature state and the window ring.
Candles that close together are scored together (DESIGN section 13): :meth:`Pipeline.add`
updates a candle's features as it arrives and copies its window into a preallocated
(B, F, T) batch; :meth:`Pipeline.flush` scores the held windows in one ONNX call
(:meth:`service.model.predictor.Predictor.score`, bit-identical to single-row calls) and
stores their signals together, then does the bookkeeping (metrics, the paper trader's
sink, the monitor). When to flush is :mod:`service.pipeline.burst`'s rule — at once when
the burst is complete (a single symbol never waits), after the collection window
(:data:`~service.pipeline.burst.BURST_WINDOW_S`) when an expected confirm does not come;
history (REST backfill) never waits: what the queue holds is drained and scored in batches of
up to ``capacity`` rows.

The code is lean on purpose — no logging, no pydantic, no JSON, labelled metric children
resolved once. The frame→signal latency is ``perf_counter_ns()`` once the burst's signals
are stored minus each frame's ``received_ns`` (it includes the wait for the burst);
histogram observations happen after that reading.

Backfilled klines (source "rest") warm the features and refresh the latest signal, so
``/signal`` answers as soon as the history is in, but they are marked ``live=False``: the
paper trader never trades history, and their latency is not a frame latency.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from service.features import N_FEATURES, WARMUP_BARS, WINDOW, FeatureWindow, IncrementalFeatures
from service.market.klines import KlineEvent, interval_ms
from service.metrics import BURST_ENDS, Metrics
from service.model.predictor import ModelSlot
from service.pipeline.burst import BURST_WINDOW_S, BurstGate
from service.pipeline.signals import Signal, SignalStore, action_of, confidence_of, direction_of

log = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
BARS_TO_FIRST_SIGNAL = WARMUP_BARS + WINDOW - 1  # 48 bars for vol_z, then 31 more vectors
# DESIGN section 3: RSI has infinite memory, so a feature vector matches the full history's
# to ~1e-10 only with ~300 bars behind it. The service publishes a signal (stored, served,
# traded, journaled as a signal) only from there on (APPRENTICE_SIGNAL_HORIZON_BARS, this by
# default); earlier bars warm the state.
EXACT_HORIZON_BARS = 300
MIN_CAPACITY = 256  # rows of the batch buffer at least (REST warm-up drains in such batches)
DRAIN_BATCHES = 4  # a backlog is taken from the queue up to this many buffers per loop step
_NS_PER_US = 1_000.0
_NS_PER_S = 1e9


class SymbolState:
    """Feature state, window and bookkeeping of one symbol."""

    __slots__ = (
        "bars",
        "direction",
        "features",
        "gaps",
        "last_received_ns",
        "last_start",
        "needed",
        "prob_high_vol",
        "prob_up",
        "signals_down",
        "signals_up",
        "symbol",
        "window",
    )

    def __init__(self, symbol: str, metrics: Metrics, needed: int = BARS_TO_FIRST_SIGNAL) -> None:
        self.symbol = symbol
        self.needed = needed  # closed bars before the first published signal
        self.features = IncrementalFeatures()
        self.window = FeatureWindow()
        self.bars = 0
        self.gaps = 0
        self.last_start: int | None = None
        self.last_received_ns: int | None = None
        # Labelled children resolved once: .labels() costs a dict lookup under a lock.
        # Counters past the per-symbol ceiling share one aggregate series; latest-value
        # gauges past it are not exported (``service.metrics``: the ceiling and why).
        label = metrics.symbol_label(symbol)
        self.signals_up = metrics.signals.labels(symbol=label, direction="up")
        self.signals_down = metrics.signals.labels(symbol=label, direction="down")
        own = label == symbol
        self.prob_up = metrics.signal_probability_up.labels(symbol=symbol) if own else None
        self.direction = metrics.signal_direction.labels(symbol=symbol) if own else None
        self.prob_high_vol = (
            metrics.signal_probability_high_vol.labels(symbol=symbol) if own else None
        )

    @property
    def warm(self) -> bool:
        """True once the window is full and the horizon is behind it (a signal is made)."""
        return self.window.full and self.bars >= self.needed


Observed = tuple[KlineEvent, F64 | None, Signal | None]  # what the observer sees per candle

# One held candle: its event, its symbol's state, its feature vector, its row in the batch
# (-1: no window to score yet) and its feature update's duration (ns).
_Held = tuple[KlineEvent, SymbolState, F64 | None, int, int]


class Pipeline:
    """Turns closed klines into stored signals, a burst at a time, and hands live ones to
    ``sink``. Runs on one thread (the candle loop); not thread-safe."""

    def __init__(
        self,
        *,
        symbols: Iterable[str],
        interval: str,
        slot: ModelSlot,
        store: SignalStore,
        metrics: Metrics,
        long_threshold: float,
        short_threshold: float,
        sink: Callable[[Signal], None] | None = None,
        observer: Callable[[list[Observed]], None] | None = None,
        window_s: float = BURST_WINDOW_S,
        capacity: int | None = None,
        horizon_bars: int = 0,
    ) -> None:
        self.interval = interval
        self.step_ms = interval_ms(interval)
        self.slot = slot
        self.store = store
        self.metrics = metrics
        self.long_threshold = long_threshold
        self.short_threshold = short_threshold
        self.sink = sink
        # Sees every closed kline used, its feature vector and signal (the monitor: journal,
        # live scores, drift), once per batched call with the whole batch, after the signals
        # are stored; it defers its own work.
        self.observer = observer
        # The challenger in shadow (DESIGN section 12): a (B, F, T) batch of the windows just
        # scored, their symbols and candle starts; never served, never traded.
        self.shadow: (
            Callable[[npt.NDArray[np.float32], Sequence[str], Sequence[int]], None] | None
        ) = None
        # bars of history before a signal is published (EXACT_HORIZON_BARS in the service)
        self.needed = max(BARS_TO_FIRST_SIGNAL, horizon_bars)
        self.states = {s: SymbolState(s, metrics, self.needed) for s in symbols}
        self.window_s = window_s
        self.capacity = capacity or max(MIN_CAPACITY, 2 * len(self.states))
        self.gate = BurstGate(self.step_ms)
        self.processed = 0
        self.errors = 0
        self.batches = 0
        self._x = np.zeros((self.capacity, N_FEATURES, WINDOW), dtype=np.float32)  # (B, F, T)
        self._held: list[_Held] = []
        self._rows = 0
        self._live_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._m_features = metrics.feature_update_seconds
        self._m_inference = metrics.inference_seconds
        self._m_latency = metrics.signal_latency_seconds
        self._m_burst = metrics.burst_complete_seconds
        self._m_spread = metrics.burst_spread_seconds
        self._m_ends = {w: metrics.bursts.labels(scored=w) for w in BURST_ENDS}
        self._m_rows = metrics.batch_rows
        self._m_bad = metrics.klines_rejected.labels(reason="bad_value")
        self._m_old = metrics.klines_rejected.labels(reason="out_of_order")

    # ------------------------------------------------------------------ collect
    def add(self, event: KlineEvent) -> bool:
        """Update one closed kline's features and hold its window for the next batch;
        False when the event is ignored (unknown symbol, open candle, old candle)."""
        k = event.kline
        st = self.states.get(k.symbol)
        if st is None or not k.confirm or k.interval != self.interval:
            return False
        if st.last_start is not None and k.start <= st.last_start:
            self._m_old.inc()  # the feed promises order; never feed a candle twice
            return False
        if st.last_start is not None and k.start != st.last_start + self.step_ms:
            st.gaps += 1  # exchange history has a hole: features continue over it, as in training
        live = event.source == "ws"
        gate = self.gate
        if (live and gate.start is not None and gate.start != k.start) or (
            self._rows == self.capacity
        ):
            # another candle's burst, or a full buffer: score what is held first
            self.flush("full" if self._rows == self.capacity else "next")
        t0 = time.perf_counter_ns()
        vec = st.features.update(k.open, k.high, k.low, k.close, k.volume)  # (F,) or None
        if vec is not None:
            st.window.push(vec)
        t1 = time.perf_counter_ns()
        row = -1
        if st.window.full and st.bars + 1 >= st.needed:  # this bar is the (bars + 1)-th
            row = self._rows
            np.copyto(self._x[row], st.window.view(), casting="unsafe")  # f64 -> f32, as predict
            self._rows = row + 1
            if live:
                gate.start = k.start
                self._live_rows += 1
        gate.moved(st.last_start, k.start)
        st.last_start = k.start
        st.last_received_ns = event.received_ns
        st.bars += 1
        self._held.append((event, st, vec, row, t1 - t0))
        return True

    def settle(self) -> None:
        """Score what is held now, unless live candles wait for the rest of their burst:
        then arm the collection window's timer (once per burst)."""
        if not self._held:
            return
        if self._live_rows == 0 or self.gate.complete:
            self.flush("complete")
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven by hand (tests, tools): nobody to wake us later
                self.flush("now")
                return
            self._timer = loop.call_later(self.window_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush("window")
        except Exception:
            self.errors += 1
            log.exception("pipeline: could not score a burst")

    # ------------------------------------------------------------------ score and store
    def flush(self, why: str = "now") -> list[Signal | None]:
        """Score every held window in one call and store the signals together; returns one
        entry per held candle (None: warming up, no model, or a non-finite output). ``why``
        (a :data:`~service.metrics.BURST_ENDS` value) is counted for batches with live candles."""
        held, self._held = self._held, []
        rows, self._rows = self._rows, 0
        self._live_rows = 0
        self.gate.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not held:
            return []
        predictor = self.slot.current
        t1 = time.perf_counter_ns()
        up: list[float] = []
        vol: list[float] = []
        if rows and predictor is not None:
            p_up, p_vol = predictor.score(self._x[:rows])  # (rows,) each, one run
            up, vol = p_up.tolist(), p_vol.tolist()
        t2 = time.perf_counter_ns()
        out: list[Signal | None] = []
        if predictor is None or not rows:
            out = [None] * len(held)
        else:
            ident = predictor.identity
            sha = predictor.card.sha256
            per_row_us = (t2 - t1) / rows / _NS_PER_US
            long_at, short_at = self.long_threshold, self.short_threshold
            generated_at = time.time()
            put = self.store.put
            for event, _st, _vec, row, feat_ns in held:
                if row < 0:
                    out.append(None)
                    continue
                p, p_v = up[row], vol[row]
                if not (math.isfinite(p) and math.isfinite(p_v)):
                    self._m_bad.inc()
                    out.append(None)
                    continue
                k = event.kline
                signal = Signal(
                    symbol=k.symbol,
                    interval=self.interval,
                    candle_start=k.start,
                    close=k.close,
                    probability_up=p,
                    direction=direction_of(p),
                    confidence=confidence_of(p),
                    action=action_of(p, long_at, short_at),
                    model_name=ident.name,
                    model_version=ident.version,
                    features_us=feat_ns / _NS_PER_US,
                    inference_us=per_row_us,
                    received_ns=event.received_ns,
                    generated_at=generated_at,
                    live=event.source == "ws",
                    probability_high_vol=p_v,
                    model_sha256=sha,
                )
                put(signal)
                out.append(signal)
        t3 = time.perf_counter_ns()  # every signal of the batch is stored
        # Everything below is bookkeeping after the signals are stored (not in the latency).
        self.batches += 1
        if rows and predictor is not None:
            self._m_inference.observe((t2 - t1) / _NS_PER_S)
            self._m_rows.observe(rows)
        last_live_ns, first_live_ns = 0, 0
        observed: list[Observed] = []
        for (event, st, vec, _row, feat_ns), made in zip(held, out, strict=True):
            self._m_features.observe(feat_ns / _NS_PER_S)
            if made is not None:
                p = made.probability_up
                if made.live:
                    self._m_latency.observe((t3 - event.received_ns) / _NS_PER_S)
                    last_live_ns = max(last_live_ns, event.received_ns)
                    if not first_live_ns or event.received_ns < first_live_ns:
                        first_live_ns = event.received_ns
                (st.signals_up if p >= 0.5 else st.signals_down).inc()
                if st.prob_up is not None and st.direction is not None:
                    st.prob_up.set(p)
                    st.direction.set(1.0 if p >= 0.5 else -1.0)
                if st.prob_high_vol is not None:
                    st.prob_high_vol.set(made.probability_high_vol)
                self.processed += 1
                if self.sink is not None:
                    self.sink(made)
            observed.append((event, vec, made))
        if self.shadow is not None:  # the challenger scores the same windows, in one call
            made_rows = [h for h, made in zip(held, out, strict=True) if made is not None]
            if made_rows:
                self.shadow(
                    self._x[[h[3] for h in made_rows]],  # (B, F, T) float32, a copy
                    [h[0].kline.symbol for h in made_rows],
                    [h[0].kline.start for h in made_rows],
                )
        if self.observer is not None:
            self.observer(observed)
        if last_live_ns:
            self._m_burst.observe((t3 - last_live_ns) / _NS_PER_S)
            self._m_spread.observe((last_live_ns - first_live_ns) / _NS_PER_S)
            self._m_ends[why].inc()
        return out

    def process(self, event: KlineEvent) -> Signal | None:
        """Score one closed kline now (with anything held before it); returns its stored
        signal, or None (warming, ignored). Tools and tests; the live path batches."""
        if not self.add(event):
            return None
        return self.flush("now")[-1]

    # ------------------------------------------------------------------ the loop
    async def run(self, queue: asyncio.Queue[KlineEvent]) -> None:
        """Consume the feed's queue until cancelled: take what it holds (up to a batch),
        then settle; a bad event is logged, never fatal."""
        most = DRAIN_BATCHES * self.capacity  # events per step: bounds the loop's stall
        while True:
            self._add_logged(await queue.get())
            taken = 1
            while taken < most and not queue.empty():
                self._add_logged(queue.get_nowait())
                taken += 1
            self._settle_logged()
            if taken == most:
                await asyncio.sleep(0)  # a backlog: let the feed read its socket between steps

    def handle(self, event: KlineEvent) -> None:
        """One event from the feed (its direct hand-off): hold it, score when due; a failure
        is logged and counted, never raised."""
        self._add_logged(event)
        self._settle_logged()

    def _add_logged(self, event: KlineEvent) -> None:
        try:
            self.add(event)
        except Exception:
            self.errors += 1
            log.exception("pipeline: could not process %s", _describe(event))

    def _settle_logged(self) -> None:
        try:
            self.settle()
        except Exception:
            self.errors += 1
            log.exception("pipeline: could not score a burst")

    @property
    def held(self) -> int:
        """Closed candles held for the next batch."""
        return len(self._held)

    def bars_seen(self, symbol: str) -> int:
        """Closed klines processed for ``symbol``."""
        return self.states[symbol].bars

    def status(self) -> dict[str, Any]:
        """Per-symbol warm-up progress (for /ready and the dashboard)."""
        return {
            s: {"bars": st.bars, "needed": st.needed, "warm": st.warm, "gaps": st.gaps}
            for s, st in self.states.items()
        }


def _describe(event: KlineEvent) -> str:
    k = event.kline
    return f"{k.symbol} {k.interval} candle {k.start} ({event.source})"
