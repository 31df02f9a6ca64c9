"""The replay exchange: Bybit's v5 public websocket and kline REST on one loopback port.

``websockets`` serves both: ``process_request`` answers ``GET /v5/market/kline`` as plain
HTTP (Bybit envelope, newest first, open candle included) and lets ``/v5/public/*`` upgrade
to the websocket (subscribe/ack, JSON ping → pong, kline pushes). A virtual clock drives the
bundled klines: for every candle ``updates_per_candle`` confirm=false pushes, then exactly
one confirm=true push just after its end — unless a :class:`Faults` switch says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from service.market.bybit import parse_topic
from service.market.kline_io import DATA_DIR, load_bundled, load_klines
from service.market.klines import VALID_INTERVALS, Kline, KlineTable, interval_ms
from service.replay.faults import Faults
from service.replay.malformed import malformed_frame
from service.replay.protocol import handle_op, kline_envelope
from service.replay.tape import Tape, VirtualClock, push_frame, ws_item

log = logging.getLogger(__name__)
CONFIRM_DELAY_MS = 3  # the confirm push's ts lands just after the candle's end


@functools.lru_cache(maxsize=16)
def _bundled(symbol: str, interval: str, at_ms: int | None = None) -> KlineTable:
    """The bundled file of (symbol, interval); with ``at_ms``, the one whose bars span it
    (XRP, BNB and ADA have a 2025-11 → 2026-01 file besides the earliest one)."""
    if at_ms is not None:
        token = "1d" if interval == "D" else f"{interval}m"
        for path in sorted(DATA_DIR.glob(f"bybit_linear_{symbol}_{token}_*.csv.gz")):
            table = load_klines(path, drop_last_unconfirmed=True)
            if len(table) and int(table.start[0]) <= at_ms <= int(table.start[-1]):
                return table
    return load_bundled(symbol, interval)


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay and how. ``start_ms`` defaults to ``history_bars`` after the data starts."""

    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    interval: str = "5"
    speed: float = 300.0  # virtual seconds per real second (300: one 5-minute candle per second)
    host: str = "127.0.0.1"
    port: int = 0
    start_ms: int | None = None
    history_bars: int = 1000
    updates_per_candle: int = 4
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    idle_timeout_s: float = 600.0  # Bybit cuts a socket with no ping and no data after 10 min
    # Extra real delay of each push (a burst: every symbol's frame), uniform in [0, N) ms, as
    # network delay varies. The schedule's real period is a whole number of the VM's 4 ms
    # timer ticks (200 ms at 300×), so without it every push of a run lands at one phase of
    # the tick: a run is all lucky or all unlucky against the VM's periodic stalls.
    push_jitter_ms: float = 0.0
    tables: dict[str, KlineTable] | None = None  # injected data; default: the bundled files


@dataclass(eq=False)  # identity semantics: kept in a set
class _Conn:
    ws: ServerConnection
    conn_id: str = field(default_factory=lambda: uuid.uuid4().hex[:20])
    topics: set[str] = field(default_factory=set)
    zombie: bool = False


