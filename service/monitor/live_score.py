"""Live scoring: the signal of candle t against what candle t+1 did, for both heads.

Labels exactly as DESIGN section 3, one candle at a time (``service.features.make_labels`` and
``make_vol_labels`` make the same labels for a whole history; a test holds them equal):
  * direction: 1 if candle t+1 closes above its open, else 0;
  * volatility: 1 if candle t+1's range (h − l)/c is above the median of (h − l)/c over bars
    t−47..t, else 0 (undefined, so not scored, until 48 ranges exist).

:class:`LiveScorer` is fed the closed klines and the signals in candle order
(:meth:`on_kline`, then :meth:`on_signal` for the same candle); when candle t+1 arrives it
scores the pending signal of t — only if t+1 directly follows t (a gap leaves t unscored, as
its outcome is unknown). Which signals count: every live one, and once a symbol has had a
live signal also the backfilled ones after it (the candles that closed while the service was
down or reconnecting), so a restart leaves no hole; the initial history backfill is not
scored. The window holds one model's signals: a signal from another model (a reload, by
sha256) starts the window afresh (the running totals go on). A kline at or before the newest
one seen is ignored, so the backfill a restart
re-reads is not scored twice. Rebuilding from the journal replays the same calls, hence the
same scores. Pure Python, no I/O.

Cost per candle is O(1) whatever the number of symbols: each (symbol, head) window keeps
running sums of its log loss and hits (:meth:`LiveScorer.running`, what the scrape's gauges
read), updated as a pair enters and the oldest leaves, and re-summed exactly once every
``window`` entries so rounding cannot drift (amortised O(1)). The full report with AUC
(:meth:`LiveScorer.report`, for ``GET /model/health``) is computed on demand and cached.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from service.features import VOL_LABEL_BARS  # ranges in the label's median (bars t-47..t)
from service.model.card import HEADS
from service.monitor.live_metrics import EPS, Scores, no_skill, score


def range_rel(high: float, low: float, close: float) -> float:
    """(h − l) / c, the range feature and the volatility label's quantity."""
    return (high - low) / close


def direction_label(open_next: float, close_next: float) -> float:
    """1.0 if the next candle closes above its open, else 0.0."""
    return 1.0 if close_next > open_next else 0.0


def volatility_label(range_next: float, ranges: Sequence[float]) -> float:
    """1.0 if the next candle's range is above the median of the last 48 ranges, else 0.0."""
    if len(ranges) != VOL_LABEL_BARS:
        raise ValueError(f"the volatility label needs {VOL_LABEL_BARS} ranges, got {len(ranges)}")
    return 1.0 if range_next > statistics.median(ranges) else 0.0


class Outcome(NamedTuple):
    """One scored signal: candle t's probabilities and the labels candle t+1 gave."""

    symbol: str
    candle_start: int
    probability_up: float
    probability_high_vol: float
    direction: float
    volatility: float


class _Pending(NamedTuple):
    candle_start: int
    probability_up: float
    probability_high_vol: float


def _loss(y: float, p: float) -> float:
    """One pair's log loss in nats (``live_metrics.log_loss``'s clipping)."""
    q = min(max(p, EPS), 1.0 - EPS)
    return -math.log(q) if y > 0.5 else -math.log(1.0 - q)


def _hit(y: float, p: float) -> float:
    """1.0 when the prediction's class (p > 0.5) is the label's."""
    return 1.0 if (p > 0.5) == (y > 0.5) else 0.0


class _Running:
    """Running log-loss and hit sums of one window, O(1) per pair."""

    __slots__ = ("hits", "loss", "since_exact")

    def __init__(self) -> None:
        self.loss = 0.0
        self.hits = 0.0
        self.since_exact = 0

    def push(self, window: deque[tuple[float, float]], y: float, p: float) -> None:
        """Append (y, p) to ``window`` (a bounded deque) and keep the sums in step."""
        maxlen = window.maxlen or 0
        if len(window) == maxlen:
            oy, op = window[0]
            self.loss -= _loss(oy, op)
            self.hits -= _hit(oy, op)
        window.append((y, p))
        self.loss += _loss(y, p)
        self.hits += _hit(y, p)
        self.since_exact += 1
        if self.since_exact >= maxlen:  # re-sum exactly: subtraction's rounding cannot pile up
            self.resum(window)

    def resum(self, window: deque[tuple[float, float]]) -> None:
        self.loss = math.fsum(_loss(y, p) for y, p in window)
        self.hits = sum(_hit(y, p) for y, p in window)
        self.since_exact = 0


