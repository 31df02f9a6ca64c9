"""The Bybit kline feed: one websocket that never loses a closed candle.

``KlineFeed.run()`` backfills ``backfill_bars`` closed candles per symbol by REST, then keeps
one websocket open for good: subscribe in small batches (acks matched by ``req_id``; a topic
the exchange does not know is dropped and the rest of its batch resubscribed), JSON ping
every ``ping_interval_s``, a watchdog on both "anything received" and "kline data received",
reconnect with exponential backoff and jitter after any close or error (minutes after an
HTTP 403), and REST for every closed candle the socket did not deliver (a gap before a
confirm, a confirm that never came, the bars missed while disconnected).

Hand-off contract (``out``): every closed candle exactly once, in order per symbol, REST
backfill first with ``source="rest"``. Overflow policy: closed candles use blocking
back-pressure (``await out.put``) — the reader pauses and the socket buffers, a candle is
never dropped; interim (confirm=false) updates, if ``emit_interim``, are dropped when the
queue is full and counted as ``klines_rejected_total{reason="queue_overflow"}``. Consumers
must ignore events whose ``kline.confirm`` is false for features.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from service.backfill import Backoff, CandleSequencer, Verdict
from service.bybit import (
    Ack,
    FrameError,
    KlineFrame,
    Notice,
    Pong,
    is_already_subscribed,
    kline_topic,
    parse_frame,
    ping_message,
    rejected_topic,
    subscribe_message,
)
from service.klines import Kline, KlineEvent, interval_ms
from service.metrics import Metrics
from service.rest import ConfigError, RestError, RestForbidden, RestKlines

__all__ = ["Backoff", "ConfigError", "KlineFeed"]
log = logging.getLogger(__name__)


class _Reconnect(Exception):
    """The session must end (watchdog, missing ack); the run loop reconnects."""


@dataclass
class _Pending:
    topics: list[str]
    deadline: float
    attempt: int


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
        self.ack_timeout_s = ack_timeout_s
        self.subscribe_batch = max(1, subscribe_batch)
        self.fill_retry_ms = fill_retry_ms
        self.forbidden_backoff_s = forbidden_backoff_s
        self.stable_after_s = stable_after_s
        self.open_timeout_s = open_timeout_s
        self.recycle_after_s = recycle_after_s
        self.emit_interim = emit_interim
        self.step = interval_ms(interval)
        self.topics = {kline_topic(interval, s): s for s in self.symbols}
        self.rejected_topics: set[str] = set()
        self.reconnects = 0
        self.stats: dict[str, int] = {}
        self._seq = {s: CandleSequencer(s, interval, grace_ms=grace_ms) for s in self.symbols}
        self._last_rx: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        self._req_ids = itertools.count(1)
        self._connected = False
        metrics.queue_depth.set_function(out.qsize)
        for s in self.symbols:
            metrics.last_kline_age_seconds.labels(s).set_function(functools.partial(self._age, s))

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

    async def run(self) -> None:
        """Backfill, then stream forever; returns only by cancellation or a ConfigError."""
        try:
            await self._initial_backfill()
            first = True
            while True:
                if not first:
                    self.reconnects += 1
                    self.metrics.ws_reconnects.inc()
                first = False
                delay = await self._session_guarded()
                await asyncio.sleep(delay)
        finally:
            self._set_connected(False)

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

    async def _initial_backfill(self) -> None:
        for symbol in self.symbols:
            if self.backfill_bars <= 0:
                continue
            while True:
                try:
                    klines = await self.rest.fetch_latest(symbol, self.interval, self.backfill_bars)
                    break
                except RestForbidden as e:
                    log.error(
                        "backfill %s: %s; pausing REST %.0f s", symbol, e, self.forbidden_backoff_s
                    )
                    await asyncio.sleep(self.forbidden_backoff_s)
                except ConfigError:
                    raise
                except RestError as e:
                    delay = self.backoff.next_delay()
                    log.warning("backfill %s failed (%s); retrying in %.1f s", symbol, e, delay)
                    await asyncio.sleep(delay)
            self.backoff.reset()
            await self._deliver_rest(symbol, self._seq[symbol].take(klines))
            log.info("backfilled %d closed %s klines for %s", len(klines), self.interval, symbol)

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
            log.warning("websocket session ended: %s: %s", type(e).__name__, e)
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
        ) as ws:
            self._pending.clear()
            pinger = asyncio.create_task(self._pinger(ws), name="feed-pinger")
            try:
                active = [t for t in self.topics if t not in self.rejected_topics]
                await self._subscribe(ws, active, attempt=1)
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
            deadline = min([deadline, *(p.deadline for p in self._pending.values())])
            if self.recycle_after_s is not None:
                deadline = min(deadline, opened + self.recycle_after_s)
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout_at(deadline):
                    raw = await ws.recv()
            except TimeoutError:
                now = loop.time()
                if now >= last_any + self.silence_timeout_s:
                    raise _Reconnect(
                        f"nothing received for {self.silence_timeout_s:.1f} s"
                    ) from None
                if now >= last_data + self.data_timeout_s:
                    raise _Reconnect(f"no kline data for {self.data_timeout_s:.1f} s") from None
                if any(now >= p.deadline for p in self._pending.values()):
                    raise _Reconnect("no subscribe ack in time") from None
                if self.recycle_after_s is not None and now >= opened + self.recycle_after_s:
                    raise _Reconnect("recycling a long-lived connection") from None
                continue
            received_ns = time.perf_counter_ns()
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
        if isinstance(frame, Pong):
            return False
        if isinstance(frame, Ack):
            await self._on_ack(ws, frame)
            return False
        if isinstance(frame, Notice):
            log.warning("exchange notice: %s", frame.payload)
            return False
        return await self._on_klines(frame, received_ns)

    async def _on_klines(self, frame: KlineFrame, received_ns: int) -> bool:
        symbol = self.topics.get(frame.topic)
        if symbol is None or frame.topic in self.rejected_topics:
            self._reject("unknown_topic")
            return False
        self._last_rx[symbol] = received_ns
        if not self._connected:
            self._set_connected(True)
        seq = self._seq[symbol]
        # candles that ended more than grace_ms before this frame's ts without a confirm
        # (lost confirms, bars missed while disconnected) come from REST first
        await self._fill_due(frame.ts)
        # a closing candle and the next one may share a frame, in any order
        for k in sorted(frame.klines, key=lambda k: (k.start, k.confirm)):
            self.metrics.klines.labels(symbol, "true" if k.confirm else "false").inc()
            if k.confirm:
                await self._on_closed(seq, k, frame.ts, received_ns)
            elif seq.is_live(k):
                self._offer_interim(KlineEvent(k, frame.ts, received_ns, "ws"))
        return True

    async def _on_closed(self, seq: CandleSequencer, k: Kline, ts: int, received_ns: int) -> None:
        verdict = seq.classify(k)
        if verdict is Verdict.DUPLICATE:
            self._reject("duplicate")
            return
        if verdict is Verdict.GAP:
            gap = seq.gap_before(k)
            self._count("gaps")
            if not await self._fill(seq, gap.first, gap.last, ts, before=k.start):
                return  # REST failing: this candle is fetched later with the range
        seq.accept(k)
        self._count("closed_ws")
        await self.out.put(KlineEvent(k, ts, received_ns, "ws"))

    def _offer_interim(self, event: KlineEvent) -> None:
        if not self.emit_interim:
            return
        try:
            self.out.put_nowait(event)
        except asyncio.QueueFull:
            self._reject("queue_overflow")

    async def _fill_due(self, ts: int) -> None:
        for symbol, seq in self._seq.items():
            if kline_topic(self.interval, symbol) in self.rejected_topics:
                continue
            due = seq.due_fill(ts)
            if due is not None:
                self._count("late_fills")
                await self._fill(seq, due.first, due.last, ts)

    async def _fill(
        self, seq: CandleSequencer, first: int, last: int, ts: int, before: int | None = None
    ) -> bool:
        """Fetch closed candles [first, last] and deliver them; False if REST failed."""
        try:
            klines = await self.rest.fetch_range(seq.symbol, self.interval, first, last)
        except ConfigError:
            raise
        except RestError as e:
            wait_ms = int(self.forbidden_backoff_s * 1000) if isinstance(e, RestForbidden) else 0
            log.warning("REST fill %s [%d, %d] failed: %s", seq.symbol, first, last, e)
            seq.defer(ts, max(wait_ms, self.fill_retry_ms))
            self._count("fill_errors")
            return False
        got = seq.take(klines, before=before)
        if not got and before is None:
            seq.defer(ts, self.fill_retry_ms)  # not on REST yet: ask again a little later
        await self._deliver_rest(seq.symbol, got)
        return True

    async def _deliver_rest(self, symbol: str, klines: list[Kline]) -> None:
        for k in klines:
            self.metrics.backfilled_klines.labels(symbol).inc()
            self._count("closed_rest")
            await self.out.put(KlineEvent(k, k.start + self.step, time.perf_counter_ns(), "rest"))

    # internals: subscriptions -------------------------------------------------------------
    async def _subscribe(self, ws: ClientConnection, topics: list[str], attempt: int) -> None:
        loop = asyncio.get_running_loop()
        for i in range(0, len(topics), self.subscribe_batch):
            batch = topics[i : i + self.subscribe_batch]
            req_id = f"sub-{next(self._req_ids)}"
            self._pending[req_id] = _Pending(batch, loop.time() + self.ack_timeout_s, attempt)
            await ws.send(subscribe_message(batch, req_id))

    async def _on_ack(self, ws: ClientConnection, ack: Ack) -> None:
        pending = self._pending.pop(ack.req_id, None)
        if ack.op != "subscribe" or pending is None:
            if not ack.success:
                log.warning("exchange error reply: %s", ack.ret_msg)
            return
        if ack.success or is_already_subscribed(ack.ret_msg):
            log.info("subscribed %s (conn_id %s)", ",".join(pending.topics), ack.conn_id)
            self._set_connected(True)
            return
        bad = rejected_topic(ack.ret_msg)
        if bad is not None and bad in pending.topics:
            # a permanent refusal of one topic voids its whole batch: drop it, resend the rest
            log.error("exchange rejected %s (%s); continuing without it", bad, ack.ret_msg)
            self.rejected_topics.add(bad)
            self._count("rejected_topics")
            if len(self.rejected_topics) == len(self.topics):
                raise ConfigError(
                    f"the exchange rejected every topic: {sorted(self.rejected_topics)}"
                )
            rest = [t for t in pending.topics if t != bad]
            if rest:
                await self._subscribe(ws, rest, attempt=pending.attempt)
            return
        self._count("subscribe_retries")
        if pending.attempt >= 3:
            raise _Reconnect(f"subscribe keeps failing: {ack.ret_msg}")
        log.warning("subscribe %s failed (%s); retrying", pending.topics, ack.ret_msg)
        await self._subscribe(ws, pending.topics, attempt=pending.attempt + 1)

    def snapshot(self) -> dict[str, Any]:
        """Counters for logs and tests (frames, closed_ws, closed_rest, gaps, rejected_*...)."""
        return {**self.stats, "reconnects": self.reconnects, "connected": self._connected}
