"""A hostile REST exchange beside the replay exchange: the answers that once stalled the feed.

:class:`HostileRest` serves ``GET /v5/market/kline`` on its own loopback port from the replay
exchange's tapes (the same answers as ``ReplayExchange``'s REST), except for the ``target``
symbol, which gets ``mode``: a request that never answers (``hang``), a body that trickles
one byte every ``trickle_s`` (``trickle``), HTTP 500 (``http500``), an HTML page (``html``),
envelopes of the wrong shape (``malformed``, a different one each time), a small gzip body
that inflates to ``bomb_bytes`` (``gzip_bomb``), rows at 1e300 or 1e-300 (``absurd_high``,
``absurd_low``), or ``retCode`` 10001 (``refuse``). ``mode`` may be switched at any time, so a
test can warm up honestly and then turn hostile. Written on raw asyncio streams: a hang or a
trickle needs control of every byte, which an HTTP framework would not give.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import zlib
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from service.replay.exchange import ReplayExchange
from service.replay.protocol import kline_envelope

__all__ = ["MODES", "HostileRest", "gzip_bomb"]
MODES = (
    "ok",
    "hang",
    "trickle",
    "http500",
    "html",
    "malformed",
    "gzip_bomb",
    "absurd_high",
    "absurd_low",
    "refuse",
)
MALFORMED: tuple[dict[str, Any], ...] = (
    {"retCode": 0, "retMsg": "OK", "result": [], "time": 1},  # result an array
    {"retCode": 0, "retMsg": "OK", "result": None, "time": 1},  # result null
    {"retCode": 0, "retMsg": "OK", "result": {"symbol": "X"}, "time": 1},  # no list
    {"retCode": "0", "retMsg": "OK", "result": {"list": []}, "time": 1},  # string retCode
    {"retCode": 10016, "result": {}, "time": 1},  # no retMsg
)


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of ``inflated`` bytes of JSON whitespace (compressed ~1000:1)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * (1 << 20)
    parts = [z.compress(b'{"retCode":0,"retMsg":"OK","pad":"')]
    for _ in range(inflated >> 20):
        parts.append(z.compress(chunk))
    parts.append(z.compress(b'"}'))
    parts.append(z.flush())
    return b"".join(parts)


class HostileRest:
    """``h = HostileRest(target="BTCUSDT", mode="hang")``, ``await h.start(exchange)``, point
    the client at ``h.url``, ``await h.stop()``; ``stats`` counts the answers by mode."""

    def __init__(
        self,
        *,
        target: str | None = None,
        mode: str = "ok",
        trickle_s: float = 0.5,
        bomb_bytes: int = 256 << 20,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.exchange: ReplayExchange | None = None
        self.target = target
        self.mode = mode
        self.trickle_s = trickle_s
        self.bomb_bytes = bomb_bytes
        self.stats: Counter[str] = Counter()
        self._malformed = itertools.cycle(MALFORMED)
        self._bomb: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, exchange: ReplayExchange) -> None:
        """Serve ``exchange``'s tapes on a free loopback port."""
        self.exchange = exchange
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the port and every open answer (a hanging one included)."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("ascii", "replace")
            query = parse_qs(urlsplit(target).query)
            symbol = (query.get("symbol") or [""])[0]
            mode = self.mode if symbol == self.target else "ok"
            self.stats[mode] += 1
            await self._answer(writer, mode, query)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _envelope(self, query: dict[str, list[str]]) -> dict[str, Any]:
        ex = self.exchange
        assert ex is not None, "start() first"
        return kline_envelope(ex.tapes, ex.config.interval, query, ex.now_ms())

    async def _answer(
        self, writer: asyncio.StreamWriter, mode: str, query: dict[str, list[str]]
    ) -> None:
        ctype, extra = "application/json", ""
        status = "200 OK"
        if mode == "hang":
            await asyncio.Event().wait()  # until the client gives up (or the server stops)
        if mode == "http500":
            status, body, ctype = (
                "500 Internal Server Error",
                b"Internal Server Error\n",
                "text/plain",
            )
        elif mode == "html":
            body, ctype = b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
        elif mode == "malformed":
            body = json.dumps(next(self._malformed)).encode()
        elif mode == "gzip_bomb":
            if self._bomb is None:
                self._bomb = await asyncio.to_thread(gzip_bomb, self.bomb_bytes)
            body, extra = self._bomb, "Content-Encoding: gzip\r\n"
        elif mode == "refuse":
            body = json.dumps(
                {
                    "retCode": 10001,
                    "retMsg": "params error: symbol invalid",
                    "result": {},
                    "retExtInfo": {},
                    "time": self._envelope(query)["time"],
                }
            ).encode()
        else:
            env = self._envelope(query)
            if mode in ("absurd_high", "absurd_low"):
                price = "1e300" if mode == "absurd_high" else "1e-300"
                for row in env.get("result", {}).get("list", []):
                    row[1:5] = [price] * 4
            body = json.dumps(env, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        ).encode()
        writer.write(head)
        if mode == "trickle":
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(self.trickle_s)
        else:
            writer.write(body)
        await writer.drain()
