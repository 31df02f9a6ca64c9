"""A bounded Python HTTP/1.1 load generator: the fallback when ``wrk`` is not installed.

``connections`` keep-alive connections on loopback each send GET requests back to back for
``seconds``; every response is read whole (Content-Length) and timed. Slower than wrk (the
generator itself is Python), so it measures the ratio between two apps, not their ceiling.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from bench.load_result import WrkResult


async def _worker(port: int, request: bytes, stop: float, lat: list[int], bad: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter_ns
    try:
        while time.monotonic() < stop:
            t0 = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(clock() - t0)
            if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                bad.append(1)
    finally:
        writer.close()


def load(port: int, path: str, seconds: float, connections: int = 8) -> WrkResult:
    """Run the load for ``seconds``; requests/s and latency percentiles (µs)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    lat: list[int] = []
    bad: list[int] = []

    async def main() -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(_worker(port, request, stop, lat, bad) for _ in range(connections)))

    t0 = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - t0
    us = np.asarray(lat, dtype=np.float64) / 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(us, (50, 90, 99))) if us.size else (0, 0, 0)
    return WrkResult(len(lat) / elapsed, len(lat), len(bad), p50, p90, p99)
