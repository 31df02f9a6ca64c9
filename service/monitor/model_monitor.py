"""Is the model still working: the signal journal, live scores, feature drift, chart points.

:class:`ModelMonitor` is fed by the pipeline — one :meth:`offer` per closed kline it used,
with the feature vector and the signal it made (if any). The pipeline runs on the candle
thread (:mod:`service.pipeline.candle_loop`), the monitor on the API's loop: the pipeline
hands over a whole burst at once (:meth:`offer_burst`, one list per batched call), which
appends it to a deque (thread-safe) and schedules :meth:`_drain` on the monitor's loop with
``call_soon_threadsafe``, so the candle's own path pays one append and one loop wake-up per
burst, and the journal commits a burst in one transaction (not one per signal); everything
the API reads is then only touched on its own loop. The drain scores
the previous candle (:class:`service.monitor.live_score.LiveScorer`), keeps the last live feature
vectors for drift and the chart points, and hands the rows to the journal writer task, which
commits them in batches on its own thread (:class:`service.monitor.signal_journal.SignalJournal`).
A committed row survives kill -9; the rows of the last few milliseconds before a kill may
not (they are re-made from backfill on restart, flagged as such).

On start the scores, drift vectors and chart are rebuilt from the journal by replaying it
through the same code, so a restart continues where the service stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from service.features import batch_features
from service.market.klines import Kline, KlineEvent, interval_ms
from service.metrics import Metrics
from service.model.card import HEADS, ModelCard
from service.monitor.drift import LiveDrift
from service.monitor.health_report import drift_report, score_report
from service.monitor.live_score import LiveScorer, Outcome
from service.monitor.signal_journal import KlineRow, SignalJournal, SignalRow
from service.pipeline.signals import Signal

log = logging.getLogger(__name__)
T = TypeVar("T")
F64 = npt.NDArray[np.float64]
CHART_POINTS = 300  # per symbol: a day of 5-minute candles and then some
Observed = tuple[KlineEvent, F64 | None, Signal | None]  # a kline, its vector, its signal
MAX_PENDING_ROWS = 100_000  # rows held while the journal cannot write; older ones are dropped


class ChartPoint(NamedTuple):
    """One candle on the dashboard's price chart."""

    candle_start: int
    close: float
    action: str
    probability_high_vol: float


