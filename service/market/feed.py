"""The Bybit kline feed: one websocket that never loses a closed candle, and never gives up.

Shape (why): the read loop only reads, parses and routes. Each frame goes socket → parse
(:mod:`service.market.bybit`) → its symbol's sequencer (:mod:`service.market.sequencer`, pure)
→ the consumer, and never comes back; whatever REST a sequencer asks for runs in that
symbol's own task (:class:`service.market.backfill.Lane`, a bounded queue), never in the read
loop, so one symbol's hanging, trickling or failing REST cannot delay another symbol's
candles. Each REST request has a total deadline and capped bytes (:mod:`service.market.rest`).

``KlineFeed.run()`` opens the websocket at once and, beside it, backfills ``backfill_bars``
closed candles per symbol by REST (a symbol's confirms are held, bounded, until its history
is in). It keeps one websocket open for good: subscribe in small batches (acks matched by
``req_id``; a topic the exchange does not know is dropped, the rest of its batch
resubscribed, and the topic asked for again every ``refused_retry_s``), JSON ping every
``ping_interval_s``, a watchdog on both "anything received" and "kline data received",
reconnect with capped, jittered backoff after any close or error (minutes after an HTTP
403), and REST for every closed candle the socket did not deliver.

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
back-pressure (``await out.put``) — the reader pauses and the socket buffers, a candle is
never dropped; interim (confirm=false) updates, if ``emit_interim``, are dropped when the
queue is full and counted as ``klines_rejected_total{reason="queue_overflow"}``. Consumers
must ignore events whose ``kline.confirm`` is false for features.

Direct hand-off (``direct``): a closed websocket candle that finds the queue empty is passed
to ``direct(event)`` in the feed's own task instead — no queue, no task switch, the signal
is stored before the next frame is read (this halved frame → signal latency). It must be the
queue's consumer, processing synchronously, and that consumer must handle each event in the
same step as it takes it from the queue (``Pipeline.run``): then an empty queue means every
earlier event is done, and order is kept. REST fills always go through the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from service.market.backfill import Lane
from service.market.bybit import (
    Ack,
    FrameError,
    KlineFrame,
    Notice,
    Pong,
    SubscriptionBook,
    kline_topic,
    parse_frame,
    ping_message,
    short,
)
from service.market.klines import KlineEvent, interval_ms
from service.market.log_limit import LogLimit
from service.market.rest import Backoff, ConfigError, RestError, RestKlines
from service.market.sequencer import CandleSequencer, Decision
from service.market.stamped_ws import StampedConnection, arrival_ns
from service.metrics import Metrics

__all__ = ["Backoff", "ConfigError", "KlineFeed"]
log = logging.getLogger(__name__)
NOTICE_LOG_CHARS = 200  # exchange text in a log line is cut to this


class _Reconnect(Exception):
    """The session must end (watchdog, missing ack); the run loop reconnects."""


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
    ) -> None:
        self.symbols = list(symbols)
        self.interval = interval
        self.ws_url = ws_url
        self.rest = rest
        self.out = out
        self.metrics = metrics
        self.backfill_bars = backfill_bars
        self.ping_interval_s = ping_interval_s
        self.backoff = backoff or Backoff()
        # a pong is due every ping interval: two missed plus margin means a dead socket
        self.silence_timeout_s = silence_timeout_s or 2 * ping_interval_s + 5.0
        self.data_timeout_s = data_timeout_s
        self.forbidden_backoff_s = forbidden_backoff_s
        self.stable_after_s = stable_after_s
        self.open_timeout_s = open_timeout_s
        self.recycle_after_s = recycle_after_s
        self.emit_interim = emit_interim
        self.direct = direct
        self.step = interval_ms(interval)
        self.topics = {kline_topic(interval, s): s for s in self.symbols}
        self.subs = SubscriptionBook(
            list(self.topics), batch=subscribe_batch, ack_timeout_s=ack_timeout_s
        )
        self.rejected_topics = self.subs.rejected  # the same set, for callers and tests
        self.reconnects = 0
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
            rest.on_reject = self._reject  # refused REST rows count like refused frames
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
        self._topic_retry_at: float | None = None  # when refused topics are asked for again
        self._next_due: float = -math.inf  # exchange time from which some idle symbol is due
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
        """True while the websocket is open and at least one subscription is acknowledged."""
        return self._connected

    def last_received_ns(self, symbol: str) -> int | None:
        """``time.perf_counter_ns()`` of the last kline frame for ``symbol`` (local clock)."""
        return self._last_rx.get(symbol)

    def last_closed_start(self, symbol: str) -> int | None:
        """Start of the newest closed candle delivered for ``symbol``."""
        return self._seq[symbol].last_start

    def problems(self) -> list[str]:
        """Why symbols cannot get candles, for /ready: a REST warm-up in progress or failing,
        fills that keep failing, a symbol or topic the exchange refuses."""
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
        return out

    async def run(self) -> None:
        """Stream forever, each symbol's REST in its own task beside the websocket (a
        failing REST never keeps the socket closed); returns only by cancellation, or raises
        :class:`ConfigError` when the exchange refuses the configuration at start-up."""
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in self.lanes.values():
                    tg.create_task(lane.run(), name=f"lane-{lane.symbol}")
                    await self._apply(lane.seq, lane.seq.start(self.backfill_bars))
                tg.create_task(self._stream(), name="feed-stream")
        except BaseExceptionGroup as group:
            config = [e for e in group.exceptions if isinstance(e, ConfigError)]
            if config:
                raise config[0] from None
            raise
        finally:
            for task in self._probes:
                task.cancel()
            await asyncio.gather(*self._probes, return_exceptions=True)
            self._set_connected(False)

    async def _stream(self) -> None:
        first = True
        while True:
            if not first:
                self.reconnects += 1
                self.metrics.ws_reconnects.inc()
            first = False
            delay = await self._session_guarded()
            log.info("websocket: reconnecting in %.2f s", delay)  # the wait, as it is taken
            await asyncio.sleep(delay)

    # internals: lifecycle -----------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _age(self, symbol: str) -> float:
        rx = self._last_rx.get(symbol)
        return math.nan if rx is None else (time.perf_counter_ns() - rx) / 1e9

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self.metrics.ws_connected.set(1 if value else 0)

    def _reject(self, reason: str) -> None:
        self._count(f"rejected_{reason}")
        self.metrics.klines_rejected.labels(reason).inc()

    async def _session_guarded(self) -> float:
        """One connection; returns the delay before the next. Never swallows cancellation."""
        try:
            await self._session()
        except (ConfigError, asyncio.CancelledError):
            raise
        except InvalidStatus as e:
            status = e.response.status_code
            if status == 403:  # IP ban or geo block: reconnecting fast would extend the ban
                log.error(
                    "websocket handshake refused with HTTP 403; waiting %.0f s",
                    self.forbidden_backoff_s,
                )
                self._set_connected(False)
                return self.forbidden_backoff_s
            log.warning("websocket handshake refused with HTTP %d", status)
        except (_Reconnect, ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as e:
            if isinstance(e, ConnectionClosed) and e.sent is not None and e.sent.code == 1009:
                # a frame over the size limit: the library closes the socket; count the frame
                self._reject("oversized_frame")
            log.warning("websocket session ended: %s: %s", type(e).__name__, short(str(e), 200))
        except Exception:  # a bug must not kill the feed: log it loudly and reconnect
            log.exception("websocket session failed unexpectedly")
        self._set_connected(False)
        return self.backoff.next_delay()

    async def _session(self) -> None:
        async with connect(
            self.ws_url,
            open_timeout=self.open_timeout_s,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_interval_s,
            close_timeout=1.0,
            # No permessage-deflate: kline frames are ~300 bytes, and inflating them cost
            # ~15-25 µs per frame before it could even be read (measured on loopback).
            compression=None,
            create_connection=StampedConnection,  # frames stamped when read: arrival_ns
        ) as ws:
            pinger = asyncio.create_task(self._pinger(ws), name="feed-pinger")
            try:
                for request in self.subs.connect(asyncio.get_running_loop().time()):
                    await ws.send(request)
                await self._read_loop(ws)
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    async def _pinger(self, ws: ClientConnection) -> None:
        for n in itertools.count(1):
            await asyncio.sleep(self.ping_interval_s)
            try:
                await ws.send(ping_message(f"ping-{n}"))
            except ConnectionClosed:
                return

    async def _read_loop(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        opened = last_any = last_data = loop.time()
        stable = False
        while True:
            deadline = min(last_any + self.silence_timeout_s, last_data + self.data_timeout_s)
            ack_deadline = self.subs.deadline()
            if ack_deadline is not None:
                deadline = min(deadline, ack_deadline)
            if self.recycle_after_s is not None:
                deadline = min(deadline, opened + self.recycle_after_s)
            if self._topic_retry_at is not None:
                deadline = min(deadline, self._topic_retry_at)
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                # The floor lets frames buffered during a slow REST fill be read first.
                async with asyncio.timeout_at(max(deadline, loop.time() + 0.05)):
                    raw = await ws.recv()
            except TimeoutError:
                now = loop.time()
                if self._topic_retry_at is not None and now >= self._topic_retry_at:
                    await self._retry_topics(ws, now)
                if now >= last_any + self.silence_timeout_s:
                    raise _Reconnect(
                        f"nothing received for {self.silence_timeout_s:.1f} s"
                    ) from None
                if now >= last_data + self.data_timeout_s:
                    raise _Reconnect(f"no kline data for {self.data_timeout_s:.1f} s") from None
                if ack_deadline is not None and now >= ack_deadline:
                    raise _Reconnect("no subscribe ack in time") from None
                if self.recycle_after_s is not None and now >= opened + self.recycle_after_s:
                    raise _Reconnect("recycling a long-lived connection") from None
                continue
            received_ns = arrival_ns(ws)  # when the loop read it, not when recv() resumed
            if await self._on_raw(ws, raw, received_ns):
                last_data = loop.time()
            last_any = loop.time()  # after processing: a slow REST fill is not silence
            if not stable and last_any - opened >= self.stable_after_s:
                stable = True
                self.backoff.reset()

    # internals: frames --------------------------------------------------------------------
    async def _on_raw(self, ws: ClientConnection, raw: str | bytes, received_ns: int) -> bool:
        """Handle one frame; True if it carried kline data for a subscribed topic."""
        self._count("frames")
        try:
            frame = parse_frame(raw)
        except FrameError as e:
            self._reject(e.reason)
            log.debug("skipped frame: %s", e)
            return False
        if type(frame) is KlineFrame:  # the usual frame first
            return await self._on_klines(frame, received_ns)
        if isinstance(frame, Pong):
            return False
        if isinstance(frame, Ack):
            await self._on_ack(ws, frame)
            return False
        if isinstance(frame, Notice):
            # counted, and logged cut short: a notice's size is the exchange's choice
            self.metrics.exchange_notices.labels("notice").inc()
            self.logs.log(
                logging.WARNING,
                "notice",
                "exchange notice (%d bytes): %s",
                len(raw),
                short(raw, NOTICE_LOG_CHARS),
            )
            return False
        return await self._on_klines(frame, received_ns)

    async def _on_klines(self, frame: KlineFrame, received_ns: int) -> bool:
        symbol = self.topics.get(frame.topic)
        if symbol is None or frame.topic in self.rejected_topics:
            self._reject("unknown_topic")
            return False
        seq = self._seq[symbol]
        d = seq.on_frame(frame.ts, frame.klines, received_ns)
        if d.probe:  # refused against the symbol's clock: nothing else happened
            await self._apply(seq, d)
            return False
        self._last_rx[symbol] = received_ns
        if not self._connected:
            self._set_connected(True)
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
            self._count("gaps" if seq.held else "late_fills")
        await self._apply(seq, d)
        for k in frame.klines:
            self._m_klines[symbol, k.confirm].inc()  # counted after the hand-off
        return True

    async def _apply(self, seq: CandleSequencer, d: Decision) -> None:
        """Carry out a sequencer's decision: closed candles on (in order), interim updates
        offered, refusals counted, a fetch to the symbol's lane, a clock probe started."""
        for reason in d.refused:
            self._reject(reason)
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
        self._count("closed_ws")
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
            self._reject("queue_overflow")

    # internals: subscriptions -------------------------------------------------------------
    async def _on_ack(self, ws: ClientConnection, ack: Ack) -> None:
        outcome = self.subs.on_ack(ack, asyncio.get_running_loop().time())
        if outcome is None:
            if not ack.success:
                self.metrics.exchange_notices.labels("error_reply").inc()
                self.logs.log(
                    logging.WARNING,
                    "error_reply",
                    "exchange error reply: %s",
                    short(ack.ret_msg, NOTICE_LOG_CHARS),
                )
            return
        if outcome.subscribed:
            log.info("subscribed %s (conn_id %s)", ",".join(outcome.subscribed), ack.conn_id)
            self._set_connected(True)
        if outcome.rejected is not None:
            # a permanent refusal voids its batch: the book re-requests the rest of it
            log.error(
                "exchange rejected %s (%s); continuing without it",
                short(outcome.rejected, NOTICE_LOG_CHARS),
                short(ack.ret_msg, NOTICE_LOG_CHARS),
            )
            self._count("rejected_topics")
            self.metrics.klines_rejected.labels("subscribe_rejected").inc()
            symbol = self.topics.get(outcome.rejected)
            if symbol is not None:
                self.metrics.symbol_problem.labels(symbol).set(1)
            if not self.subs.active() and not self._started:
                raise ConfigError(
                    f"the exchange rejected every topic: {sorted(self.rejected_topics)}"
                )
            # after start-up a refusal is that symbol's, not the feed's: ask again slowly
            if self._topic_retry_at is None:
                loop_now = asyncio.get_running_loop().time()
                self._topic_retry_at = loop_now + self.refused_retry_s
        elif not outcome.subscribed:
            self._count("subscribe_retries")
            if outcome.give_up:
                raise _Reconnect(f"subscribe keeps failing: {short(ack.ret_msg)}")
            log.warning("subscribe failed (%s); retrying", short(ack.ret_msg, NOTICE_LOG_CHARS))
        for request in outcome.resend:
            await ws.send(request)

    async def _retry_topics(self, ws: ClientConnection, now: float) -> None:
        """Ask again for the topics the exchange refused (a delisted symbol may come back)."""
        self._topic_retry_at = None
        topics = sorted(self.rejected_topics)
        if not topics:
            return
        log.info("asking again for refused topics %s", short(",".join(topics), NOTICE_LOG_CHARS))
        self.rejected_topics.difference_update(topics)
        for topic in topics:
            symbol = self.topics.get(topic)
            if symbol is not None and self.lanes[symbol].problem is None:
                self.metrics.symbol_problem.labels(symbol).set(0)
        for request in self.subs.requests(topics, now):
            await ws.send(request)

    def snapshot(self) -> dict[str, Any]:
        """Counters for logs and tests (frames, closed_ws, closed_rest, gaps, rejected_*...)."""
        return {**self.stats, "reconnects": self.reconnects, "connected": self._connected}
