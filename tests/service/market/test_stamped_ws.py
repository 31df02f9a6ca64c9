"""StampedConnection: each message stamped when the loop read it, over a real loopback socket."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from service.market.stamped_ws import StampedConnection, arrival_ns


async def test_messages_are_stamped_when_read_not_when_recv_resumes() -> None:
    async def handler(conn: ServerConnection) -> None:
        await conn.send("one")
        await conn.send(["fragmented ", "in ", "three"])  # one message, three frames
        await conn.send(b"three")
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=StampedConnection) as ws:
            assert isinstance(ws, StampedConnection)
            deadline = time.monotonic() + 5
            while len(ws.arrivals) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the loop reads the frames meanwhile
            assert len(ws.arrivals) == 3  # one per message, not per frame
            await asyncio.sleep(0.05)
            before_recv = time.perf_counter_ns()
            got, stamps = [], []
            for _ in range(3):
                got.append(await ws.recv())
                stamps.append(arrival_ns(ws))
            assert got == ["one", "fragmented in three", b"three"]
            assert stamps == sorted(stamps)
            assert all(before_recv - s >= 40_000_000 for s in stamps)  # read >= 40 ms earlier
            assert not ws.arrivals
            now = time.perf_counter_ns()
            assert now - arrival_ns(ws) < 1_000_000_000  # nothing queued: "now"