class ReplayExchange:
    """Use as ``async with ReplayExchange(cfg) as ex:``, then ``ex.ws_url``, ``ex.rest_url``."""

    def __init__(self, config: ReplayConfig | None = None) -> None:
        self.config = cfg = config or ReplayConfig()
        if cfg.interval not in VALID_INTERVALS or cfg.updates_per_candle < 0:
            raise ValueError(f"bad interval {cfg.interval!r} or updates_per_candle")
        if not 0.0 <= cfg.push_jitter_ms < 1000.0:
            raise ValueError(f"push_jitter_ms must be in [0, 1000), got {cfg.push_jitter_ms}")
        tables = cfg.tables or {s: _bundled(s, cfg.interval, cfg.start_ms) for s in cfg.symbols}
        self.tapes = {s: Tape(tables[s]) for s in cfg.symbols}
        self.step = interval_ms(cfg.interval)
        first = max(int(t.table.start[0]) for t in self.tapes.values())
        self.start_ms = (
            cfg.start_ms if cfg.start_ms is not None else first + cfg.history_bars * self.step
        )
        if self.start_ms % self.step:
            raise ValueError(f"start_ms {self.start_ms} is not on the {cfg.interval} grid")
        self.stats: Counter[str] = Counter()
        self.rest_times: list[float] = []  # time.monotonic() of each REST request, for tests
        # one generator per kind of decision, so that timing (how many sockets or requests
        # there happen to be) never shifts another kind's draws: same seed, same faults
        self._rng = random.Random(f"{cfg.seed}:candles")
        self._rng_frames = random.Random(f"{cfg.seed}:frames")
        self._rng_close = random.Random(f"{cfg.seed}:close")
        self._rng_ops = random.Random(f"{cfg.seed}:ops")
        self._rng_http = random.Random(f"{cfg.seed}:http")
        self._rng_jitter = random.Random(f"{cfg.seed}:jitter")
        self._conns: set[_Conn] = set()
        self._recorded: dict[str, list[Kline]] = {s: [] for s in cfg.symbols}
        # time.perf_counter_ns() when each candle closed here: a client's lag is measured from it
        self.closed_at_ns: dict[str, dict[int, int]] = {s: {} for s in cfg.symbols}
        self._gapped: dict[str, int] = {}
        self._refuse = 0
        self._server: Server | None = None
        self._engine: asyncio.Task[None] | None = None
        self.clock = VirtualClock(self.start_ms, cfg.speed)
        self.port = cfg.port

    # lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> ReplayExchange:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the port and start the virtual clock and the push engine."""
        self._server = await serve(
            self._serve_ws,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
        )
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        self.clock = VirtualClock(self.start_ms, self.config.speed)
        self._engine = asyncio.create_task(self._run_engine(), name="replay-engine")

    async def stop(self) -> None:
        """Stop pushing and close every socket."""
        if self._engine is not None:
            self._engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def ws_url(self) -> str:
        """The public linear stream URL."""
        return f"ws://{self.config.host}:{self.port}/v5/public/linear"

    @property
    def rest_url(self) -> str:
        """The REST base URL (``/v5/market/kline`` below it)."""
        return f"http://{self.config.host}:{self.port}"

    def recorded(self, symbol: str) -> list[Kline]:
        """Every candle the exchange has closed since the replay started, in order."""
        return list(self._recorded[symbol])

    def now_ms(self) -> int:
        """The exchange's (virtual) time."""
        return self.clock.now_ms()

    def open_candle(self, symbol: str) -> Kline | None:
        """The candle open now (as its next interim push would carry it), if the tape has it."""
        now = self.now_ms()
        return self.tapes[symbol].partial(now - now % self.step, now)

    async def inject(self, raw: str | bytes, topic: str | None = None) -> int:
        """Send ``raw`` as it is to every socket subscribed to ``topic`` (every socket when
        None): a hostile exchange's frames, for tests. Returns how many sockets got it."""
        sent = 0
        for conn in list(self._conns):
            if topic is not None and topic not in conn.topics:
                continue
            try:
                await conn.ws.send(raw)
                sent += 1
            except ConnectionClosed:
                self._conns.discard(conn)
        self.stats["injected"] += sent
        return sent

    # push engine --------------------------------------------------------------------------
    async def _run_engine(self) -> None:
        per = self.config.updates_per_candle + 1
        tick = self.step // per
        k = 1
        while True:
            c, j = divmod(k, per)
            vt = self.start_ms + c * self.step + j * tick
            await asyncio.sleep(self.clock.real_delay(vt) + self.push_jitter_s())
            if j == 0:
                if not await self._boundary(vt):
                    return  # every tape has run out
            else:
                await self._updates(vt - j * tick, vt)
            k += 1

    def push_jitter_s(self) -> float:
        """Extra real delay of the next push: uniform in [0, ``push_jitter_ms``) ms."""
        jitter = self.config.push_jitter_ms
        return self._rng_jitter.random() * jitter / 1000.0 if jitter else 0.0

    async def _updates(self, start: int, vt: int) -> None:
        for symbol, tape in self.tapes.items():
            if self._gapped.get(symbol) == start:
                continue
            k = tape.partial(start, vt)
            if k is not None:
                topic = f"kline.{tape.interval}.{symbol}"
                await self._broadcast(topic, push_frame(topic, [ws_item(k, vt - 1)], vt))

    async def _boundary(self, vt: int) -> bool:
        """Candle ``vt - step`` closes, candle ``vt`` opens; candle faults are drawn here."""
        f, rng = self.config.faults, self._rng
        closing, opening = vt - self.step, vt
        drop_first = rng.random() < f.disconnect
        if drop_first and rng.random() < 0.5:  # sometimes the confirm is lost with the socket
            await self._disconnect_all()
            drop_first = False
        alive = False
        for symbol, tape in self.tapes.items():
            k = tape.closed(closing)
            if k is None:
                continue
            alive = True
            self._recorded[symbol].append(k)
            self.closed_at_ns[symbol][closing] = time.perf_counter_ns()
            if f.only and symbol not in f.only:
                frame = push_frame(
                    topic := f"kline.{tape.interval}.{symbol}",
                    [ws_item(k, vt - 1)],
                    vt + CONFIRM_DELAY_MS,
                )
                await self._broadcast(topic, frame)
                continue
            topic = f"kline.{tape.interval}.{symbol}"
            gapped = self._gapped.pop(symbol, None) == closing
            if rng.random() < f.gap and tape.closed(opening) is not None:
                self._gapped[symbol] = opening
                self.stats["gap"] += 1
            if gapped:
                continue
            if rng.random() < f.missing_confirm:
                self.stats["missing_confirm"] += 1
                continue
            ts = vt + CONFIRM_DELAY_MS
            items = [ws_item(k, vt - 1)]
            nxt = tape.partial(opening, opening)
            next_pushed = nxt is not None and self._gapped.get(symbol) != opening
            if next_pushed and nxt is not None and rng.random() < f.combined:
                items.append(ws_item(nxt, ts))
                self.stats["combined"] += 1
            frame = push_frame(topic, items, ts)
            await self._broadcast(topic, frame)
            if rng.random() < f.duplicate_confirm:
                self.stats["duplicate_confirm"] += 1
                await self._broadcast(topic, push_frame(topic, items[:1], ts + 1))
        if drop_first:
            await self._disconnect_all()
        if rng.random() < f.silence and self._conns:
            self.stats["silence"] += 1
            for conn in self._conns:
                conn.zombie = True
        return alive

    async def _broadcast(self, topic: str, frame: str) -> None:
        f = self.config.faults
        for conn in list(self._conns):
            if topic not in conn.topics or conn.zombie:
                continue
            try:
                if f.malformed and self._rng_frames.random() < f.malformed:
                    self.stats["malformed"] += 1
                    await conn.ws.send(malformed_frame(self._rng_frames, topic, frame))
                await conn.ws.send(frame)
            except ConnectionClosed:
                self._conns.discard(conn)

    async def _disconnect_all(self) -> None:
        if not self._conns:
            return
        self._refuse = self.config.faults.refuse_handshakes
        for conn in list(self._conns):
            self._conns.discard(conn)
            if self._rng_close.random() < 0.5:
                self.stats["disconnect_abort"] += 1
                conn.ws.transport.abort()
            else:
                self.stats["disconnect_close"] += 1
                asyncio.create_task(conn.ws.close(1001, "going away"))  # noqa: RUF006

    # websocket side -----------------------------------------------------------------------
    async def _serve_ws(self, ws: ServerConnection) -> None:
        conn = _Conn(ws)
        self._conns.add(conn)
        self.stats["connections"] += 1
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.idle_timeout_s):
                        raw = await ws.recv()
                except TimeoutError:
                    await ws.close(1000, "idle")
                    return
                if not conn.zombie:
                    await self._on_message(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)

    async def _on_message(self, conn: _Conn, raw: str | bytes) -> None:
        result = handle_op(
            raw,
            subscribed=conn.topics,
            known=self._known,
            faults=self.config.faults,
            rng=self._rng_ops,
        )
        if result.stat:
            self.stats[result.stat] += 1
        for reply in result.replies:  # the ack goes out before the first push of a topic
            await conn.ws.send(
                json.dumps({**reply, "conn_id": conn.conn_id}, separators=(",", ":"))
            )
        conn.topics.update(result.add)
        conn.topics.difference_update(result.remove)

    def _known(self, topic: str) -> bool:
        parsed = parse_topic(topic)
        return parsed is not None and parsed[0] == self.config.interval and parsed[1] in self.tapes

    # HTTP side ----------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/v5/market/kline":
            return self._rest(connection, parse_qs(url.query))
        if url.path.startswith("/v5/public/"):
            if self._refuse > 0:
                self._refuse -= 1
                self.stats["refused_handshake"] += 1
                return connection.respond(503, "Service Unavailable\n")
            return None
        return _json(connection, 404, {"retCode": 404, "retMsg": "Not Found"})

    def _rest(self, connection: ServerConnection, q: dict[str, list[str]]) -> Response:
        f = self.config.faults
        self.stats["rest_requests"] += 1
        self.rest_times.append(time.monotonic())
        if f.http_error and self._rng_http.random() < f.http_error:
            status = 429 if self._rng_http.random() < 0.5 else 500
            self.stats[f"http_{status}"] += 1
            return connection.respond(
                status, "Too Many Requests\n" if status == 429 else "Internal Server Error\n"
            )
        body = kline_envelope(self.tapes, self.config.interval, q, self.now_ms())
        return _json(connection, 200, body)


def _json(connection: ServerConnection, status: int, body: dict[str, Any]) -> Response:
    resp = connection.respond(status, json.dumps(body, separators=(",", ":")))
    del resp.headers["Content-Type"]
    resp.headers["Content-Type"] = "application/json"
    return resp
