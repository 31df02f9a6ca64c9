"""A bounded HTTP/1.1 GET on asyncio streams: one total deadline, capped bytes, capped inflation.

Why not pybit/requests, as before: ``requests`` only has a per-read timeout (a server that
trickles one byte every few seconds never trips it), reads a body of any size and inflates
gzip without limit, and runs in a worker thread that cannot be cancelled, so a hanging answer
kept a thread, a lock and the caller. Here the whole exchange (connect, TLS, head, body) runs
under one ``asyncio.timeout``, so cancellation and the deadline are exact and no thread is
left behind; the body is read up to ``max_body`` bytes and inflated up to ``max_inflated``
bytes (a gzip bomb stops at the cap, never in memory). Each request opens its own connection
(``Connection: close``): REST is for warm-up and gap repair, a few requests per candle at most,
and no request can then wait behind another symbol's.

The protocol part is pure (:func:`parse_head`, :func:`dechunk`, :func:`inflate`) and tested on
bytes; :func:`get` is the thin shell that moves bytes.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

__all__ = ["HttpError", "Response", "get", "inflate", "parse_head"]
MAX_HEAD = 16 * 1024  # status line + headers
MAX_BODY = 4 * 1024 * 1024  # bytes on the wire: a 1000-row kline page is ~90 KB
MAX_INFLATED = 8 * 1024 * 1024  # bytes after gzip/deflate


class HttpError(Exception):
    """The exchange could not be talked to (network, deadline, a broken or oversized answer)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes  # decoded (de-chunked, inflated)


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and headers of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpError(f"bad header line {line[:60]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), headers


def dechunk(data: bytes) -> bytes:
    """The payload of a complete chunked body (``data`` already bounded by the caller)."""
    out = bytearray()
    i = 0
    while True:
        eol = data.find(b"\r\n", i)
        if eol < 0:
            raise HttpError("truncated chunked body")
        size_text = data[i:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            return bytes(out)
        start = eol + 2
        if start + size > len(data):
            raise HttpError("truncated chunked body")
        out += data[start : start + size]
        i = start + size + 2


def inflate(body: bytes, encoding: str, max_out: int = MAX_INFLATED) -> bytes:
    """``body`` decoded per Content-Encoding, refusing to produce more than ``max_out`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise HttpError(f"unsupported content-encoding {encoding[:30]!r}")
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, max_out + 1)  # one byte past the cap tells it was exceeded
    except zlib.error as e:
        raise HttpError(f"corrupt {encoding} body: {e}") from None
    if len(out) > max_out or d.unconsumed_tail:
        raise HttpError(f"{encoding} body inflates past {max_out} bytes")
    return out


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_body: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        # the chunk framing is counted in the cap too: read to the end, then de-chunk
        data = bytearray()
        while not data.endswith(b"0\r\n\r\n"):
            piece = await reader.read(65536)
            if not piece:
                break
            data += piece
            if len(data) > max_body:
                raise HttpError(f"body larger than {max_body} bytes")
        return dechunk(bytes(data))
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpError(f"bad content-length {length[:20]!r}")
        n = int(length)
        if n > max_body:
            raise HttpError(f"body of {n} bytes is larger than {max_body}")
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise HttpError("connection closed before the whole body") from None
    data = bytearray()  # no length: the body ends when the server closes
    while piece := await reader.read(65536):
        data += piece
        if len(data) > max_body:
            raise HttpError(f"body larger than {max_body} bytes")
    return bytes(data)


async def get(
    url: str,
    params: dict[str, object],
    *,
    deadline_s: float,
    max_body: int = MAX_BODY,
    max_inflated: int = MAX_INFLATED,
) -> Response:
    """GET ``url?params`` (None values left out) within ``deadline_s`` seconds in all."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url[:80]!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    query = urlencode({k: v for k, v in params.items() if v is not None})
    target = f"{parts.path or '/'}?{query}" if query else parts.path or "/"
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
        "Accept-Encoding: gzip\r\nUser-Agent: apprentice\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(deadline_s):
            reader, writer = await asyncio.open_connection(
                parts.hostname,
                port,
                ssl=ssl.create_default_context() if tls else None,
                limit=MAX_HEAD,
            )
            writer.write(request)
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise HttpError(f"response head larger than {MAX_HEAD} bytes") from None
            except asyncio.IncompleteReadError:
                raise HttpError("connection closed before a response") from None
            status, headers = parse_head(head[:-4])
            raw = await _read_body(reader, headers, max_body)
        body = inflate(raw, headers.get("content-encoding", ""), max_inflated)
        return Response(status, headers, body)
    except TimeoutError:
        raise HttpError(f"no complete answer within {deadline_s:g} s") from None
    except (OSError, ssl.SSLError, UnicodeError, ValueError) as e:
        raise HttpError(f"{type(e).__name__}: {e}") from None
    finally:
        if writer is not None:
            writer.close()
