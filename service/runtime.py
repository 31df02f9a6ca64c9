"""The one runtime container: every long-lived object of a running service, no globals.

``Runtime(settings)`` only builds plain objects (no I/O, no event loop needed), so
``create_app`` stays cheap and testable. :meth:`Runtime.start` (from the lifespan) loads and
verifies the model, opens the paper journal and resumes the account, then starts the
feed and pipeline tasks on the candle thread (:mod:`service.pipeline.candle_loop`: closed candles
never wait behind HTTP requests) and the paper task on the API's loop; :meth:`Runtime.stop`
cancels them and awaits them with a timeout, then stops the candle thread. Live signals
reach the paper trader once per burst (``candle_loop.Handoff``) into its bounded queue.
Readiness,
staleness and model reloads are answered here for the API.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from service.market.feed import KlineFeed
from service.market.klines import KlineEvent, interval_ms
from service.market.limits import rest_limiter
from service.market.rest import RestKlines
from service.metrics import Metrics
from service.model.predictor import ModelSlot, Predictor
from service.monitor.model_monitor import ModelMonitor
from service.monitor.roles import ModelRoles
from service.paper.account import (
    EQUITY_POINTS,
    PaperAccount,
    PaperTrader,
    check_terms,
    replay_fills,
)
from service.paper.journal import Journal
from service.paper.policy import resolve as resolve_policy
from service.pipeline.candle_loop import CandleLoop, Handoff
from service.pipeline.scoring import Pipeline
from service.pipeline.signals import Signal, SignalStore
from service.settings import Settings

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 5.0


class Feed(Protocol):
    """What the runtime needs from a market-data feed (``service.market.feed.KlineFeed``)."""

    @property
    def connected(self) -> bool: ...

    async def run(self) -> None: ...


FeedFactory = Callable[[Settings, "asyncio.Queue[KlineEvent]", Metrics], Feed]


def bybit_feed(
    settings: Settings,
    queue: asyncio.Queue[KlineEvent],
    metrics: Metrics,
    direct: Callable[[KlineEvent], object] | None = None,
) -> Feed:
    """The real feed: Bybit (or the replay exchange) websocket + REST backfill."""

    feed: Feed = KlineFeed(
        symbols=list(settings.symbols),
        interval=settings.interval,
        ws_url=settings.ws_url,
        # one bucket for every REST request of the process (lanes and clock probes)
        rest=RestKlines(settings.rest_url, limiter=rest_limiter(settings.rest_per_5s)),
        out=queue,
        metrics=metrics,
        backfill_bars=settings.backfill_bars,
        ping_interval_s=settings.ping_interval_s,
        emit_interim=False,  # the pipeline uses closed candles only
        direct=direct,
    )
    return feed


class Runtime:
    """Settings, metrics, model slot, signal store, pipeline, paper trader, feed and tasks."""

    def __init__(
        self,
        settings: Settings,
        *,
        feed_factory: FeedFactory | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.clock = clock  # local receive clock, same base as KlineEvent.received_ns
        self.interval_s = interval_ms(settings.interval) / 1000.0
        self.stale_after_s = settings.stale_after_intervals * self.interval_s
        self.slot = ModelSlot()
        self.store = SignalStore(settings.symbols)
        self.journal = Journal(settings.state_dir) if settings.paper_enabled else None
        self.trader: PaperTrader | None = None
        self.policy_source = ""  # where the paper policy in force came from (the page says)
        self.monitor = ModelMonitor(
            symbols=settings.symbols,
            interval=settings.interval,
            state_dir=settings.state_dir,
            metrics=self.metrics,
            score_window=settings.score_window,
            drift_window=settings.drift_window,
            retention_days=settings.journal_retention_days,
        )
        self.pipeline = Pipeline(
            symbols=settings.symbols,
            interval=settings.interval,
            slot=self.slot,
            store=self.store,
            metrics=self.metrics,
            long_threshold=settings.long_threshold,
            short_threshold=settings.short_threshold,
            observer=self.monitor.offer_burst,
            # no signal from features that are not exact yet (EXACT_HORIZON_BARS by default)
            horizon_bars=settings.signal_horizon_bars,
        )
        # champion and challenger (DESIGN section 12): registry, shadow scoring, promotion
        self.roles = ModelRoles.build(
            self.monitor,
            self._install,
            model_dir=settings.registry_dir,
            state_dir=settings.state_dir,
            min_scored=settings.promote_min_scored,
            margin=settings.promote_margin,
            auto_promote=settings.auto_promote,
        )
        self.pipeline.shadow = self.roles.shadow.score
        self.pipeline.observer = self.roles.shadow.tee(self.monitor.offer_burst)
        self.feed_factory = feed_factory or self._bybit_feed
        self.feed: Feed | None = None
        self.queue: asyncio.Queue[KlineEvent] | None = None
        self.candles = CandleLoop()  # the feed's and pipeline's thread and loop
        self.tasks: dict[str, asyncio.Task[None]] = {}  # paper: this loop; the rest: candles
        self.started_at = time.time()
        self._reload_lock: asyncio.Lock | None = None

    def _bybit_feed(
        self, settings: Settings, queue: asyncio.Queue[KlineEvent], metrics: Metrics
    ) -> Feed:
        # closed candles go straight to the pipeline when its queue is empty (no task switch)
        return bybit_feed(settings, queue, metrics, direct=self.pipeline.handle)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model, resume the paper account, start feed, pipeline and trader."""
        s = self.settings
        predictor = await asyncio.to_thread(self.roles.load_champion, s.model)  # the recorded one
        self._install(predictor)
        self._warn_if_mismatched(predictor)
        # scores, drift and chart rebuilt from the signal journal; the pipeline (candle thread)
        # hands its rows to the monitor on this loop
        await self.monitor.start()
        self._spawn("signal-journal", self.monitor.run())
        await self.roles.start()  # the challenger and both live scores, from the journal
        if self.journal is not None:
            journal = self.journal
            await journal.call(journal.open)
            terms = await journal.call(
                journal.current_account,
                s.paper_initial_usdt,
                s.paper_notional_usdt,
                s.paper_fee_bps,
                s.paper_slippage_bps,
            )
            try:  # an account opened before terms were checked may be one that cannot trade
                check_terms(
                    terms.initial_usdt, terms.notional_usdt, terms.fee_bps, terms.slippage_bps
                )
            except ValueError as exc:
                log.error("paper account %d cannot trade (%s): opening a new one", terms.epoch, exc)
                terms = await journal.call(
                    journal.new_account,
                    s.paper_initial_usdt,
                    s.paper_notional_usdt,
                    s.paper_fee_bps,
                    s.paper_slippage_bps,
                )
            fills = await journal.call(journal.fills, terms.epoch)
            curve = await journal.call(journal.curve_state, terms.epoch, EQUITY_POINTS)
            policy, source = resolve_policy(
                s.policy, predictor.card.policy, s.long_threshold, s.short_threshold
            )
            self.policy_source = source
            account: PaperAccount = replay_fills(terms, fills, curve, policy)
            log.info("paper policy %s (%s)", policy.name, source)
            self.trader = PaperTrader(journal, account, self.metrics)
            # the pipeline runs on the candle thread; the trader lives on this loop
            self.pipeline.sink = Handoff(asyncio.get_running_loop(), self.trader.offer)
            log.info(
                # a fresh journal (or a fresh account) has nothing to resume
                "paper account %d %s %s: %d fills, equity %.2f USDT",
                terms.epoch,
                "resumed from" if fills else "(no fills yet) in",
                journal.path,
                len(fills),
                account.equity,
            )
        self._reload_lock = asyncio.Lock()
        self.queue = asyncio.Queue(maxsize=s.queue_size)
        self.feed = self.feed_factory(s, self.queue, self.metrics)
        # Start-up objects (modules, the model, pydantic schemas: ~85k) never die; frozen,
        # a full collection skips them (measured: 17.7 ms -> ~0 ms for gc.collect(2) on the
        # service's start-up heap), so a rare gen-2 pass cannot stall a candle for ms.
        gc.collect()
        gc.freeze()
        if self.trader is not None:
            self._spawn("paper", self.trader.run())
        self.candles.start()
        for name, coro in (("pipeline", self.pipeline.run(self.queue)), ("feed", self.feed.run())):
            self.tasks[name] = await self.candles.spawn(name, coro, self._on_task_done)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """A task on this (the API's) loop."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        self.tasks[name] = task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s task stopped: %r", task.get_name(), exc, exc_info=exc)
        else:
            log.error("%s task returned unexpectedly", task.get_name())

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Cancel the tasks (feed first, the journal writer last) and await them."""
        await self.candles.stop(order=("feed", "pipeline"), timeout_s=timeout_s)
        for name in ("paper",):
            task = self.tasks.get(name)
            if task is None:
                continue
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                log.warning("%s task did not stop within %.1fs", name, timeout_s)
        if self.trader is not None and self.journal is not None:
            try:  # the points of a burst the trader was booking when it was cancelled
                await self.trader.flush_points()
            except Exception as exc:  # a failing disk at shutdown costs curve points only
                log.warning("paper: equity points not journaled at shutdown: %s", exc)
        task = self.tasks.get("signal-journal")
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=timeout_s)
        # What the pipeline handed over is committed before the journal closes.
        await self.roles.shadow.aclose()
        await self.monitor.aclose()
        if self.journal is not None:
            # Waits for an in-flight fill to commit; what is in the journal is the account.
            await self.journal.aclose()
        gc.unfreeze()
        self.metrics.ready.set(0)

    # ------------------------------------------------------------------ model
    def _install(self, predictor: Predictor) -> None:
        self.slot.swap(predictor)
        info = self.metrics.model_info
        info.clear()
        info.labels(name=predictor.card.name, version=predictor.card.version).set(1)

    def _warn_if_mismatched(self, predictor: Predictor) -> None:
        card = predictor.card
        if card.interval != self.settings.interval:
            log.warning(
                "model %s was trained on interval %s, serving interval %s",
                card.name,
                card.interval,
                self.settings.interval,
            )

    async def reload_model(self, path: Path | None = None) -> Predictor:
        """Load and validate ``path`` (default: the configured model) off the event loop, then
        swap it in atomically. A bad model raises ModelCardError and the old one keeps serving.
        """
        target = path or self.settings.model
        lock = self._reload_lock or asyncio.Lock()
        async with lock:
            try:
                predictor = await asyncio.to_thread(
                    Predictor.load, target, target.with_suffix(".json")
                )
            except Exception:
                self.metrics.model_reloads.labels(result="rejected").inc()
                raise
            self._install(predictor)
            await asyncio.to_thread(self.roles.record_champion, predictor)
            self._warn_if_mismatched(predictor)
            self.metrics.model_reloads.labels(result="ok").inc()
            log.info(
                "model reloaded: %s %s from %s", predictor.card.name, predictor.card.version, target
            )
            return predictor

    # ------------------------------------------------------------------ health and readiness
    def uptime_s(self) -> float:
        """Seconds since the runtime was built."""
        return time.time() - self.started_at

    def age_s(self, received_ns: int) -> float:
        """Seconds since a local receive-clock reading."""
        return max(0.0, (self.clock() - received_ns) / 1e9)

    def is_stale(self, signal: Signal) -> bool:
        """No newer closed candle for ``stale_after_intervals`` intervals (local clock)."""
        return self.age_s(signal.received_ns) > self.stale_after_s

    def task_problems(self) -> list[str]:
        """Tasks that ended while the service runs (a liveness failure)."""
        out = []
        for name, task in self.tasks.items():
            if task.done() and not task.cancelled():
                exc = task.exception()
                out.append(f"{name} task stopped: {exc!r}" if exc else f"{name} task returned")
        return out

    def health_problems(self) -> list[str]:
        """What /health reports: dead tasks, and a paper account that keeps failing."""
        problems = self.task_problems()
        if self.trader is not None:
            problems += self.trader.problems()
        return problems

    def readiness(self) -> list[str]:
        """Reasons the service is not ready; empty when it is. Updates the ready gauge."""
        reasons = list(self.task_problems())
        if self.slot.current is None:
            reasons.append("model not loaded")
        if self.feed is None or not self.feed.connected:
            reasons.append("feed not connected to the exchange websocket")
        # the feed's own account of what it waits for (a REST warm-up that fails, ...)
        feed_problems = getattr(self.feed, "problems", None)
        if callable(feed_problems):
            reasons += feed_problems()
        for symbol in self.settings.symbols:
            st = self.pipeline.states[symbol]
            if not st.warm:
                reasons.append(f"{symbol}: warming up ({st.bars}/{st.needed} closed candles)")
                continue
            signal = self.store.latest(symbol)
            if signal is None:
                reasons.append(f"{symbol}: no signal yet")
            elif self.is_stale(signal):
                reasons.append(
                    f"{symbol}: stale (last closed candle received "
                    f"{self.age_s(signal.received_ns):.0f}s ago, limit {self.stale_after_s:.0f}s)"
                )
        self.metrics.ready.set(0 if reasons else 1)
        return reasons

    def warm_retry_after_s(self, symbol: str) -> int:
        """A Retry-After estimate for a warming symbol: soon while backfill may still arrive."""
        st = self.pipeline.states[symbol]
        if st.bars == 0:
            return 5  # nothing yet: backfill is on its way (or the feed is reconnecting)
        missing = max(1, st.needed - st.bars)
        return int(min(missing * self.interval_s, 3600))

    def refresh_gauges(self) -> None:
        """Scrape-time gauges (the feed keeps queue depth and kline ages itself)."""
        self.readiness()
        predictor = self.slot.current
        self.monitor.update_gauges(predictor.card if predictor is not None else None)
        self.roles.update_gauges()
        if self.trader is not None:
            self.trader.update_gauges()
