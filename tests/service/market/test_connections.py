"""The feed's sockets on real loopback against the replay exchange (issue 30, item 3).

Symbols split over several connections all arrive, exactly; one connection's trouble leaves
the others' symbols on time; a stalled consumer does not stop a connection's reader (the
socket stays open through pings and watchdogs shorter than the stall, nothing is lost after);
and when even the frame queue overflows, the dropped frames' closed candles come by REST.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prometheus_client import CollectorRegistry

from service.market.feed import KlineFeed
from service.market.klines import KlineEvent
from service.market.rest import Backoff, RestKlines
from service.metrics import Metrics
from service.replay import Faults, ReplayConfig, ReplayExchange
from service.replay.soak import fast_feed_options, soak

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
ONE_TOPIC_BUDGET = 19  # '["kline.5.BTCUSDT"]': one symbol per connection


def lenient(**more: Any) -> dict[str, Any]:
    # a loaded CI machine must not trip the watchdog where a test asserts "no reconnect"
    return fast_feed_options() | {"silence_timeout_s": 5.0, "data_timeout_s": 8.0} | more


async def test_symbols_split_over_three_connections_deliver_every_closed_candle() -> None:
    feeds: list[KlineFeed] = []
    r = await soak(
        Faults(),
        symbols=SYMBOLS,
        candles=25,
        feed_options=lenient(args_budget_chars=ONE_TOPIC_BUDGET),
        on_feed=feeds.append,
    )
    assert r.ok, r.mismatches  # 300 bars of history, then every live candle, exact
    (feed,) = feeds
    assert [c.topics for c in feed.connections] == [[f"kline.5.{s}"] for s in SYMBOLS]
    assert r.exchange_stats["connections"] == 3 and r.feed_stats["reconnects"] == 0
    for s in SYMBOLS:  # by its own socket, not by REST
        assert sum(e.source == "ws" for e in r.closed[s]) >= 20, s


async def test_one_connections_trouble_does_not_delay_the_others() -> None:
    """SOL's socket is cut again and again; BTC's and ETH's (on their own) never notice."""

    async def cut_sol(ex: ReplayExchange) -> None:
        while True:
            await asyncio.sleep(0.25)
            for conn in list(ex._conns):
                if "kline.5.SOLUSDT" in conn.topics:
                    ex.stats["cut"] += 1
                    conn.ws.transport.abort()

    feeds: list[KlineFeed] = []
    r = await soak(
        Faults(),
        symbols=SYMBOLS,
        candles=40,
        speed=3000.0,
        script=cut_sol,
        feed_options=lenient(args_budget_chars=40),  # BTC+ETH on one socket, SOL on another
        on_feed=feeds.append,
    )
    assert r.ok, r.mismatches
    (feed,) = feeds
    btc_eth, sol = feed.connections
    assert btc_eth.topics == ["kline.5.BTCUSDT", "kline.5.ETHUSDT"]
    assert r.exchange_stats["cut"] >= 3 and sol.reconnects >= 3
    assert btc_eth.reconnects == 0
    for s in ("BTCUSDT", "ETHUSDT"):
        first_ws = [e.source for e in r.closed[s]].index("ws")
        assert all(e.source == "ws" for e in r.closed[s][first_ws:]), s  # no gap to repair
    assert any(e.source == "rest" for e in r.closed["SOLUSDT"][300:])  # SOL's were repaired


async def run_with_a_stall(stall_s: float, **feed_opts: Any) -> tuple[KlineFeed, dict[str, Any]]:
    """A feed of three symbols whose consumer stops for ``stall_s`` after 5 live candles
    (the feed's queue holds 2: the feed's processing blocks), then drains; returns the feed
    and, per symbol, the delivered closed candles and the exchange's record."""
    cfg = ReplayConfig(symbols=SYMBOLS, speed=6000.0, updates_per_candle=2, history_bars=200)
    async with ReplayExchange(cfg) as ex:
        out: asyncio.Queue[KlineEvent] = asyncio.Queue(maxsize=2)
        feed = KlineFeed(
            symbols=list(SYMBOLS),
            interval="5",
            ws_url=ex.ws_url,
            rest=RestKlines(ex.rest_url, backoff=lambda: Backoff(0.01, 0.05)),
            out=out,
            metrics=Metrics(CollectorRegistry()),
            backfill_bars=0,
            **(fast_feed_options() | feed_opts),
        )
        closed: dict[str, list[KlineEvent]] = {s: [] for s in SYMBOLS}
        task = asyncio.create_task(feed.run())
        try:
            async with asyncio.timeout(30):
                while sum(len(v) for v in closed.values()) < 5:
                    ev = await out.get()
                    if ev.kline.confirm:
                        closed[ev.kline.symbol].append(ev)
                backlog_before = feed.connections[0].max_backlog
                await asyncio.sleep(stall_s)  # the consumer is stalled: nothing is taken
                assert not task.done(), task.exception()
                target = ex.now_ms() + 10 * ex.step
                while min(v[-1].kline.start if v else 0 for v in closed.values()) < target:
                    ev = await out.get()
                    if ev.kline.confirm:
                        closed[ev.kline.symbol].append(ev)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        report = {
            s: (closed[s], [k for k in ex.recorded(s) if k.start >= closed[s][0].kline.start])
            for s in SYMBOLS
        }
        return feed, report | {"backlog_before": backlog_before, "stats": dict(ex.stats)}


def assert_exact(report: dict[str, Any]) -> None:
    for s in SYMBOLS:
        got, want = report[s]
        got_klines = [e.kline for e in got]
        assert got_klines == want[: len(got_klines)], s  # every closed candle, once, in order
        assert len(got_klines) >= 10, s


async def test_a_stalled_consumer_does_not_stop_the_reader() -> None:
    # the stall (3 s) is longer than the silence and data watchdogs (1 s, 1.5 s) and thirty
    # keep-alive pings (0.1 s, with 0.1 s to answer): before, the reader waited on the
    # consumer, the library's 16-frame buffer filled, the pong went unread and the socket
    # closed with 1011 (a reconnect, and REST for every candle of the stall)
    feed, report = await run_with_a_stall(3.0, silence_timeout_s=1.0, data_timeout_s=1.5)
    conn = feed.connections[0]
    assert feed.reconnects == 0 and report["stats"]["connections"] == 1
    assert conn.max_backlog > max(16, report["backlog_before"])  # read on through the stall
    assert conn.overflows == 0
    assert_exact(report)
    assert feed.stats.get("fills", 0) == 0  # nothing needed REST: the socket had it all


async def test_a_full_frame_queue_drops_frames_and_rest_repairs_their_candles() -> None:
    feed, report = await run_with_a_stall(
        2.0, silence_timeout_s=1.0, data_timeout_s=1.5, frame_queue_frames=20
    )
    conn = feed.connections[0]
    assert feed.reconnects == 0  # an overflow never costs the connection
    assert conn.overflows > 0 and conn.max_backlog == 20
    assert feed.stats["rejected_frame_overflow"] == conn.overflows
    assert feed.stats.get("fills", 0) > 0  # the dropped confirms came by REST
    assert_exact(report)
