"""Signals: the decision rule (pure), the record the pipeline stores, and the store.

A signal is made once per closed candle per symbol: direction from the probability
(``up`` when p ≥ 0.5), confidence |2p − 1|, and the trading action from the configured
thresholds (``long`` when p ≥ long_threshold, ``short`` when p ≤ short_threshold, else
``flat``). The store keeps each symbol's latest signal and a bounded probability history for
the dashboard. The candle thread is its only writer (``service.pipeline.candle_loop``); the API
thread reads it in steps that are atomic under the GIL (a dict lookup of an immutable
:class:`Signal`, ``list(deque)``), so it needs no lock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

HISTORY_LEN = 500  # probability points kept per symbol (the dashboard's chart)

UP = "up"
DOWN = "down"
LONG = "long"
SHORT = "short"
FLAT = "flat"
TARGET = {LONG: 1, SHORT: -1, FLAT: 0}  # action -> target position sign


def direction_of(p: float) -> str:
    """``up`` when the up-probability is at least one half, else ``down``."""
    return UP if p >= 0.5 else DOWN


def action_of(p: float, long_threshold: float, short_threshold: float) -> str:
    """``long`` at or above ``long_threshold``, ``short`` at or below ``short_threshold``."""
    if p >= long_threshold:
        return LONG
    if p <= short_threshold:
        return SHORT
    return FLAT


def regime_of(p_high_vol: float, threshold: float) -> str:
    """``high`` when the volatility head's probability is at least ``threshold``."""
    return "high" if p_high_vol >= threshold else "normal"


def confidence_of(p: float) -> float:
    """|2p − 1|: 0 at a coin flip, 1 at certainty."""
    return abs(2.0 * p - 1.0)


class Signal(NamedTuple):
    """One closed candle's signal with the timings and clocks it was made with.

    A NamedTuple, not a frozen dataclass: it is built on the hot path once per candle, and a
    frozen dataclass's ``__init__`` costs a few µs of ``object.__setattr__`` calls.

    ``received_ns`` is the local receive clock (``perf_counter_ns``) of the kline's frame
    (ages and staleness are measured on it); ``generated_at`` is wall time (epoch s).
    ``live`` is False for signals made from REST backfill (they are never traded).
    ``probability_high_vol`` is the volatility head's P(next range above its 48-bar median);
    ``model_sha256`` identifies the exact ONNX file (the journal records it).
    """

    symbol: str
    interval: str
    candle_start: int
    close: float
    probability_up: float
    direction: str
    confidence: float
    action: str
    model_name: str
    model_version: str
    features_us: float
    inference_us: float
    received_ns: int
    generated_at: float
    live: bool
    probability_high_vol: float = math.nan
    model_sha256: str = ""


class SignalStore:
    """Latest signal and recent (candle_start, probability_up) points per symbol."""

    __slots__ = ("_history", "_latest")

    def __init__(self, symbols: Iterable[str], history: int = HISTORY_LEN) -> None:
        self._latest: dict[str, Signal | None] = {s: None for s in symbols}
        self._history: dict[str, deque[tuple[int, float]]] = {
            s: deque(maxlen=history) for s in self._latest
        }

    @property
    def symbols(self) -> list[str]:
        """The configured symbols, in configuration order."""
        return list(self._latest)

    def put(self, signal: Signal) -> None:
        """Store ``signal`` as its symbol's latest (hot path: two dict lookups, one append)."""
        self._latest[signal.symbol] = signal
        self._history[signal.symbol].append((signal.candle_start, signal.probability_up))

    def latest(self, symbol: str) -> Signal | None:
        """The newest signal for ``symbol`` (None while warming up); KeyError if unknown."""
        return self._latest[symbol]

    def history(self, symbol: str, limit: int | None = None) -> list[tuple[int, float]]:
        """Up to ``limit`` most recent (candle_start ms, probability_up) points, oldest first."""
        points = list(self._history[symbol])
        return points if limit is None else points[-limit:] if limit > 0 else []

    def clear(self) -> None:
        """Forget every signal (after a model reload the old ones still stand; tests use it)."""
        for s in self._latest:
            self._latest[s] = None
            self._history[s].clear()
