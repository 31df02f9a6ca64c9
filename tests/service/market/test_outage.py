"""An exchange outage of days, in virtual time: 10,000 failures in a row end nothing.

Nothing listens on the port, so every websocket handshake and every REST request really fails
on a real loopback socket, at once; only the waits between attempts are virtual (``asyncio.sleep``
returns at once and the wait is added to a virtual clock). Before, the backoff computed
``factor ** attempt`` and raised ``OverflowError`` after ~1,024 attempts, killing the feed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.market.feed import KlineFeed
from service.market.klines import KlineEvent
from service.market.rest import Backoff, RestKlines
from service.metrics import Metrics

FAILURES = 10_000


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_ten_thousand_failures_in_a_row_never_end_the_feed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20,000 "reconnecting" lines otherwise
    monkeypatch.setattr(logging.getLogger("service.market"), "level", logging.ERROR)
    port = closed_port()
    real_sleep = asyncio.sleep
    waits: list[float] = []

    async def virtual_sleep(delay: float, result: Any = None) -> Any:
        waits.append(delay)
        await real_sleep(0)
        return result

    feed = KlineFeed(
        symbols=["BTCUSDT"],
        interval="5",
        ws_url=f"ws://127.0.0.1:{port}/v5/public/linear",
        rest=RestKlines(f"http://127.0.0.1:{port}", max_attempts=1),
        out=asyncio.Queue[KlineEvent](),
        metrics=Metrics(CollectorRegistry()),
        backfill_bars=300,
        backoff=Backoff(initial_s=0.5, max_s=30.0, factor=2.0, jitter=0.25),
        warmup_backoff=Backoff(initial_s=0.5, max_s=30.0, factor=2.0, jitter=0.25),
    )
    monkeypatch.setattr(asyncio, "sleep", virtual_sleep)
    task = asyncio.create_task(feed.run())
    try:
        while feed.reconnects < FAILURES:
            assert not task.done(), task.exception()
            await real_sleep(0.005)
        assert not task.done()
        lane = feed.lanes["BTCUSDT"]
        assert lane.failures >= FAILURES // 2  # the REST warm-up kept failing beside it
        reasons = feed.problems()
        assert any(r.startswith("BTCUSDT: REST backfill failing") for r in reasons), reasons
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        monkeypatch.undo()
    tail = waits[-2_000:]
    assert max(waits) <= 30.0 * 1.25
    assert min(tail) >= 30.0 * 0.75  # capped, not reset, after thousands of failures
    assert len(set(tail)) > 1_900  # jittered: retries of many clients do not line up
    assert sum(waits) / 3600 > 2 * FAILURES * 20 / 3600  # > 100 hours of virtual outage