class ModelMonitor:
    """Journal writer, live scorer, drift window and chart points of one service."""

    def __init__(
        self,
        *,
        symbols: Iterable[str],
        interval: str,
        state_dir: Path,
        metrics: Metrics,
        score_window: int = 288,
        drift_window: int = 288,
        retention_days: float = 30.0,
    ) -> None:
        self.symbols = list(symbols)
        self.interval = interval
        self.metrics = metrics
        self.journal = SignalJournal(state_dir, retention_days)
        self.scorer = LiveScorer(self.symbols, interval_ms(interval), score_window)
        # live feature vectors of every symbol, pooled: N per symbol, binned as they come
        self.drift_window = drift_window
        self.vectors = LiveDrift(drift_window * len(self.symbols))
        self.chart: dict[str, deque[ChartPoint]] = {
            s: deque(maxlen=CHART_POINTS) for s in self.symbols
        }
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(): the drain's loop
        self.errors = 0
        self.write_errors = 0
        self._write_failing = 0  # failed writes since the last good one (logged once)
        self.rows_written = 0
        self.dropped_rows = 0
        self.retry_s = 1.0  # pause after a failed write
        self._inbox: deque[Sequence[Observed]] = deque()
        self._scheduled = False
        self._klines: list[KlineRow] = []
        self._signals: list[SignalRow] = []
        self._wake: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        # per-symbol series within the metrics' ceiling; the rest count under "_other"
        self._m_scored = {
            (s, h): metrics.live_scored.labels(symbol=metrics.symbol_label(s), head=h)
            for s in self.symbols
            for h in HEADS
        }
        own = [s for s in self.symbols if metrics.symbol_label(s) == s]
        self._m_live = [
            (
                s,
                h,
                metrics.live_log_loss.labels(symbol=s, head=h, role="champion"),
                metrics.live_accuracy.labels(symbol=s, head=h),
            )
            for s in own
            for h in HEADS
        ]

    # ------------------------------------------------------------------ the hot side
    def offer(self, event: KlineEvent, vec: F64 | None, signal: Signal | None) -> None:
        """One closed kline the pipeline used, its feature vector and signal (a burst of one)."""
        self.offer_burst(((event, vec, signal),))

    def offer_burst(self, items: Sequence[Observed]) -> None:
        """The closed klines of one batched call, each with its feature vector and signal:
        O(1), no I/O, callable from any thread. Before :meth:`start` (tests) it is drained at
        once."""
        self._inbox.append(items)  # append first, then look at the flag:
        if not self._scheduled:  # a drain that already cleared it will be followed by ours
            self._scheduled = True
            if self._loop is None:
                self._drain()
            else:
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False  # cleared before taking: a later offer schedules again
        inbox = self._inbox
        while inbox:
            for event, vec, signal in inbox.popleft():
                try:
                    self._take(event, vec, signal)
                except Exception:  # bookkeeping must never stop the service
                    self.errors += 1
                    log.exception("monitor: could not record %s", event.kline.symbol)
        if self._wake is not None and (self._klines or self._signals):
            self._wake.set()

    def _take(self, event: KlineEvent, vec: F64 | None, signal: Signal | None) -> None:
        k = event.kline
        self._klines.append(_kline_row(k, event.source))
        out = self._score(k, signal)
        if out is not None:
            self._m_scored[(k.symbol, "direction")].inc()
            self._m_scored[(k.symbol, "volatility")].inc()
        if vec is not None and event.source == "ws":
            self.vectors.append(vec)
        if signal is not None:
            self._signals.append(_signal_row(signal))

    def _score(self, k: Kline, signal: Signal | None) -> Outcome | None:
        out = self.scorer.on_kline(k.symbol, k.start, k.open, k.high, k.low, k.close)
        if signal is not None:
            self.scorer.on_signal(
                k.symbol,
                signal.candle_start,
                signal.probability_up,
                signal.probability_high_vol,
                signal.live,
                signal.model_sha256,
            )
            self.chart[k.symbol].append(
                ChartPoint(k.start, k.close, signal.action, signal.probability_high_vol)
            )
        return out

    # ------------------------------------------------------------------ lifecycle
    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signal-journal")
        return self._executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the journal's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self) -> None:
        """Open the journal and rebuild scores, drift and chart from it (before any kline);
        from now on the drain runs on the calling loop."""
        self._wake = asyncio.Event()
        await self.call(self.journal.open)
        t0 = time.perf_counter()
        n = await self.call(self._rebuild)
        log.info(
            "signal journal %s: %d signals replayed in %.2fs", self.journal.path, n, _since(t0)
        )
        self._loop = asyncio.get_running_loop()

    def _rebuild(self) -> int:
        """Replay the journal through the scorer (runs before the pipeline starts)."""
        replayed = 0
        for sym in self.symbols:
            klines = self.journal.klines(sym, self.interval)
            signals = {s.candle_start: s for s in self.journal.signals(sym, self.interval)}
            for row in klines:
                sig = signals.get(row.start)
                out = self.scorer.on_kline(sym, row.start, row.open, row.high, row.low, row.close)
                if out is not None:
                    self._m_scored[(sym, "direction")].inc()
                    self._m_scored[(sym, "volatility")].inc()
                if sig is not None:
                    replayed += 1
                    self.scorer.on_signal(
                        sym,
                        sig.candle_start,
                        sig.probability_up,
                        sig.probability_high_vol,
                        sig.live,
                        sig.model_sha256,
                    )
                    self.chart[sym].append(
                        ChartPoint(row.start, row.close, sig.action, sig.probability_high_vol)
                    )
            self._rebuild_vectors(klines)
        return replayed

    def _rebuild_vectors(self, klines: list[KlineRow]) -> None:
        if not klines:
            return
        cols = np.array([(r.open, r.high, r.low, r.close, r.volume) for r in klines])  # (N, 5)
        feats = batch_features(*cols.T)  # (N, F); journaled klines are the service's history
        live = [i for i, r in enumerate(klines) if r.source == "ws"][-self.drift_window :]
        for i in live:
            if not np.isnan(feats[i]).any():
                self.vectors.append(feats[i])

    async def run(self) -> None:
        """The writer: commit what the drain collected, in batches, until cancelled."""
        assert self._wake is not None, "start() first"
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Commit the collected rows now (a failed write keeps them for the next try)."""
        klines, signals = self._klines, self._signals
        if not klines and not signals:
            return
        self._klines, self._signals = [], []
        t0 = time.perf_counter()
        try:
            await self.call(self.journal.write, klines, signals)
        except Exception:
            self.write_errors += 1
            self._write_failing += 1
            self.metrics.journal_errors.inc()
            if self._write_failing == 1:  # once per state change, not once per retry
                log.exception(
                    "signal journal: write failed, %d rows kept; retrying every %g s quietly "
                    "(apprentice_journal_errors_total counts the failures)",
                    len(klines) + len(signals),
                    self.retry_s,
                )
            self._klines[:0], self._signals[:0] = klines, signals
            self._bound_pending()
            await asyncio.sleep(self.retry_s)  # a full disk does not want a busy loop
            return
        self.metrics.journal_write_seconds.observe(_since(t0))
        self.rows_written += len(klines) + len(signals)
        if self._write_failing:
            log.warning("signal journal: writing again after %d failed tries", self._write_failing)
            self._write_failing = 0

    def _bound_pending(self) -> None:
        """A journal that keeps failing must not grow memory without bound: keep the newest."""
        for rows in (self._klines, self._signals):
            excess = len(rows) - MAX_PENDING_ROWS
            if excess > 0:
                del rows[:excess]
                self.dropped_rows += excess

    async def aclose(self) -> None:
        """Commit what is left, close the journal, stop its thread (after the pipeline)."""
        if self._executor is None:
            return
        if self._inbox:
            self._drain()
        try:
            await self.flush()
        finally:
            await self.call(self.journal.close)
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, True)

    # ------------------------------------------------------------------ reports
    def drift(self, card: ModelCard | None) -> dict[str, Any]:
        """PSI per feature of the pooled live vectors against the card's reference."""
        return drift_report(self.vectors, self.drift_window, card)

    def scores(self, card: ModelCard | None) -> dict[str, Any]:
        """Per symbol and head: live figures, no-skill reference, card test figures, N."""
        return score_report(self.scorer, card)

    def update_gauges(self, card: ModelCard | None) -> None:
        """Live log loss / accuracy per (symbol, head) within the metrics' per-symbol ceiling
        and PSI per feature (scrape time): O(ceiling + F × bins), from running sums and
        counts kept as candles come, whatever the number of symbols."""
        m = self.metrics
        running = self.scorer.running
        for sym, head, g_loss, g_acc in self._m_live:
            rep = running(sym, head)
            if rep is None:
                continue
            _, loss, acc = rep
            g_loss.set(loss)
            g_acc.set(acc)
        for name, value in self.drift(card)["features"].items():
            if value is not None:
                m.feature_psi.labels(feature=name).set(value)

    def chart_points(self, symbol: str, limit: int) -> list[ChartPoint]:
        """The last ``limit`` chart points of ``symbol``, oldest first."""
        pts = list(self.chart[symbol])
        return pts[-limit:] if limit > 0 else []


def _kline_row(k: Kline, source: str) -> KlineRow:
    return KlineRow(
        k.symbol, k.interval, k.start, k.open, k.high, k.low, k.close, k.volume, k.turnover, source
    )


def _signal_row(s: Signal) -> SignalRow:
    return SignalRow(
        symbol=s.symbol,
        interval=s.interval,
        candle_start=s.candle_start,
        probability_up=s.probability_up,
        probability_high_vol=s.probability_high_vol,
        action=s.action,
        live=s.live,
        model_name=s.model_name,
        model_version=s.model_version,
        model_sha256=s.model_sha256,
        generated_ms=int(s.generated_at * 1000),
    )


def _since(t0: float) -> float:
    return time.perf_counter() - t0
