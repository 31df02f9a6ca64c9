"""One websocket of the kline feed: a group of topics, read without pause, forever.

The feed splits its topics into groups within Bybit's ``args`` budget
(:func:`service.market.limits.plan_connections`) and runs one :class:`FeedConnection` per
group, each with its own subscription book, watchdog, backoff and reconnects, so one
socket's trouble (a drop, a refused handshake, a missing ack) never delays another group's
symbols. Each connection is opened through the process's connect bucket (Bybit: at most 500
new connections per 5 minutes per domain).

Reading never waits for processing (issue 30: at 500 symbols the reader was busy handing a
burst on, the library's 16-frame receive buffer filled, the pong went unread and Bybit's
side closed with 1011). A reader task only receives, stamps and queues; a processing task
per connection parses and routes (:class:`FeedHost`), and may wait on the consumer's queue
(closed candles use back-pressure there) while the reader goes on reading, answering pings
and keeping the watchdog honest. The frame queue is bounded by frames and by bytes
(:data:`FRAME_QUEUE_FRAMES`, :data:`FRAME_QUEUE_BYTES`); at overflow the frame is dropped
and counted (``klines_rejected_total{reason="frame_overflow"}``), never the connection: a
dropped confirm is a missing confirm, which the symbol's sequencer already repairs by REST
(the next frame of any symbol moves exchange time past it; :mod:`service.market.sequencer`),
so no closed candle is lost, only late. Back-pressure on the socket instead would bring back
the unread pong. Watchdogs that depend on processing (no kline data, a missing subscribe
ack) wait while frames are queued: a backlog is a slow consumer, not a dead socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from service.market.bybit import (
    Ack,
    FrameError,
    KlineFrame,
    Notice,
    Pong,
    SubscriptionBook,
    parse_frame,
    ping_message,
    short,
)
from service.market.limits import TokenBucket
from service.market.log_limit import LogLimit
from service.market.rest import Backoff, ConfigError
from service.market.stamped_ws import StampedConnection, arrival_ns
from service.metrics import Metrics

log = logging.getLogger("service.market.feed")  # one logger for the feed and its sockets
NOTICE_LOG_CHARS = 200  # exchange text in a log line is cut to this
# The frame queue between reader and processor. A kline push is ~300-400 bytes; Bybit pushes
# each topic every 1-60 s, so a connection of ~800 topics (a full args budget) brings at most
# ~800 frames a second, and a burst of closes (every topic's confirm plus the next interim)
# ~1,600 at once. 8,192 frames hold that burst five times over, or ~10 s of the busiest
# stream while the consumer is stalled; 8 MiB caps the memory a hostile exchange's big frames
# can pin (the library admits frames up to 1 MiB each) at 8 MiB per connection. Measured with
# the many-symbol mock (bench.many_symbols, 1000 symbols, 2 connections of 799 and 201
# topics, 300 bars of warm-up each): the deepest backlog was 799 and 201 frames, one burst.
FRAME_QUEUE_FRAMES = 8192
FRAME_QUEUE_BYTES = 8 * 1024 * 1024
# The library's own receive buffer (websockets' ``max_queue``, default 16 frames). The reader
# drains it at once, so it only fills while the event loop runs something else (a batched
# scoring of ~1-2 ms per 100 symbols); 1,024 frames take a whole burst of a full connection
# without the library pausing the socket, so its pings are answered on time.
WS_MAX_QUEUE = 1024
BACKLOG_RECHECK_S = 0.5  # with a backlog the deferred watchdogs are looked at this often


class Reconnect(Exception):
    """The session must end (watchdog, missing ack); the run loop reconnects."""


class FeedHost(Protocol):
    """What a connection needs from the feed that owns the symbols (``KlineFeed``)."""

    metrics: Metrics
    logs: LogLimit
    topics: dict[str, str]  # topic -> symbol

    def count(self, key: str, n: int = 1) -> None: ...

    def reject(self, reason: str) -> None: ...

    async def on_klines(self, frame: KlineFrame, received_ns: int) -> bool: ...

    def connection_changed(self) -> None: ...

    def topic_refused(self, topic: str) -> None: ...

    def topic_retried(self, topic: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """The timing and bounds of every connection of one feed (``KlineFeed`` arguments)."""

    ws_url: str
    ping_interval_s: float
    silence_timeout_s: float
    data_timeout_s: float
    ack_timeout_s: float
    subscribe_batch: int
    forbidden_backoff_s: float
    stable_after_s: float
    open_timeout_s: float
    recycle_after_s: float | None
    refused_retry_s: float
    queue_frames: int
    queue_bytes: int


_Item = tuple[str | bytes, int] | None  # (frame, arrival ns); None: the reader has ended


class FeedConnection:
    """One websocket for ``topics``, reconnected for good (module docstring); no I/O on init."""

    def __init__(
        self,
        host: FeedHost,
        topics: list[str],
        options: ConnectionOptions,
        *,
        index: int = 0,
        backoff: Backoff | None = None,
        gate: TokenBucket | None = None,
    ) -> None:
        self.host = host
        self.topics = list(topics)
        self.options = options
        self.index = index
        self.name = f"ws-{index}"
        self.backoff = backoff or Backoff()
        self.gate = gate
        self.subs = SubscriptionBook(
            self.topics, batch=options.subscribe_batch, ack_timeout_s=options.ack_timeout_s
        )
        self.rejected_topics = self.subs.rejected
        self.connected = False
        self.reconnects = 0
        self.overflows = 0  # frames dropped because the frame queue was full
        self.max_backlog = 0  # the most frames ever queued at once (the bound's headroom)
        self._topic_retry_at: float | None = None
        self._last_data = 0.0
        self._received = 0  # frames queued by the reader
        self._processed = 0  # frames the processor is done with
        self._queued_bytes = 0

    # lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, read, reconnect after a backoff, forever; returns only by cancellation
        or raises :class:`ConfigError` (the exchange refused every topic at start-up)."""
        first = True
        while True:
            if not first:
                self.reconnects += 1
                self.host.metrics.ws_reconnects.inc()
            first = False
            delay = await self._session_guarded()
            log.info("websocket %s: reconnecting in %.2f s", self.name, delay)
            await asyncio.sleep(delay)

    def _set_connected(self, value: bool) -> None:
        if self.connected != value:
            self.connected = value
            self.host.connection_changed()

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
                    "websocket %s: handshake refused with HTTP 403; waiting %.0f s",
                    self.name,
                    self.options.forbidden_backoff_s,
                )
                self._set_connected(False)
                return self.options.forbidden_backoff_s
            log.warning("websocket %s: handshake refused with HTTP %d", self.name, status)
        except (Reconnect, ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as e:
            if isinstance(e, ConnectionClosed) and e.sent is not None and e.sent.code == 1009:
                # a frame over the size limit: the library closes the socket; count the frame
                self.host.reject("oversized_frame")
            log.warning(
                "websocket %s: session ended: %s: %s",
                self.name,
                type(e).__name__,
                short(str(e), 200),
            )
        except Exception:  # a bug must not kill the feed: log it loudly and reconnect
            log.exception("websocket %s: session failed unexpectedly", self.name)
        self._set_connected(False)
        return self.backoff.next_delay()

    async def _session(self) -> None:
        if self.gate is not None:
            await self.gate.wait()  # Bybit's connect-rate limit, shared by every connection
        o = self.options
        async with connect(
            o.ws_url,
            open_timeout=o.open_timeout_s,
            ping_interval=o.ping_interval_s,
            ping_timeout=o.ping_interval_s,
            close_timeout=1.0,
            max_queue=WS_MAX_QUEUE,
            # No permessage-deflate: kline frames are ~300 bytes, and inflating them cost
            # ~15-25 µs per frame before it could even be read (measured on loopback).
            compression=None,
            create_connection=StampedConnection,  # frames stamped when read: arrival_ns
        ) as ws:
            frames: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by _read_loop's checks
            self._received = self._processed = self._queued_bytes = 0
            pinger = asyncio.create_task(self._pinger(ws), name=f"feed-pinger-{self.index}")
            processor = asyncio.create_task(
                self._process(ws, frames), name=f"feed-process-{self.index}"
            )
            reader = asyncio.create_task(
                self._read_loop(ws, frames), name=f"feed-reader-{self.index}"
            )
            try:
                for request in self.subs.connect(asyncio.get_running_loop().time()):
                    await ws.send(request)
                done, _ = await asyncio.wait(
                    {reader, processor}, return_when=asyncio.FIRST_COMPLETED
                )
                if reader in done and not processor.done():
                    # what was read before the end is still handed on, in order, before
                    # a new session's frames can be (the processor drains to the marker)
                    frames.put_nowait(None)
                    await processor
                for task in (processor, reader):
                    if task.done() and not task.cancelled():
                        error = task.exception()
                        if error is not None:
                            raise error
            finally:
                for task in (pinger, reader, processor):
                    task.cancel()
                for task in (pinger, reader, processor):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _pinger(self, ws: ClientConnection) -> None:
        for n in itertools.count(1):
            await asyncio.sleep(self.options.ping_interval_s)
            try:
                await ws.send(ping_message(f"ping-{n}"))
            except ConnectionClosed:
                return

    async def _send(self, ws: ClientConnection, message: str) -> None:
        """Send; a socket that closed meanwhile ends the session through the reader."""
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message)

    # the reader: receive, stamp, queue ------------------------------------------------------
    def backlog(self) -> int:
        """Frames read and not yet handled (queued, or being handled)."""
        return self._received - self._processed

    async def _read_loop(self, ws: ClientConnection, frames: asyncio.Queue[_Item]) -> None:
        o = self.options
        loop = asyncio.get_running_loop()
        opened = last_any = self._last_data = loop.time()
        stable = False
        while True:
            now = loop.time()
            deadline = last_any + o.silence_timeout_s
            if self.backlog():  # processing is behind: its watchdogs wait for it
                deadline = min(deadline, now + BACKLOG_RECHECK_S)
            else:
                deadline = min(deadline, self._last_data + o.data_timeout_s)
                ack_deadline = self.subs.deadline()
                if ack_deadline is not None:
                    deadline = min(deadline, ack_deadline)
            if o.recycle_after_s is not None:
                deadline = min(deadline, opened + o.recycle_after_s)
            if self._topic_retry_at is not None:
                deadline = min(deadline, self._topic_retry_at)
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                # The floor: after a long step of the event loop (a burst scored), frames the
                # library already holds are read before an old deadline is judged.
                async with asyncio.timeout_at(max(deadline, now + 0.05)):
                    raw = await ws.recv()
            except TimeoutError:
                await self._on_timeout(ws, loop.time(), last_any, opened)
                continue
            received_ns = arrival_ns(ws)  # when the loop read it, not when recv() resumed
            self._enqueue(frames, raw, received_ns)
            last_any = loop.time()
            if not stable and last_any - opened >= o.stable_after_s:
                stable = True
                self.backoff.reset()

    async def _on_timeout(
        self, ws: ClientConnection, now: float, last_any: float, opened: float
    ) -> None:
        o = self.options
        if self._topic_retry_at is not None and now >= self._topic_retry_at:
            await self._retry_topics(ws, now)
        if now >= last_any + o.silence_timeout_s:
            raise Reconnect(f"nothing received for {o.silence_timeout_s:.1f} s")
        if o.recycle_after_s is not None and now >= opened + o.recycle_after_s:
            raise Reconnect("recycling a long-lived connection")
        if self.backlog():
            return
        if now >= self._last_data + o.data_timeout_s:
            raise Reconnect(f"no kline data for {o.data_timeout_s:.1f} s")
        ack_deadline = self.subs.deadline()
        if ack_deadline is not None and now >= ack_deadline:
            raise Reconnect("no subscribe ack in time")

    def _enqueue(self, frames: asyncio.Queue[_Item], raw: str | bytes, received_ns: int) -> None:
        backlog = self.backlog()
        if (
            backlog >= self.options.queue_frames
            or self._queued_bytes + len(raw) > self.options.queue_bytes
        ):
            # dropped, never waited for: a lost confirm is repaired by REST (module docstring)
            self.overflows += 1
            self.host.reject("frame_overflow")
            self.host.logs.log(
                logging.WARNING,
                f"overflow-{self.index}",
                "websocket %s: frame queue full (%d frames, %d bytes); frame dropped, "
                "its closed candles come by REST",
                self.name,
                backlog,
                self._queued_bytes,
            )
            return
        self._received += 1
        self._queued_bytes += len(raw)
        self.max_backlog = max(self.max_backlog, backlog + 1)
        frames.put_nowait((raw, received_ns))

    # the processor: parse and route, in order ----------------------------------------------
    async def _process(self, ws: ClientConnection, frames: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await frames.get()
            if item is None:
                return
            raw, received_ns = item
            try:
                if await self._on_raw(ws, raw, received_ns):
                    self._last_data = loop.time()
            finally:
                self._processed += 1
                self._queued_bytes -= len(raw)

    async def _on_raw(self, ws: ClientConnection, raw: str | bytes, received_ns: int) -> bool:
        """Handle one frame; True if it carried kline data for a subscribed topic."""
        host = self.host
        host.count("frames")
        try:
            frame = parse_frame(raw)
        except FrameError as e:
            host.reject(e.reason)
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
            host.metrics.exchange_notices.labels("notice").inc()
            host.logs.log(
                logging.WARNING,
                "notice",
                "exchange notice (%d bytes): %s",
                len(raw),
                short(raw, NOTICE_LOG_CHARS),
            )
            return False
        return await self._on_klines(frame, received_ns)

    async def _on_klines(self, frame: KlineFrame, received_ns: int) -> bool:
        if frame.topic in self.rejected_topics:
            self.host.reject("unknown_topic")
            return False
        if await self.host.on_klines(frame, received_ns):
            self._set_connected(True)
            return True
        return False

    # subscriptions ------------------------------------------------------------------------
    async def _on_ack(self, ws: ClientConnection, ack: Ack) -> None:
        host = self.host
        outcome = self.subs.on_ack(ack, asyncio.get_running_loop().time())
        if outcome is None:
            if not ack.success:
                host.metrics.exchange_notices.labels("error_reply").inc()
                host.logs.log(
                    logging.WARNING,
                    "error_reply",
                    "exchange error reply: %s",
                    short(ack.ret_msg, NOTICE_LOG_CHARS),
                )
            return
        if outcome.subscribed:
            log.info(
                "subscribed %s (%s, conn_id %s)",
                short(",".join(outcome.subscribed), NOTICE_LOG_CHARS),
                self.name,
                ack.conn_id,
            )
            self._set_connected(True)
        if outcome.rejected is not None:
            # a permanent refusal voids its batch: the book re-requests the rest of it
            log.error(
                "exchange rejected %s (%s); continuing without it",
                short(outcome.rejected, NOTICE_LOG_CHARS),
                short(ack.ret_msg, NOTICE_LOG_CHARS),
            )
            host.topic_refused(outcome.rejected)  # raises ConfigError at start-up if all are
            # after start-up a refusal is that symbol's, not the feed's: ask again slowly
            if self._topic_retry_at is None:
                loop_now = asyncio.get_running_loop().time()
                self._topic_retry_at = loop_now + self.options.refused_retry_s
        elif not outcome.subscribed:
            host.count("subscribe_retries")
            if outcome.give_up:
                raise Reconnect(f"subscribe keeps failing: {short(ack.ret_msg)}")
            log.warning("subscribe failed (%s); retrying", short(ack.ret_msg, NOTICE_LOG_CHARS))
        for request in outcome.resend:
            await self._send(ws, request)

    async def _retry_topics(self, ws: ClientConnection, now: float) -> None:
        """Ask again for the topics the exchange refused (a delisted symbol may come back)."""
        self._topic_retry_at = None
        topics = sorted(self.rejected_topics)
        if not topics:
            return
        log.info("asking again for refused topics %s", short(",".join(topics), NOTICE_LOG_CHARS))
        self.rejected_topics.difference_update(topics)
        for topic in topics:
            self.host.topic_retried(topic)
        for request in self.subs.requests(topics, now):
            await self._send(ws, request)
