"""Chaos on the REST side (issue 27), on real loopback sockets: the replay exchange streams,
a hostile REST server (``service.replay.hostile``) answers BTCUSDT's requests badly.

Every confirm of BTCUSDT is withheld (``Faults(missing_confirm=1, only=BTC)``), so each of its
candles needs a REST fill, and that REST hangs, trickles, fails, lies or refuses. ETHUSDT must
not notice: each of its candles is delivered exact and within a second of its close (before,
one symbol's fill ran in the websocket read loop and held every symbol for as long as it
lasted). BTCUSDT may fall behind but never receives a wrong candle, and the feed never stops.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import pytest

from service.market import http_get
from service.market.rest import RestError, RestKlines, classify
from service.replay import Faults, ReplayConfig, ReplayExchange
from service.replay.hostile import MALFORMED, HostileRest
from service.replay.soak import SoakResult, fast_feed_options, soak

BTC, ETH = "BTCUSDT", "ETHUSDT"
WITHHELD = Faults(missing_confirm=1.0, only=frozenset({BTC}))
SPEED = 600.0  # a 5-minute candle every 0.5 s
MAX_LAG_S = 1.0  # two candles: far above ETH's real lag (ms), far below a stalled read loop


def options(**extra: Any) -> dict[str, Any]:
    return fast_feed_options() | {"silence_timeout_s": 5.0, "data_timeout_s": 8.0} | extra


async def turn(hostile: HostileRest, mode: str, after_s: float = 0.8) -> None:
    """Honest while both warm up, then hostile."""
    await asyncio.sleep(after_s)
    hostile.mode = mode


async def run(mode: str, candles: int = 14, **kw: Any) -> tuple[SoakResult, HostileRest]:
    hostile = HostileRest(target=BTC, trickle_s=0.2, bomb_bytes=64 << 20)
    r = await soak(
        WITHHELD,
        symbols=(BTC, ETH),
        candles=candles,
        speed=SPEED,
        hostile=hostile,
        script=lambda ex: turn(hostile, mode),
        feed_options=options(**kw.pop("feed", {})),
        # the production retry policy (5 attempts, backoff 0.5 s doubling), a short deadline
        rest_options={"timeout_s": 1.5} | kw.pop("rest", {}),
        timeout_s=40,
        **kw,
    )
    return r, hostile


def rejected(r: SoakResult, reason: str) -> float:
    v = r.registry.get_sample_value("apprentice_klines_rejected_total", {"reason": reason})
    return v or 0.0


@pytest.mark.parametrize(
    "mode", ["hang", "trickle", "http500", "html", "malformed", "gzip_bomb", "refuse"]
)
async def test_one_symbols_bad_rest_never_delays_another_symbol(mode: str) -> None:
    r, hostile = await run(mode)
    assert r.ok, r.mismatches  # ETH exact to the end; BTC exact as far as it got
    assert hostile.stats[mode] >= 1, hostile.stats  # the fault really happened
    eth = r.lag_figures(ETH)
    assert eth["n"] >= 10 and eth["max_s"] < MAX_LAG_S, eth
    # BTC's fills all failed after the turn: it fell behind, and says so
    assert r.closed[BTC][-1].kline.start < r.closed[ETH][-1].kline.start
    assert r.feed_stats["reconnects"] == 0  # a bad REST answer never costs the websocket


async def test_a_symbol_refused_mid_run_is_out_of_service_then_comes_back() -> None:
    """retCode 10001 after start-up: BTC is reported (metric, /ready reason) and asked again
    every ``refused_retry_s``; the feed never stops; once REST answers BTC catches up."""
    hostile = HostileRest(target=BTC)
    seen: dict[str, Any] = {}

    async def script(ex: ReplayExchange) -> None:
        await turn(hostile, "refuse")
        await asyncio.sleep(2.0)
        seen["problems"] = list(feed_problems())
        hostile.mode = "ok"

    feed_ref: list[Any] = []

    def feed_problems() -> list[str]:
        return feed_ref[0].problems() if feed_ref else []

    r = await soak(
        WITHHELD,
        symbols=(BTC, ETH),
        candles=16,
        speed=SPEED,
        hostile=hostile,
        script=script,
        feed_options=options(refused_retry_s=0.5),
        rest_options={"timeout_s": 1.5, "max_attempts": 1},
        timeout_s=40,
        on_feed=feed_ref.append,
    )
    assert r.ok, r.mismatches
    assert hostile.stats["refuse"] >= 2  # asked again while refused
    assert any(p.startswith("BTCUSDT: refused by the exchange") for p in seen["problems"])
    refused = r.registry.get_sample_value(
        "apprentice_rest_failures_total", {"symbol": BTC, "outcome": "refused"}
    )
    assert refused and refused >= 2
    # BTC came back and caught up (its candles all come by REST, a grace period late)
    assert r.closed[BTC][-1].kline.start >= r.closed[ETH][-1].kline.start - 2 * 300_000
    assert r.registry.get_sample_value("apprentice_symbol_problem", {"symbol": BTC}) == 0


@pytest.mark.parametrize("mode", ["absurd_high", "absurd_low"])
async def test_absurd_rest_prices_never_reach_the_consumer(mode: str) -> None:
    r, hostile = await run(mode)
    assert r.ok, r.mismatches  # every delivered BTC candle is the exchange's
    assert hostile.stats[mode] >= 1
    assert rejected(r, "implausible_price") >= 1
    for ev in r.closed[BTC]:
        assert 1e3 < ev.kline.close < 1e6


async def test_a_gzip_bomb_is_refused_at_the_cap_without_the_memory() -> None:
    """A body that inflates to 512 MiB: the client stops at its cap (8 MiB)."""
    cfg = ReplayConfig(symbols=(BTC,), speed=SPEED)
    async with ReplayExchange(cfg) as ex:
        hostile = HostileRest(target=BTC, mode="gzip_bomb", bomb_bytes=512 << 20)
        await hostile.start(ex)
        try:
            rest = RestKlines(hostile.url, max_attempts=1, timeout_s=20)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            with pytest.raises(RestError, match="inflates past"):
                await rest.fetch_latest(BTC, "5", 10)
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        finally:
            await hostile.stop()
    assert hostile.stats["gzip_bomb"] == 1
    assert grown < 100, f"peak RSS grew {grown:.0f} MB"


async def test_a_trickling_answer_is_cut_at_the_total_deadline() -> None:
    cfg = ReplayConfig(symbols=(BTC,), speed=SPEED)
    async with ReplayExchange(cfg) as ex:
        hostile = HostileRest(target=BTC, mode="trickle", trickle_s=0.1)
        await hostile.start(ex)
        try:
            rest = RestKlines(hostile.url, max_attempts=1, timeout_s=0.5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(RestError, match=r"within 0\.5 s"):
                await rest.fetch_latest(BTC, "5", 10)
            took = loop.time() - t0
        finally:
            await hostile.stop()
    assert 0.45 <= took < 1.5, took  # one deadline, not a per-read timeout that never fires


@pytest.mark.parametrize("envelope", MALFORMED, ids=[f"shape{i}" for i in range(len(MALFORMED))])
def test_every_malformed_envelope_is_a_rest_error(envelope: dict[str, Any]) -> None:
    import json

    with pytest.raises(RestError):
        payload = classify(200, json.dumps(envelope).encode(), "BTCUSDT interval 5")
        from service.market.rest import parse_kline_page

        parse_kline_page(BTC, "5", payload)


def test_html_and_oversized_heads_are_rest_errors() -> None:
    with pytest.raises(RestError):
        classify(200, b"<html>502</html>", "x")
    with pytest.raises(http_get.HttpError):
        http_get.inflate(b"\x1f\x8b not gzip", "gzip")
    with pytest.raises(http_get.HttpError):
        http_get.parse_head(b"SMTP ready")


async def test_notice_floods_are_logged_a_few_times_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """8,000 exchange notices and 2,000 error replies: a handful of log lines, all counted."""
    caplog.set_level(logging.WARNING, logger="service.market.feed")

    async def flood(ex: ReplayExchange) -> None:
        await asyncio.sleep(0.5)
        for i in range(8_000):
            await ex.inject(f'{{"notice":"maintenance {i}"}}', topic=None)
            if i % 4 == 0:
                await ex.inject(f'{{"op":"subscribe","success":false,"ret_msg":"x{i}"}}')

    r = await soak(
        Faults(),
        symbols=(ETH,),
        candles=20,
        speed=SPEED,
        script=flood,
        feed_options=options(),
        timeout_s=60,
    )
    assert r.ok, r.mismatches
    lines = [rec for rec in caplog.records if rec.name == "service.market.feed"]
    notices = [rec for rec in lines if "exchange notice" in rec.getMessage()]
    replies = [rec for rec in lines if "exchange error reply" in rec.getMessage()]
    assert 1 <= len(notices) <= 6 and len(replies) <= 6, (len(notices), len(replies))
    counted = r.registry.get_sample_value("apprentice_exchange_notices_total", {"kind": "notice"})
    suppressed = r.registry.get_sample_value("apprentice_log_suppressed_total", {"kind": "notice"})
    assert counted is not None and counted >= 7_900
    assert suppressed is not None and suppressed >= counted - 6


async def test_a_frame_over_the_size_limit_is_counted_as_rejected() -> None:
    """A 10 MB frame costs a reconnect (the library closes with 1009) and is counted."""
    sent: list[int] = []

    async def huge(ex: ReplayExchange) -> None:
        await asyncio.sleep(0.5)
        sent.append(await ex.inject(b"x" * (10 << 20)))

    r = await soak(
        Faults(),
        symbols=(ETH,),
        candles=8,
        speed=SPEED,
        script=huge,
        feed_options=options(),
        timeout_s=60,
    )
    assert r.ok, r.mismatches
    assert sent == [1] and r.feed_stats["reconnects"] >= 1
    assert rejected(r, "oversized_frame") == 1


async def test_a_symbol_whose_fills_keep_failing_is_named_while_the_other_serves() -> None:
    """/ready's reasons (the feed's problems) and apprentice_symbol_problem name BTC."""
    r, hostile = await run("hang", rest={"timeout_s": 0.5, "max_attempts": 1})
    assert r.ok, r.mismatches
    assert hostile.stats["hang"] >= 2
    assert any(p.startswith("BTCUSDT: REST fills failing") for p in r.problems), r.problems
    assert not any(p.startswith("ETHUSDT") for p in r.problems), r.problems
    assert r.registry.get_sample_value("apprentice_symbol_problem", {"symbol": BTC}) == 1
    assert r.registry.get_sample_value("apprentice_symbol_problem", {"symbol": ETH}) == 0
    failed = r.registry.get_sample_value(
        "apprentice_rest_failures_total", {"symbol": BTC, "outcome": "error"}
    )
    assert failed is not None and failed >= 2
