"""The hot path: closed kline → incremental features → (F, T) window → student → signal.

One :class:`SymbolState` per configured symbol holds O(1) feature state and the window ring.
:meth:`Pipeline.process` is synchronous and lean on purpose — no logging, no pydantic, no
JSON, labelled metric children resolved once — and is timed per stage into the DESIGN §7
histograms. The student runs its plain full graph on the (F, T) window every close
(:meth:`service.model.predictor.Predictor.predict`, I/O binding). The frame→signal latency is
``perf_counter_ns()`` when the signal is stored minus the frame's ``received_ns``;
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

from service.features import WARMUP_BARS, WINDOW, FeatureWindow, IncrementalFeatures
from service.market.klines import KlineEvent, interval_ms
from service.metrics import Metrics
from service.model.predictor import ModelSlot
from service.pipeline.signals import Signal, SignalStore, action_of, confidence_of, direction_of

log = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
BARS_TO_FIRST_SIGNAL = WARMUP_BARS + WINDOW - 1  # 48 bars for vol_z, then 31 more vectors
_NS_PER_US = 1_000.0
_NS_PER_S = 1e9


class SymbolState:
    """Feature state, window and bookkeeping of one symbol."""

    __slots__ = (
        "bars",
        "features",
        "gaps",
        "last_received_ns",
        "last_start",
        "signals_down",
        "signals_up",
        "symbol",
        "window",
    )

    def __init__(self, symbol: str, metrics: Metrics) -> None:
        self.symbol = symbol
        self.features = IncrementalFeatures()
        self.window = FeatureWindow()
        self.bars = 0
        self.gaps = 0
        self.last_start: int | None = None
        self.last_received_ns: int | None = None
        # Labelled children resolved once: .labels() costs a dict lookup under a lock.
        self.signals_up = metrics.signals.labels(symbol=symbol, direction="up")
        self.signals_down = metrics.signals.labels(symbol=symbol, direction="down")

    @property
    def warm(self) -> bool:
        """True once the window is full (a signal can be made)."""
        return self.window.full


class Pipeline:
    """Turns closed klines into stored signals and hands live ones to ``sink``."""

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
        observer: Callable[[KlineEvent, F64 | None, Signal | None], None] | None = None,
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
        # live scores, drift); called after the signal is stored, and it defers its own work.
        self.observer = observer
        # The challenger in shadow (DESIGN section 12): a (B, F, T) batch of the windows just
        # scored, their symbols and candle starts; never served, never traded.
        self.shadow: Callable[[F64, Sequence[str], Sequence[int]], None] | None = None
        self.states = {s: SymbolState(s, metrics) for s in symbols}
        self.processed = 0
        self.errors = 0
        self._m_features = metrics.feature_update_seconds
        self._m_inference = metrics.inference_seconds
        self._m_latency = metrics.signal_latency_seconds
        self._m_prob = {s: metrics.signal_probability_up.labels(symbol=s) for s in self.states}
        self._m_dir = {s: metrics.signal_direction.labels(symbol=s) for s in self.states}
        self._m_vol = {s: metrics.signal_probability_high_vol.labels(symbol=s) for s in self.states}
        self._m_bad = metrics.klines_rejected.labels(reason="bad_value")
        self._m_old = metrics.klines_rejected.labels(reason="out_of_order")

    def process(self, event: KlineEvent) -> Signal | None:
        """Score one closed kline; returns the stored signal, or None (warming, ignored)."""
        k = event.kline
        st = self.states.get(k.symbol)
        if st is None or not k.confirm or k.interval != self.interval:
            return None
        if st.last_start is not None and k.start <= st.last_start:
            self._m_old.inc()  # the feed promises order; never feed a candle twice
            return None
        if st.last_start is not None and k.start != st.last_start + self.step_ms:
            st.gaps += 1  # exchange history has a hole: features continue over it, as in training
        t0 = time.perf_counter_ns()
        vec = st.features.update(k.open, k.high, k.low, k.close, k.volume)  # (F,) or None
        if vec is not None:
            st.window.push(vec)
        t1 = time.perf_counter_ns()
        st.last_start = k.start
        st.last_received_ns = event.received_ns
        st.bars += 1
        predictor = self.slot.current
        if not st.window.full or predictor is None:
            self._m_features.observe((t1 - t0) / _NS_PER_S)
            if self.observer is not None:
                self.observer(event, vec, None)
            return None
        p = predictor.predict(st.window.view())  # (F, T) view, oldest → newest
        p_vol = predictor.high_vol  # both heads come from the same run
        t2 = time.perf_counter_ns()
        if not (math.isfinite(p) and math.isfinite(p_vol)):
            self._m_bad.inc()
            if self.observer is not None:
                self.observer(event, vec, None)
            return None
        live = event.source == "ws"
        ident = predictor.identity
        signal = Signal(
            symbol=k.symbol,
            interval=self.interval,
            candle_start=k.start,
            close=k.close,
            probability_up=p,
            direction=direction_of(p),
            confidence=confidence_of(p),
            action=action_of(p, self.long_threshold, self.short_threshold),
            model_name=ident.name,
            model_version=ident.version,
            features_us=(t1 - t0) / _NS_PER_US,
            inference_us=(t2 - t1) / _NS_PER_US,
            received_ns=event.received_ns,
            generated_at=time.time(),
            live=live,
            probability_high_vol=p_vol,
            model_sha256=predictor.card.sha256,
        )
        self.store.put(signal)
        t3 = time.perf_counter_ns()
        # Everything below is bookkeeping after the signal is stored (not in the latency).
        if live:
            self._m_latency.observe((t3 - event.received_ns) / _NS_PER_S)
        self._m_features.observe((t1 - t0) / _NS_PER_S)
        self._m_inference.observe((t2 - t1) / _NS_PER_S)
        (st.signals_up if p >= 0.5 else st.signals_down).inc()
        self._m_prob[k.symbol].set(p)
        self._m_dir[k.symbol].set(1.0 if p >= 0.5 else -1.0)
        self._m_vol[k.symbol].set(p_vol)
        self.processed += 1
        if self.sink is not None:
            self.sink(signal)
        if self.shadow is not None:
            self.shadow(st.window.view()[None], (k.symbol,), (k.start,))
        if self.observer is not None:
            self.observer(event, vec, signal)
        return signal

    async def run(self, queue: asyncio.Queue[KlineEvent]) -> None:
        """Consume the feed's queue until cancelled; a bad event is logged, never fatal."""
        while True:
            self.handle(await queue.get())

    def handle(self, event: KlineEvent) -> None:
        """Process one event; a failure is logged and counted, never raised."""
        try:
            self.process(event)
        except Exception:
            self.errors += 1
            log.exception("pipeline: could not process %s", _describe(event))

    def bars_seen(self, symbol: str) -> int:
        """Closed klines processed for ``symbol``."""
        return self.states[symbol].bars

    def status(self) -> dict[str, Any]:
        """Per-symbol warm-up progress (for /ready and the dashboard)."""
        return {
            s: {"bars": st.bars, "needed": BARS_TO_FIRST_SIGNAL, "warm": st.warm, "gaps": st.gaps}
            for s, st in self.states.items()
        }


def _describe(event: KlineEvent) -> str:
    k = event.kline
    return f"{k.symbol} {k.interval} candle {k.start} ({event.source})"
