"""Live start does not wait on REST: the websocket opens while the REST warm-up fails.

On loopback against the replay exchange with every REST request failing (HTTP 429/500):
the socket connects and frames flow at once, /ready names the REST warm-up as the cause
(not the websocket), each retry comes when the log said it would (injected backoff), and
once REST answers the history arrives first and the series is exact bar for bar.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.market.feed import KlineFeed
from service.market.klines import KlineEvent
from service.market.rest import Backoff, RestKlines
from service.metrics import Metrics
from service.replay import Faults, ReplayConfig, ReplayExchange
from service.replay.soak import fast_feed_options, soak
from service.runtime import Runtime

RETRY = re.compile(r"backfill BTCUSDT failed .*; retrying in ([0-9.]+) s")


async def test_the_websocket_streams_while_rest_fails_and_history_comes_first_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    at_recovery: dict[str, Any] = {}

    async def rest_outage(ex: ReplayExchange) -> None:
        await asyncio.sleep(1.5)  # real seconds of REST failing
        at_recovery.update(ex.stats, rest_times=list(ex.rest_times))
        ex.config = replace(ex.config, faults=Faults())  # REST answers again

    caplog.set_level(logging.WARNING, logger="service.market.backfill")
    backoff = Backoff(initial_s=0.1, max_s=0.4, factor=2.0, jitter=0.0)
    options = fast_feed_options() | {"warmup_backoff": backoff, "silence_timeout_s": 5.0}
    r = await soak(
        Faults(http_error=1.0),
        symbols=("BTCUSDT",),
        candles=40,
        speed=3000.0,
        script=rest_outage,
        feed_options=options,
        timeout_s=60,
    )
    assert r.ok, r.mismatches  # 300 bars of history first, then every live bar, exact
    # during the outage: the socket was open and frames were read (once: nothing until REST)
    assert at_recovery["connections"] >= 1
    assert at_recovery["http_429"] + at_recovery["http_500"] >= 3
    frames_in_outage = r.feed_stats["frames"]
    assert frames_in_outage > 0 and r.feed_stats["reconnects"] == 0
    # each retry came when the log said: request i+1 follows the log line of failure i by
    # the delay it named (0.1, 0.2, 0.4, 0.4 ...), not by an unlogged retry loop of its own
    logged = [
        (rec.created, float(m.group(1)))
        for rec in caplog.records
        if (m := RETRY.search(rec.getMessage()))
    ]
    assert len(logged) >= 3
    assert [d for _, d in logged[:3]] == [0.1, 0.2, 0.4]
    wall = time.time() - time.monotonic()  # the requests were stamped on the monotonic clock
    requests = [t + wall for t in at_recovery["rest_times"]]
    for when, delay in logged[:-1]:
        following = min(t for t in requests if t >= when)
        assert delay - 0.05 <= following - when <= delay + 1.0, (delay, following - when)


async def test_ready_names_the_rest_warm_up_not_the_websocket(
    make_settings: Any, tmp_path: Path
) -> None:
    cfg = ReplayConfig(symbols=("BTCUSDT",), speed=3000.0, faults=Faults(http_error=1.0))
    async with ReplayExchange(cfg) as ex:
        settings = make_settings(ws_url=ex.ws_url, rest_url=ex.rest_url)

        def factory(s: Any, queue: asyncio.Queue[KlineEvent], metrics: Metrics) -> KlineFeed:
            return KlineFeed(
                symbols=["BTCUSDT"],
                interval="5",
                ws_url=ex.ws_url,
                rest=RestKlines(ex.rest_url, max_attempts=1),
                out=queue,
                metrics=metrics,
                backfill_bars=300,
                emit_interim=False,
                **(fast_feed_options() | {"silence_timeout_s": 5.0}),
            )

        rt = Runtime(settings, feed_factory=factory, registry=CollectorRegistry())
        await rt.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (rt.feed and rt.feed.connected):
                await asyncio.sleep(0.02)
            reasons = rt.readiness()
            assert rt.feed is not None and rt.feed.connected  # the socket did not wait
            assert not any("websocket" in r for r in reasons), reasons
            assert any(r.startswith("BTCUSDT: REST backfill failing") for r in reasons), reasons
        finally:
            await rt.stop()
