"""The kline feed on real loopback sockets against the replay exchange, one test per fault.

Whatever the exchange does, the feed must deliver every closed candle exactly once, in
order, with the exchange's values (``SoakResult.mismatches`` is empty), and never stop.
Each test also checks that its fault really happened, so a silent no-op cannot pass.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from service.market.feed import ConfigError, KlineFeed
from service.market.klines import KlineEvent
from service.market.rest import RestKlines
from service.metrics import Metrics
from service.replay import Faults, ReplayConfig, ReplayExchange
from service.replay.soak import SoakResult, fast_feed_options, soak
from service.runtime import bybit_feed
from service.settings import load_settings


# where a test asserts "no reconnect", a loaded CI machine must not trip the watchdog
def lenient() -> dict[str, Any]:
    return fast_feed_options() | {"silence_timeout_s": 5.0, "data_timeout_s": 8.0}


def check(result: SoakResult) -> None:
    assert result.ok, result.mismatches
    for symbol, events in result.closed.items():
        starts = [e.kline.start for e in events]
        assert starts == sorted(set(starts)), f"{symbol}: not exactly once in order"
        assert all(e.kline.confirm for e in events)


def _btc_feed(port: int, registry: CollectorRegistry, **opts: Any) -> KlineFeed:
    """A BTCUSDT feed (no backfill) against a test server on loopback ``port``."""
    return KlineFeed(
        symbols=["BTCUSDT"],
        interval="5",
        ws_url=f"ws://127.0.0.1:{port}/v5/public/linear",
        rest=RestKlines(f"http://127.0.0.1:{port}"),
        out=asyncio.Queue(),
        metrics=Metrics(registry),
        backfill_bars=0,
        **opts,
    )


def value(result: SoakResult, name: str, **labels: str) -> float:
    v = result.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_no_faults_streams_closed_candles_from_the_websocket() -> None:
    r = await soak(Faults(), candles=20, feed_options=lenient())
    check(r)
    assert r.feed_stats["reconnects"] == 0
    for s in ("BTCUSDT", "ETHUSDT"):
        assert [e.source for e in r.closed[s][:300]] == ["rest"] * 300
        sources = [e.source for e in r.closed[s]]
        first_ws = sources.index("ws")  # bars that closed before the subscription came by REST
        assert all(src == "ws" for src in sources[first_ws:])  # after that, nothing needed REST
        # interim updates are only ever for the candle after the last closed one
        for ev in r.interim[s]:
            assert ev.received_ns > 0 and ev.exchange_ts >= ev.kline.start
    n_rest = sum(e.source == "rest" for e in r.closed["BTCUSDT"])
    assert value(r, "apprentice_backfilled_klines_total", symbol="BTCUSDT") == n_rest >= 300
    assert value(r, "apprentice_klines_total", symbol="BTCUSDT", confirmed="true") >= 20
    assert value(r, "apprentice_ws_reconnects_total") == 0
    age = value(r, "apprentice_last_kline_age_seconds", symbol="ETHUSDT")
    assert math.isfinite(age) and age >= 0


async def test_disconnects_and_refused_handshakes() -> None:
    r = await soak(Faults(disconnect=0.15, refuse_handshakes=1), candles=30, seed=2)
    check(r)
    assert (
        r.exchange_stats.get("disconnect_abort", 0) + r.exchange_stats.get("disconnect_close", 0)
        > 0
    )
    assert r.exchange_stats.get("refused_handshake", 0) > 0
    assert r.feed_stats["reconnects"] > 0
    assert value(r, "apprentice_ws_reconnects_total") == r.feed_stats["reconnects"]


async def test_silent_zombie_sockets_are_reconnected() -> None:
    r = await soak(Faults(silence=0.2), candles=30, seed=3)
    check(r)
    assert r.exchange_stats.get("silence", 0) > 0
    assert r.feed_stats["reconnects"] > 0


async def test_malformed_frames_are_counted_and_skipped() -> None:
    r = await soak(Faults(malformed=0.3), candles=30, seed=4, feed_options=lenient())
    check(r)
    injected = r.exchange_stats.get("malformed", 0)
    counted = sum(v for k, v in r.rejected.items() if k != "duplicate")
    assert injected > 0 and 0 < counted <= injected
    assert r.feed_stats["reconnects"] == 0  # a bad frame never costs the connection


async def test_duplicate_confirms_are_idempotent() -> None:
    r = await soak(Faults(duplicate_confirm=0.4), candles=30, seed=5)
    check(r)
    assert r.exchange_stats.get("duplicate_confirm", 0) > 0
    assert r.rejected.get("duplicate", 0) > 0


async def test_missing_confirms_are_fetched_by_rest() -> None:
    r = await soak(Faults(missing_confirm=0.3), candles=30, seed=6)
    check(r)
    assert r.exchange_stats.get("missing_confirm", 0) > 0
    assert r.feed_stats.get("late_fills", 0) > 0
    assert any(e.source == "rest" for s in r.closed for e in r.closed[s][300:])


async def test_two_candles_in_one_frame() -> None:
    r = await soak(Faults(combined=0.6), candles=30, seed=7)
    check(r)
    assert r.exchange_stats.get("combined", 0) > 0


async def test_gaps_in_the_stream_are_filled() -> None:
    r = await soak(Faults(gap=0.25), candles=30, seed=8)
    check(r)
    assert r.exchange_stats.get("gap", 0) > 0
    assert r.feed_stats.get("gaps", 0) + r.feed_stats.get("late_fills", 0) > 0


async def test_transiently_rejected_subscriptions_are_retried() -> None:
    r = await soak(Faults(reject_subscribe=0.5), candles=20, seed=6)
    check(r)
    assert r.exchange_stats.get("reject_subscribe", 0) > 0
    assert r.feed_stats.get("subscribe_retries", 0) > 0


async def test_http_errors_during_fills_are_retried() -> None:
    r = await soak(Faults(http_error=0.4, missing_confirm=0.3), candles=30, seed=10)
    check(r)
    assert r.exchange_stats.get("http_429", 0) + r.exchange_stats.get("http_500", 0) > 0


async def test_a_rejected_topic_is_dropped_and_the_rest_resubscribed() -> None:
    bad = "kline.5.SOLUSDT"
    r = await soak(
        Faults(reject_topics=frozenset({bad})),
        symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        candles=20,
        seed=11,
    )
    check(r)  # BTC and ETH complete although SOL voided their batch
    assert r.exchange_stats.get("rejected_topic", 0) > 0
    assert r.feed_stats["rejected_topics"] == 1
    assert all(e.source == "rest" for e in r.closed["SOLUSDT"])  # only its backfill


async def test_all_faults_at_once_deliver_the_exchange_series_bar_for_bar() -> None:
    r = await soak(Faults.all(), symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"), candles=80, seed=12)
    check(r)
    injected = r.exchange_stats
    for fault in ("malformed", "duplicate_confirm", "missing_confirm", "combined", "gap"):
        assert injected.get(fault, 0) > 0, fault
    assert r.feed_stats["reconnects"] > 0
    for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        recorded = r.expected[s]
        live = [e.kline for e in r.closed[s] if e.kline.start >= recorded[0].start]
        assert live == recorded[: len(live)]  # the exchange's own record, bar for bar


async def test_direct_hand_off_keeps_every_candle_once_and_in_order() -> None:
    # The service's way: closed candles go straight to the pipeline when its queue is empty,
    # REST fills and anything behind them through the queue; together: the exchange's series.
    r = await soak(Faults.all(), candles=40, seed=5, direct=True)
    check(r)
    n_ws = sum(e.source == "ws" for s in r.closed for e in r.closed[s])
    assert 0 < r.direct <= n_ws  # the callback carried websocket candles...
    assert r.feed_stats["reconnects"] > 0 and r.feed_stats.get("closed_rest", 0) > 0  # ...faults


async def test_slow_consumer_never_loses_a_closed_candle() -> None:
    r = await soak(Faults(), candles=25, queue_size=16, consumer_delay_s=0.002, seed=13)
    check(r)
    assert r.rejected.get("queue_overflow", 0) > 0  # interim updates were shed instead


async def test_bad_symbol_refuses_to_start() -> None:
    async with ReplayExchange(ReplayConfig(symbols=("BTCUSDT",), speed=6000.0)) as ex:
        feed = KlineFeed(
            symbols=["BTCUSDT", "NOPEUSDT"],
            interval="5",
            ws_url=ex.ws_url,
            rest=RestKlines(ex.rest_url),
            out=asyncio.Queue(),
            metrics=Metrics(CollectorRegistry()),
            **fast_feed_options(),
        )
        with pytest.raises(ConfigError, match="NOPEUSDT"):
            await asyncio.wait_for(feed.run(), 10)


async def test_every_topic_rejected_is_a_config_error() -> None:
    faults = Faults(reject_topics=frozenset({"kline.5.BTCUSDT"}))
    async with ReplayExchange(
        ReplayConfig(symbols=("BTCUSDT",), speed=6000.0, faults=faults)
    ) as ex:
        feed = KlineFeed(
            symbols=["BTCUSDT"],
            interval="5",
            ws_url=ex.ws_url,
            rest=RestKlines(ex.rest_url),
            out=asyncio.Queue(),
            metrics=Metrics(CollectorRegistry()),
            backfill_bars=0,
            **fast_feed_options(),
        )
        with pytest.raises(ConfigError, match="rejected every topic"):
            await asyncio.wait_for(feed.run(), 10)


async def _handshakes_seen(status: int, forbidden_backoff_s: float) -> int:
    seen = 0

    def refuse(connection: ServerConnection, request: Request) -> Response:
        nonlocal seen
        seen += 1
        return connection.respond(status, "no\n")

    async def handler(ws: ServerConnection) -> None:
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        registry = CollectorRegistry()
        opts = fast_feed_options() | {"forbidden_backoff_s": forbidden_backoff_s}
        feed = _btc_feed(port, registry, **opts)
        task = asyncio.create_task(feed.run())
        await asyncio.sleep(0.6)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # cancellation is never swallowed
        assert not feed.connected
        assert registry.get_sample_value("apprentice_ws_connected") == 0
    return seen


async def test_http_403_on_the_handshake_backs_off_for_long() -> None:
    assert await _handshakes_seen(403, forbidden_backoff_s=60.0) == 1
    assert await _handshakes_seen(503, forbidden_backoff_s=60.0) > 1  # ordinary backoff


async def test_feed_is_cancellable_mid_stream() -> None:
    async with ReplayExchange(
        ReplayConfig(symbols=("BTCUSDT",), speed=6000.0, history_bars=400)
    ) as ex:
        out: asyncio.Queue[KlineEvent] = asyncio.Queue()
        feed = KlineFeed(
            symbols=["BTCUSDT"],
            interval="5",
            ws_url=ex.ws_url,
            rest=RestKlines(ex.rest_url),
            out=out,
            metrics=Metrics(CollectorRegistry()),
            **fast_feed_options(),
        )
        task = asyncio.create_task(feed.run())
        while out.qsize() < 310:
            await asyncio.sleep(0.01)
        assert feed.connected and feed.last_received_ns("BTCUSDT") is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not feed.connected


def test_only_symbols_set_means_live_bybit_mainnet(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("APPRENTICE_WS_URL", "APPRENTICE_REST_URL", "APPRENTICE_INTERVAL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("APPRENTICE_SYMBOLS", "BTCUSDT,ETHUSDT")
    feed = bybit_feed(load_settings(), asyncio.Queue(), Metrics(CollectorRegistry()))
    assert isinstance(feed, KlineFeed)
    assert feed.ws_url == "wss://stream.bybit.com/v5/public/linear"
    assert feed.rest.base_url == "https://api.bybit.com"
    assert sorted(feed.topics) == ["kline.5.BTCUSDT", "kline.5.ETHUSDT"]
    assert feed.backfill_bars >= 300 and feed.ping_interval_s == 20.0
    assert not feed.connected  # constructing it did no I/O


async def test_the_client_does_not_offer_compression() -> None:
    """Frames arrive uncompressed: permessage-deflate is optional for Bybit, and inflating
    each small kline frame costs more time before it can be read than it saves on the wire."""
    offered: list[str | None] = []

    def record(connection: ServerConnection, request: Request) -> Response | None:
        offered.append(request.headers.get("Sec-WebSocket-Extensions"))
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=record) as server:
        port = server.sockets[0].getsockname()[1]
        feed = _btc_feed(port, CollectorRegistry(), **lenient())
        task = asyncio.create_task(feed.run())
        for _ in range(200):
            if offered:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert offered and all(h is None for h in offered)
