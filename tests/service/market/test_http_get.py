"""The bounded HTTP GET on a real loopback socket: chunked and gzip bodies as a CDN sends
them, and the caps and the deadline that a hostile server meets."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from service.market import http_get


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


async def serve(answer: bytes) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v5/market/kline"
    finally:
        server.close()


@pytest.fixture
def body() -> bytes:
    return b'{"retCode":0,"retMsg":"OK","result":{"list":[]},"time":1}' * 50


async def test_a_chunked_gzip_answer_is_decoded(body: bytes) -> None:
    raw = gzip.compress(body)
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        + chunked(raw)
    )
    async for url in serve(answer):
        resp = await http_get.get(url, {"symbol": "BTCUSDT", "end": None}, deadline_s=5)
    assert resp.status == 200 and resp.body == body


async def test_a_body_over_the_cap_is_refused_before_it_is_read(body: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async for url in serve(answer):
        with pytest.raises(http_get.HttpError, match="larger than"):
            await http_get.get(url, {}, deadline_s=5, max_body=len(body) - 1)


async def test_a_server_that_never_answers_meets_the_deadline() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        with pytest.raises(http_get.HttpError, match="within"):
            await http_get.get(url, {}, deadline_s=0.3)
    finally:
        server.close()
    assert loop.time() - t0 < 1.0


def test_dechunk_refuses_truncated_bodies() -> None:
    assert http_get.dechunk(chunked(b"hello world")) == b"hello world"
    with pytest.raises(http_get.HttpError):
        http_get.dechunk(b"5\r\nhel")
