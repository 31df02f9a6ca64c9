"""The Bybit kline feed: websockets that never lose a closed candle, and never give up.

Shape (why): the readers only read; each frame goes socket → parse
(:mod:`service.market.bybit`) → its symbol's sequencer (:mod:`service.market.sequencer`, pure)
→ the consumer, and never comes back; whatever REST a sequencer asks for runs in that
symbol's own task (:class:`service.market.backfill.Lane`, a bounded queue), never in a
connection's task, so one symbol's hanging, trickling or failing REST cannot delay another
symbol's candles. Each REST request has a total deadline and capped bytes
(:mod:`service.market.rest`) and takes a token from the process's REST bucket
(:mod:`service.market.limits`, below Bybit's 600 requests per 5 s).

``KlineFeed.run()`` opens the websockets at once and, beside them, backfills
``backfill_bars`` closed candles per symbol by REST, every symbol's lane at the same time (a
symbol's confirms are held, bounded, until its history is in). The topics are split into
groups within Bybit's per-connection ``args`` budget
(:func:`~service.market.limits.plan_connections`; one group, one connection, for up to ~800
symbols), and each group gets its own
:class:`~service.market.connection.FeedConnection`: its own socket, subscription book,
watchdog, backoff and reconnects, opened through one connect bucket (Bybit: 500 per 5 min),
read by a task that never waits for processing. Each connection keeps its socket open for
good: subscribe in small batches (acks matched by ``req_id``; a topic the exchange does not
know is dropped, the rest of its batch resubscribed, and the topic asked for again every
``refused_retry_s``), JSON ping every ``ping_interval_s``, a watchdog on both "anything
received" and "kline data received", reconnect with capped, jittered backoff after any close
or error (minutes after an HTTP 403), and REST for every closed candle the socket did not
deliver.

Never stops by itself after start-up: before any candle was delivered, an exchange refusal
of a symbol or of every topic is a configuration error (:class:`ConfigError`, the service
refuses to start); after that, a refused or delisted symbol is out of service (log line,
``apprentice_symbol_problem``, a /ready reason) and retried slowly, while the others serve.

Bad input (DESIGN section 10): every frame is checked against its symbol's clock before it
is used (``future``; REST is then asked for the exchange's time in case the world really
moved on); websocket confirms and REST rows that cannot be true are refused and counted;
exchange notices are counted and logged cut short, a few per minute at most.

Hand-off contract (``out``): every closed candle exactly once, in order per symbol, REST
backfill first with ``source="rest"``. Overflow policy: closed candles use blocking
back-pressure (``await out.put``) — a connection's processing task pauses, its reader goes on
reading into the connection's bounded frame queue (whose overflow drops frames, counted, and
REST repairs the candles they carried: :mod:`service.market.connection`), a candle is never
dropped; interim (confirm=false) updates, if ``emit_interim``, are dropped when the queue is
full and counted as ``klines_rejected_total{reason="queue_overflow"}``. Consumers must
ignore events whose ``kline.confirm`` is false for features.

Direct hand-off (``direct``): a closed websocket candle that finds the queue empty is passed
to ``direct(event)`` in the feed's own task instead — no queue, no task switch, the signal
is stored before the next frame is handled (this halved frame → signal latency). It must be
the queue's consumer, processing synchronously, and that consumer must handle each event in
the same step as it takes it from the queue (``Pipeline.run``): then an empty queue means
every earlier event is done, and order is kept. REST fills always go through the queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from service.market.backfill import Lane
from service.market.bybit import KlineFrame, kline_topic
from service.market.connection import (
    FRAME_QUEUE_BYTES,
    FRAME_QUEUE_FRAMES,
    ConnectionOptions,
    FeedConnection,
)
from service.market.klines import KlineEvent, interval_ms
from service.market.limits import ARGS_BUDGET_CHARS, TokenBucket, connect_limiter, plan_connections
from service.market.log_limit import LogLimit
from service.market.rest import Backoff, ConfigError, RestError, RestKlines
from service.market.sequencer import CandleSequencer, Decision
from service.metrics import Metrics

__all__ = ["Backoff", "ConfigError", "KlineFeed"]
log = logging.getLogger(__name__)


class KlineFeed:
    """Closed (and optionally interim) klines of ``symbols`` onto ``out``; no I/O on init."""

    def __init__(
        self,
        *,
        symbols: list[str],
        interval: str,
        ws_url: str,
        rest: RestKlines,
        out: asyncio.Queue[KlineEvent],
        metrics: Metrics,
        backfill_bars: int = 300,
        ping_interval_s: float = 20.0,
        backoff: Backoff | None = None,
        silence_timeout_s: float | None = None,
        data_timeout_s: float = 90.0,
        ack_timeout_s: float = 10.0,
        subscribe_batch: int = 10,
        grace_ms: int = 10_000,
        fill_retry_ms: int = 5_000,
        forbidden_backoff_s: float = 600.0,
        stable_after_s: float = 30.0,
        open_timeout_s: float = 10.0,
        recycle_after_s: float | None = 24 * 3600.0,
        emit_interim: bool = True,
        direct: Callable[[KlineEvent], object] | None = None,
        warmup_backoff: Backoff | None = None,
        ahead_intervals: int = 3,
        max_jump: float = 0.2,
        probe_every_s: float = 5.0,
        refused_retry_s: float = 600.0,
        args_budget_chars: int = ARGS_BUDGET_CHARS,
        connect_gate: TokenBucket | None = None,
        frame_queue_frames: int = FRAME_QUEUE_FRAMES,
        frame_queue_bytes: int = FRAME_QUEUE_BYTES,
    ) -> None:
        self.symbols = list(symbols)
        self.interval = interval
        self.ws_url = ws_url
        self.rest = rest
        self.out = out
        self.metrics = metrics
        self.backfill_bars = backfill_bars
        self.ping_interval_s = ping_interval_s
        # a pong is due every ping interval: two missed plus margin means a dead socket
        self.silence_timeout_s = silence_timeout_s or 2 * ping_interval_s + 5.0
        self.forbidden_backoff_s = forbidden_backoff_s
        self.emit_interim = emit_interim
        self.direct = direct
        self.step = interval_ms(interval)
        self.topics = {kline_topic(interval, s): s for s in self.symbols}
        self.stats: dict[str, int] = {}
        self.probe_every_s = probe_every_s
        self.refused_retry_s = refused_retry_s
        # repeated lines (notices, error acks, failing fills) at most a few per minute each
        self.logs = LogLimit(
            log,
            on_suppressed=lambda kind: metrics.log_suppressed.labels(kind.split("-", 1)[0]).inc(),
        )
        history = backfill_bars or 1000  # what the service keeps: no fill asks for more
        if rest.on_reject is None:
            rest.on_reject = self.reject  # refused REST rows count like refused frames
        self.lanes = {
            s: Lane(
                CandleSequencer(
                    s,
                    interval,
                    grace_ms=grace_ms,
                    history_bars=history,
                    ahead_intervals=ahead_intervals,
                    max_jump=max_jump,
                    fill_retry_ms=fill_retry_ms,
                ),
                rest=rest,
                metrics=metrics,
                stats=self.stats,
                apply=self._apply,
                logs=self.logs,
                # each lane its own: one symbol's failures never lengthen another's waits
                warmup_backoff=warmup_backoff.copy() if warmup_backoff else Backoff(),
                fill_retry_ms=fill_retry_ms,
                forbidden_backoff_s=forbidden_backoff_s,
                refused_retry_s=refused_retry_s,
            )
            for s in self.symbols
        }
        self._seq = {s: lane.seq for s, lane in self.lanes.items()}
        self._probes: set[asyncio.Task[None]] = set()
        self._probe_at: dict[str, float] = {}
        self._last_rx: dict[str, int] = {}
        self._connected = False
        self._started = False  # a candle was delivered: exchange refusals are no longer fatal
        self._next_due: float = -math.inf  # exchange time from which some idle symbol is due
        # the sockets: topics split within Bybit's args budget, one connection per group
        options = ConnectionOptions(
            ws_url=ws_url,
            ping_interval_s=ping_interval_s,
            silence_timeout_s=self.silence_timeout_s,
            data_timeout_s=data_timeout_s,
            ack_timeout_s=ack_timeout_s,
            subscribe_batch=subscribe_batch,
            forbidden_backoff_s=forbidden_backoff_s,
            stable_after_s=stable_after_s,
            open_timeout_s=open_timeout_s,
            recycle_after_s=recycle_after_s,
            refused_retry_s=refused_retry_s,
            queue_frames=frame_queue_frames,
            queue_bytes=frame_queue_bytes,
        )
        first_backoff = backoff or Backoff()
        self.backoff = first_backoff  # the first connection's (each has its own)
        groups = plan_connections(list(self.topics), args_budget_chars)
        # Bybit allows 500 new connections per 5 min. One connection stays far below by its
        # backoff alone (0.5, 1, 2 ... 30 s: ~15 connects in the worst 5 minutes, then one
        # per ~30 s while it keeps failing or flapping);
        # several share a bucket that opens them in a stagger and caps their reconnects.
        gate = connect_gate or (connect_limiter() if len(groups) > 1 else None)
        self.connections = [
            FeedConnection(
                self,
                group,
                options,
                index=i,
                backoff=first_backoff if i == 0 else first_backoff.copy(),
                gate=gate,
            )
            for i, group in enumerate(groups)
        ]
        metrics.queue_depth.set_function(out.qsize)
        for s in self.symbols:
            metrics.last_kline_age_seconds.labels(s).set_function(functools.partial(self._age, s))
        # counter children resolved once: .labels() per kline showed up in the profile
        self._m_klines = {
            (s, c): metrics.klines.labels(s, "true" if c else "false")
            for s in self.symbols
            for c in (True, False)
        }

    # public face --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while every websocket is open and has at least one subscription acknowledged
        (or kline data); one connection down is every one of its symbols without a feed."""
        return self._connected

    @property
    def reconnects(self) -> int:
        """Reconnects of all connections together."""
        return sum(c.reconnects for c in self.connections)

    @property
    def rejected_topics(self) -> set[str]:
        """Topics the exchange refused, on any connection (asked for again slowly)."""
        return set().union(*(c.rejected_topics for c in self.connections))

    def last_received_ns(self, symbol: str) -> int | None:
        """``time.perf_counter_ns()`` of the last kline frame for ``symbol`` (local clock)."""
        return self._last_rx.get(symbol)

    def last_closed_start(self, symbol: str) -> int | None:
        """Start of the newest closed candle delivered for ``symbol``."""
        return self._seq[symbol].last_start

    def problems(self) -> list[str]:
        """Why symbols cannot get candles, for /ready: a REST warm-up in progress or failing,
        fills that keep failing, a symbol or topic the exchange refuses, a connection of
        several that is down."""
        out = []
        for lane in self.lanes.values():
            why = lane.reason()
            if why is not None:
                out.append(why)
        for topic in sorted(self.rejected_topics):
            symbol = self.topics.get(topic, topic)
            out.append(
                f"{symbol}: subscription refused by the exchange; retrying every "
                f"{self.refused_retry_s:g} s"
            )
        if len(self.connections) > 1:
            for c in self.connections:
                if not c.connected:
                    first, last = self.topics[c.topics[0]], self.topics[c.topics[-1]]
                    out.append(
                        f"websocket {c.index + 1} of {len(self.connections)} "
                        f"({len(c.topics)} symbols, {first} .. {last}) not connected"
                    )
        return out

    async def run(self) -> None:
        """Stream forever, each symbol's REST in its own task beside the websockets (a
        failing REST never keeps a socket closed); returns only by cancellation, or raises
        :class:`ConfigError` when the exchange refuses the configuration at start-up."""
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in self.lanes.values():
                    tg.create_task(lane.run(), name=f"lane-{lane.symbol}")
                    await self._apply(lane.seq, lane.seq.start(self.backfill_bars))
                for conn in self.connections:
                    tg.create_task(conn.run(), name=f"feed-{conn.name}")
        except BaseExceptionGroup as group:
            config = [e for e in group.exceptions if isinstance(e, ConfigError)]
            if config:
                raise config[0] from None
            raise
        finally:
            for task in self._probes:
                task.cancel()
            await asyncio.gather(*self._probes, return_exceptions=True)
            for conn in self.connections:
                conn.connected = False
            self.connection_changed()

    def snapshot(self) -> dict[str, Any]:
        """Counters for logs and tests (frames, closed_ws, closed_rest, gaps, rejected_*...)."""
        return {
            **self.stats,
            "reconnects": self.reconnects,
            "connected": self._connected,
            "connections": len(self.connections),
        }

    # the connections' side (service.market.connection.FeedHost) ----------------------------
    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key`` of :meth:`snapshot`."""
        self.stats[key] = self.stats.get(key, 0) + n

    def reject(self, reason: str) -> None:
        """A frame or kline refused: counted, by reason."""
        self.count(f"rejected_{reason}")
        self.metrics.klines_rejected.labels(reason).inc()

    def connection_changed(self) -> None:
        """A connection opened or closed: the feed is connected while all of them are."""
        self._connected = all(c.connected for c in self.connections)
        self.metrics.ws_connected.set(1 if self._connected else 0)

    def topic_refused(self, topic: str) -> None:
        """The exchange refused ``topic`` for good: before start-up, if no topic is left on
        any connection, the configuration is wrong (:class:`ConfigError`)."""
        self.count("rejected_topics")
        self.metrics.klines_rejected.labels("subscribe_rejected").inc()
        symbol = self.topics.get(topic)
        if symbol is not None:
            self.metrics.symbol_problem.labels(symbol).set(1)
        if not self._started and not any(c.subs.active() for c in self.connections):
            raise ConfigError(f"the exchange rejected every topic: {sorted(self.rejected_topics)}")

    def topic_retried(self, topic: str) -> None:
        """A refused topic is asked for again: its symbol's problem clears unless REST has one."""
        symbol = self.topics.get(topic)
        if symbol is not None and self.lanes[symbol].problem is None:
            self.metrics.symbol_problem.labels(symbol).set(0)

    # internals ----------------------------------------------------------------------------
    def _age(self, symbol: str) -> float:
        rx = self._last_rx.get(symbol)
        return math.nan if rx is None else (time.perf_counter_ns() - rx) / 1e9

    async def on_klines(self, frame: KlineFrame, received_ns: int) -> bool:
        """A connection's kline frame (a topic it has not had refused): to its symbol's
        sequencer; True if it carried data for a subscribed topic."""
        symbol = self.topics.get(frame.topic)
        if symbol is None:
            self.reject("unknown_topic")
            return False
        seq = self._seq[symbol]
        d = seq.on_frame(frame.ts, frame.klines, received_ns)
        if d.probe:  # refused against the symbol's clock: nothing else happened
            await self._apply(seq, d)
            return False
        self._last_rx[symbol] = received_ns
        # exchange time is one: another symbol's overdue confirm is noticed on this frame too;
        # the scan runs only once some idle symbol can be due (_next_due), not on every frame
        if frame.ts >= self._next_due:
            soonest = math.inf
            for other in self._seq.values():
                if other is seq or other.busy:
                    continue
                due = other.on_time(frame.ts)
                if due.fetch is not None:
                    self.stats["late_fills"] = self.stats.get("late_fills", 0) + 1
                    self.lanes[other.symbol].request(due.fetch)
                else:
                    soonest = min(soonest, other.due_from())
            self._next_due = soonest
        if d.fetch is not None and d.fetch.latest == 0 and not d.deliver:
            self.count("gaps" if seq.held else "late_fills")
        await self._apply(seq, d)
        for k in frame.klines:
            self._m_klines[symbol, k.confirm].inc()  # counted after the hand-off
        return True

    async def _apply(self, seq: CandleSequencer, d: Decision) -> None:
        """Carry out a sequencer's decision: closed candles on (in order), interim updates
        offered, refusals counted, a fetch to the symbol's lane, a clock probe started."""
        for reason in d.refused:
            self.reject(reason)
        for event in d.deliver:
            await self._deliver(event)
        for event in d.interim:
            self._offer_interim(event)
        if d.fetch is not None:
            self.lanes[seq.symbol].request(d.fetch)
        elif not seq.busy:  # idle again: it may be due on a later frame of another symbol
            self._next_due = min(self._next_due, seq.due_from())
        if d.probe:
            self._probe(seq)

    async def _deliver(self, event: KlineEvent) -> None:
        self._started = True
        if event.source == "rest":
            await self.out.put(event)
            return
        self.count("closed_ws")
        if self.direct is not None and self.out.empty():
            self.direct(event)  # nothing queued ahead of it: score it now (module docstring)
            return
        await self.out.put(event)
        # Yield once so the pipeline turns this candle into a signal before the next frame
        # (often another symbol's close, read in the same burst) is parsed.
        await asyncio.sleep(0)

    def _probe(self, seq: CandleSequencer) -> None:
        """Ask REST for the exchange's time (at most every ``probe_every_s``, in the
        background): a long disconnect really moves time on, and REST says so; a forged
        frame gets no such support, so its symbol's clock stays put."""
        now = asyncio.get_running_loop().time()
        if now < self._probe_at.get(seq.symbol, -math.inf) + self.probe_every_s:
            return
        self._probe_at[seq.symbol] = now
        task = asyncio.create_task(self._ask_time(seq), name=f"clock-probe-{seq.symbol}")
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _ask_time(self, seq: CandleSequencer) -> None:
        try:
            seq.observe_time(await self.rest.exchange_time(seq.symbol, self.interval))
        except RestError as e:
            self.logs.log(
                logging.INFO, "clock_probe", "exchange time for %s unavailable (%s)", seq.symbol, e
            )

    def _offer_interim(self, event: KlineEvent) -> None:
        if not self.emit_interim:
            return
        try:
            self.out.put_nowait(event)
        except asyncio.QueueFull:
            self.reject("queue_overflow")