class _SymbolScore:
    __slots__ = (
        "last_start",
        "live_seen",
        "model",
        "pending",
        "ranges",
        "running",
        "total",
        "window",
    )

    def __init__(self, window: int) -> None:
        self.ranges: deque[float] = deque(maxlen=VOL_LABEL_BARS)
        self.last_start: int | None = None
        self.pending: _Pending | None = None
        self.live_seen = False
        self.model = ""  # sha256 of the model whose signals fill the window
        # per head: (label, probability) of the last N scored candles
        self.window: dict[str, deque[tuple[float, float]]] = {
            h: deque(maxlen=window) for h in HEADS
        }
        self.total = dict.fromkeys(HEADS, 0)
        self.running = {h: _Running() for h in HEADS}


class LiveScorer:
    """Rolling per-symbol, per-head scores over the last ``window`` scored candles."""

    def __init__(self, symbols: Iterable[str], step_ms: int, window: int = 288) -> None:
        if window < 1:
            raise ValueError("the scoring window needs at least one candle")
        self.step_ms = step_ms
        self.window = window
        self._states = {s: _SymbolScore(window) for s in symbols}
        # report cache: (symbol, head) -> (total, window length, result); the API and the
        # scrape ask far more often than candles close, and AUC sorts the window
        self._cache: dict[tuple[str, str], tuple[int, int, tuple[Scores, Scores]]] = {}

    @property
    def symbols(self) -> list[str]:
        return list(self._states)

    def on_kline(
        self, symbol: str, start: int, open_: float, high: float, low: float, close: float
    ) -> Outcome | None:
        """A closed kline; returns the outcome of the previous candle's signal, if scored."""
        st = self._states.get(symbol)
        if st is None or (st.last_start is not None and start <= st.last_start):
            return None
        rng = range_rel(high, low, close)
        out = None
        pend = st.pending
        if (
            pend is not None
            and start == pend.candle_start + self.step_ms
            and len(st.ranges) == VOL_LABEL_BARS
        ):
            out = Outcome(
                symbol,
                pend.candle_start,
                pend.probability_up,
                pend.probability_high_vol,
                direction_label(open_, close),
                volatility_label(rng, st.ranges),
            )
            st.running["direction"].push(st.window["direction"], out.direction, out.probability_up)
            st.running["volatility"].push(
                st.window["volatility"], out.volatility, out.probability_high_vol
            )
            st.total["direction"] += 1
            st.total["volatility"] += 1
        st.pending = None
        st.ranges.append(rng)
        st.last_start = start
        return out

    def on_signal(
        self,
        symbol: str,
        candle_start: int,
        p_up: float,
        p_high_vol: float,
        live: bool,
        model: str = "",
    ) -> None:
        """The signal made for the newest kline of ``symbol``; it waits for the next candle."""
        st = self._states.get(symbol)
        if st is None or candle_start != st.last_start:
            return
        if model != st.model:  # another model now serves: its own window
            st.model = model
            for h, w in st.window.items():
                w.clear()
                st.running[h].resum(w)
        st.live_seen = st.live_seen or live
        if st.live_seen:
            st.pending = _Pending(candle_start, p_up, p_high_vol)

    def scored_total(self, symbol: str, head: str) -> int:
        """Signals of ``symbol`` scored for ``head`` since the journal began."""
        return self._states[symbol].total[head]

    def running(self, symbol: str, head: str) -> tuple[int, float, float] | None:
        """(n, log loss, accuracy) over the window from the running sums, O(1); None before
        the first outcome. Equal to :meth:`report`'s figures to rounding (~1e-12)."""
        st = self._states[symbol]
        n = len(st.window[head])
        if not n:
            return None
        run = st.running[head]
        return n, run.loss / n, run.hits / n

    def pairs(self, symbol: str, head: str) -> list[tuple[float, float]]:
        """(label, probability) of the last N scored candles, oldest first."""
        return list(self._states[symbol].window[head])

    def report(self, symbol: str, head: str) -> tuple[Scores, Scores] | None:
        """(model scores, no-skill scores) over the window; None before the first outcome."""
        st = self._states[symbol]
        pairs = st.window[head]
        if not pairs:
            return None
        key = (symbol, head)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == st.total[head] and hit[1] == len(pairs):
            return hit[2]
        y = [a for a, _ in pairs]
        p = [b for _, b in pairs]
        result = score(y, p), no_skill(y)
        self._cache[key] = (st.total[head], len(pairs), result)
        return result
