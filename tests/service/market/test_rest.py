"""REST kline client (pybit underneath) against the replay exchange on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from service.market.backfill import Backoff
from service.market.rest import (
    ConfigError,
    RestError,
    RestForbidden,
    RestKlines,
    parse_kline_page,
    windows,
)
from service.replay import Faults, ReplayConfig, ReplayExchange

STEP = 300_000


def fast(url: str, **kw: object) -> RestKlines:
    return RestKlines(url, backoff=lambda: Backoff(0.005, 0.02), timeout_s=5.0, **kw)  # type: ignore[arg-type]


def cfg(**kw: object) -> ReplayConfig:
    base: dict[str, object] = {"symbols": ("BTCUSDT",), "speed": 60.0, "history_bars": 2500}
    base.update(kw)
    return ReplayConfig(**base)  # type: ignore[arg-type]


def test_windows_hold_at_most_limit_candles_and_cover_the_range() -> None:
    w = list(windows(0, 2499 * STEP, STEP, 1000))
    assert w == [(0, 999 * STEP), (1000 * STEP, 1999 * STEP), (2000 * STEP, 2499 * STEP)]
    assert list(windows(1, STEP, STEP)) == [(STEP, STEP)]  # rounded up onto the grid
    assert list(windows(5 * STEP, 4 * STEP, STEP)) == []


def test_parse_page_reverses_and_drops_the_open_candle() -> None:
    payload = {
        "retCode": 0,
        "result": {
            "list": [
                ["900000", "3", "3", "3", "3", "1", "3"],  # open: 900000 + 300000 > time
                ["600000", "2", "2.5", "1.5", "2", "1", "2"],
                ["300000", "1", "1", "1", "1", "0", "0"],
            ]
        },
        "time": 1_000_000,
    }
    page = parse_kline_page("BTCUSDT", "5", payload)
    assert [k.start for k in page.klines] == [300_000, 600_000]
    assert page.klines[1].high == 2.5 and page.klines[1].confirm
    assert page.oldest_start == 300_000 and page.server_time == 1_000_000
    with pytest.raises(RestError):
        parse_kline_page("BTCUSDT", "5", {"result": {"list": []}, "time": "5"})
    bad = parse_kline_page("BTCUSDT", "5", {"result": {"list": [[1, 2]]}, "time": 5})
    assert bad.klines == [] and bad.rejected == ["bad_shape"]  # skipped and named


async def test_fetch_range_paginates_and_matches_the_exchange() -> None:
    async with ReplayExchange(cfg()) as ex:
        rest = fast(ex.rest_url)
        start = ex.start_ms - 2400 * STEP
        end = ex.start_ms - STEP
        got = await rest.fetch_range("BTCUSDT", "5", start, end)
        assert rest.requests_made == 3  # 2400 bars in windows of 1000
        assert [k.start for k in got] == list(range(start, end + 1, STEP))
        tape = ex.tapes["BTCUSDT"]
        assert all(k == tape.closed(k.start) for k in got)


async def test_fetch_latest_drops_the_open_candle_and_pages_backwards() -> None:
    async with ReplayExchange(cfg()) as ex:
        await asyncio.sleep(0.05)  # let the virtual clock move inside a candle
        rest = fast(ex.rest_url)
        got = await rest.fetch_latest("BTCUSDT", "5", 1500)
        now = ex.now_ms()
        assert len(got) == 1500
        assert rest.requests_made == 2
        last = got[-1]
        assert last.start + STEP <= now  # closed
        assert last.start + 2 * STEP > now  # and it is the newest closed one
        assert [k.start for k in got] == list(range(got[0].start, last.start + 1, STEP))


async def test_bad_symbol_and_interval_are_config_errors_not_retried() -> None:
    async with ReplayExchange(cfg()) as ex:
        rest = fast(ex.rest_url)
        with pytest.raises(ConfigError, match="Not supported symbols"):
            await rest.fetch_latest("NOPEUSDT", "5", 10)
        assert rest.requests_made == 1
        with pytest.raises(ConfigError, match="Invalid period"):
            await rest.fetch_range("BTCUSDT", "15", ex.start_ms - 10 * STEP, ex.start_ms)
        assert rest.requests_made == 2


async def test_http_429_and_500_are_retried_until_answered() -> None:
    async with ReplayExchange(cfg(faults=Faults(http_error=0.5), seed=3)) as ex:
        rest = fast(ex.rest_url, max_attempts=20)
        got = await rest.fetch_range("BTCUSDT", "5", ex.start_ms - 2000 * STEP, ex.start_ms - STEP)
        assert len(got) == 2000
        errors = ex.stats["http_429"] + ex.stats["http_500"]
        assert errors > 0
        assert rest.requests_made == 2 + errors


async def test_retries_run_out_into_a_rest_error() -> None:
    async with ReplayExchange(cfg(faults=Faults(http_error=1.0))) as ex:
        rest = fast(ex.rest_url, max_attempts=3)
        with pytest.raises(RestError) as err:
            await rest.fetch_latest("BTCUSDT", "5", 5)
        assert err.value.retryable and rest.requests_made == 3


class _Forbidden(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"access too frequent"
        self.send_response(403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def forbidden_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_http_403_stops_at_once(forbidden_url: str) -> None:
    rest = fast(forbidden_url)
    with pytest.raises(RestForbidden):
        await rest.fetch_latest("BTCUSDT", "5", 5)
    assert rest.requests_made == 1


def test_sync_helper_for_scripts() -> None:
    async def serve_and_fetch() -> None:
        async with ReplayExchange(cfg()) as ex:
            rest = fast(ex.rest_url)
            # the sync helper runs its own loop, so call it from a worker thread here
            got = await asyncio.to_thread(
                rest.fetch_range_sync, "BTCUSDT", "5", ex.start_ms - 10 * STEP, ex.start_ms - STEP
            )
            assert len(got) == 10

    asyncio.run(serve_and_fetch())


def test_windows_are_lazy_and_ranges_bounded_before_any_allocation() -> None:
    from service.market.rest import bounded

    huge = windows(0, 2**63 - 1, STEP, 1000)  # a generator: nothing is built yet
    assert next(huge) == (0, 999 * STEP)
    lo, hi = bounded(0, 2**63 - 1, STEP, 300)
    assert (hi - lo) // STEP < 300 and len(list(windows(lo, hi, STEP, 1000))) == 1


def test_rest_rows_that_break_a_kline_rule_are_skipped_and_counted() -> None:
    rows = [
        ["1200000", "1", "1", "1", "1", "1", "1"],  # fine
        ["900000", "1e400", "1e400", "1", "1", "1", "1"],  # overflows to inf
        ["600000", "0", "1", "0", "1", "1", "1"],  # a zero price
        ["300001", "1", "1", "1", "1", "1", "1"],  # off the grid
        ["0", "1", "0.5", "0.8", "1", "1", "1"],  # high below low
        ["99999999999999999999999", "1", "1", "1", "1", "1", "1"],  # an absurd start
    ]
    page = parse_kline_page("BTCUSDT", "5", {"result": {"list": rows}, "time": 10**9})
    assert [k.start for k in page.klines] == [1_200_000]
    assert page.rejected == ["bad_price", "bad_price", "off_grid", "bad_ohlc", "bad_value"]


async def test_fetch_range_asks_only_for_the_history_kept() -> None:
    async with ReplayExchange(cfg()) as ex:
        rest = fast(ex.rest_url)
        got = await rest.fetch_range("BTCUSDT", "5", 0, ex.start_ms - STEP, max_candles=300)
        assert rest.requests_made == 1  # 300 bars, not the ~6e6 since 1970
        assert len(got) == 300 and got[-1].start == ex.start_ms - STEP
