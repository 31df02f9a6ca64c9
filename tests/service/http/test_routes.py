"""HTTP contract (DESIGN section 6): fields, status codes, readiness, admin auth, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app, runtime_of
from service.market.klines import KlineEvent, KlineTable
from service.pipeline.scoring import BARS_TO_FIRST_SIGNAL
from service.pipeline.signals import SignalStore
from service.runtime import Runtime

SIGNAL_FIELDS = {
    "symbol",
    "interval",
    "direction",
    "probability_up",
    "confidence",
    "action",
    "volatility",
    "candle_start",
    "generated_at",
    "age_seconds",
    "stale",
    "model",
    "latency_us",
}


class ShiftClock:
    """perf_counter_ns plus an adjustable shift: lets a test age every signal."""

    def __init__(self) -> None:
        self.shift_ns = 0

    def __call__(self) -> int:
        return time.perf_counter_ns() + self.shift_ns


@pytest.fixture
def serve(
    make_settings: Callable[..., Any],
    btc_5m: KlineTable,
    feed_factory_maker: Callable[..., Any],
) -> Callable[..., Any]:
    """serve(n_backfill, **settings) -> context manager yielding (client, runtime, feed)."""

    @contextmanager
    def _serve(
        n_backfill: int = 100,
        *,
        connected: bool = True,
        clock: Callable[[], int] = time.perf_counter_ns,
        raise_server_exceptions: bool = True,
        **overrides: Any,
    ) -> Iterator[tuple[TestClient, Runtime, Any]]:
        settings = make_settings(**overrides)
        tables = {s: btc_5m for s in settings.symbols}
        factory, built = feed_factory_maker(tables, n_backfill, connected=connected)
        app = create_app(settings, feed_factory=factory, clock=clock)
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            rt = runtime_of(app)
            _settle(client, rt, n_backfill * len(settings.symbols))
            yield client, rt, built[0]

    return _serve


def _settle(client: TestClient, rt: Runtime, n_events: int) -> None:
    """Wait until the pipeline has taken ``n_events`` klines and the trader is idle."""

    async def wait() -> None:
        def total() -> int:
            return sum(st.bars for st in rt.pipeline.states.values())

        deadline = time.monotonic() + 30  # generous: the test machine may be busy
        while time.monotonic() < deadline:
            handing = getattr(rt.pipeline.sink, "pending", 0)  # signals on their way
            idle = rt.trader is None or (rt.trader.queue.empty() and handing == 0)
            if total() >= n_events and idle:
                break
            await asyncio.sleep(0.001)
        if rt.trader is not None:
            async with rt.trader.lock:
                pass

    client.portal.call(wait)  # type: ignore[union-attr]


def _push(client: TestClient, rt: Runtime, feed: Any, events: list[KlineEvent]) -> None:
    before = sum(st.bars for st in rt.pipeline.states.values())
    client.portal.call(feed.push, events)  # type: ignore[union-attr]
    _settle(client, rt, before + len(events))


def test_signal_contract_after_backfill(serve: Callable[..., Any]) -> None:
    with serve(100) as (client, rt, _):
        r = client.get("/signal/BTCUSDT")
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == SIGNAL_FIELDS
        assert body["symbol"] == "BTCUSDT" and body["interval"] == "5"
        assert body["direction"] in ("up", "down") and body["action"] in ("long", "short", "flat")
        assert 0 <= body["probability_up"] <= 1
        assert body["confidence"] == pytest.approx(abs(2 * body["probability_up"] - 1))
        assert body["model"] == {"name": "student_fixture", "version": "0.0.1"}
        assert set(body["latency_us"]) == {"features", "inference"}
        assert body["stale"] is False and body["age_seconds"] >= 0
        assert body["generated_at"].endswith("Z")
        latest = rt.store.latest("BTCUSDT")
        assert latest is not None and body["candle_start"] == latest.candle_start
        vol = body["volatility"]
        assert vol["probability_high"] == pytest.approx(latest.probability_high_vol)
        assert 0 <= vol["probability_high"] <= 1
        assert vol["regime"] == ("high" if vol["probability_high"] >= 0.5 else "normal")
        assert client.get("/signal/btcusdt").json()["candle_start"] == body["candle_start"]

        r = client.get("/signals", params={"history": 5})
        assert r.status_code == 200
        sigs = r.json()
        assert [s["symbol"] for s in sigs["signals"]] == ["BTCUSDT"] and sigs["warming"] == []
        assert len(sigs["history"]["BTCUSDT"]) == 5


def test_status_codes(serve: Callable[..., Any]) -> None:
    with serve(100) as (client, _, _):
        r = client.get("/signal/XRPUSDT")
        assert r.status_code == 404 and "XRPUSDT" in r.json()["detail"]
        for bad in ("BTC-USDT", "B", "X" * 30):
            r = client.get(f"/signal/{bad}")
            assert r.status_code == 422 and "detail" in r.json()
        r = client.get("/no/such/route")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
        assert client.post("/signal/BTCUSDT").status_code == 405
        assert client.get("/signals", params={"history": -1}).status_code == 422
        assert client.get("/health").json()["status"] == "ok"


def test_warming_answers_503_with_retry_after(serve: Callable[..., Any]) -> None:
    with serve(0, symbols=["BTCUSDT", "ETHUSDT"]) as (client, _, _):
        r = client.get("/signal/BTCUSDT")
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) > 0
        assert "warming up" in r.json()["detail"]
        body = client.get("/signals").json()
        assert body["signals"] == []
        assert {w["symbol"] for w in body["warming"]} == {"BTCUSDT", "ETHUSDT"}
        assert body["warming"][0]["needed"] == BARS_TO_FIRST_SIGNAL


def test_readiness_warming_ready_stale(
    serve: Callable[..., Any], btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    clock = ShiftClock()
    with serve(40, clock=clock) as (client, rt, feed):
        r = client.get("/ready")
        assert r.status_code == 503
        assert any("warming up (40/" in reason for reason in r.json()["reasons"])
        assert rt.metrics.registry.get_sample_value("apprentice_ready") == 0

        _push(client, rt, feed, make_events(btc_5m, 40, 100))
        r = client.get("/ready")
        assert r.status_code == 200, r.json()
        assert r.json()["ready"] is True and r.json()["symbols"]["BTCUSDT"]["warm"] is True
        assert "apprentice_ready 1.0" in client.get("/metrics").text

        clock.shift_ns = int(rt.stale_after_s * 1e9) + 1_000_000_000  # no candle for too long
        r = client.get("/ready")
        assert r.status_code == 503
        assert any("stale" in reason for reason in r.json()["reasons"])
        assert client.get("/signal/BTCUSDT").json()["stale"] is True

        clock.shift_ns = 0  # a fresh candle arrives: ready again
        _push(client, rt, feed, make_events(btc_5m, 100, 101))
        assert client.get("/ready").status_code == 200


def test_not_ready_while_feed_disconnected(serve: Callable[..., Any]) -> None:
    with serve(100, connected=False) as (client, _, feed):
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["feed_connected"] is False
        assert any("feed not connected" in x for x in r.json()["reasons"])
        feed.connected = True
        assert client.get("/ready").status_code == 200


def test_metrics_model_and_openapi(serve: Callable[..., Any]) -> None:
    with serve(100) as (client, _, _):
        client.get("/signal/BTCUSDT")
        text = client.get("/metrics").text
        for name in (
            "apprentice_inference_seconds_bucket",
            "apprentice_feature_update_seconds_bucket",
            "apprentice_signal_latency_seconds_bucket",
            "apprentice_signals_total",
            "apprentice_paper_equity_usdt",
            'apprentice_model_info{name="student_fixture",version="0.0.1"} 1.0',
        ):
            assert name in text, name
        assert 'route="/signal/{symbol}",status="200"' in text  # template, not the raw path
        assert 'le="5e-06"' in text

        card = client.get("/model").json()
        assert card["name"] == "student_fixture" and card["window"] == 32

        schema = client.get("/openapi.json").json()
        for model in ("SignalOut", "SignalsOut", "ReadyOut", "PaperOut", "TradesOut", "ErrorOut"):
            assert model in schema["components"]["schemas"], model
        ok = schema["paths"]["/signal/{symbol}"]["get"]["responses"]
        assert {"200", "404", "422", "503"} <= set(ok)


def test_internal_errors_are_json_without_traceback(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(100, raise_server_exceptions=False) as (client, _, _):

        def boom(self: object, symbol: str) -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(SignalStore, "latest", boom)
        r = client.get("/signal/BTCUSDT")
        assert r.status_code == 500
        assert r.json() == {"detail": "internal server error"}
        assert "secret" not in r.text and "Traceback" not in r.text


def test_live_candles_paper_trade_and_backfill_does_not(
    serve: Callable[..., Any], btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    with serve(200) as (client, rt, feed):
        paper = client.get("/paper").json()
        assert paper["trades"] == 0 and paper["equity"] == 10_000.0  # backfill never trades
        _push(client, rt, feed, make_events(btc_5m, 200, 260))
        paper = client.get("/paper").json()
        trades = client.get("/paper/trades", params={"limit": 1000}).json()
        assert paper["trades"] == trades["total"] == len(trades["trades"]) > 0
        live_starts = {int(s) for s in btc_5m.start[200:260]}
        assert {t["candle_start"] for t in trades["trades"]} <= live_starts
        assert len(paper["equity_curve"]) == 60
        newest = trades["trades"][0]
        pos = next(p for p in paper["positions"] if p["symbol"] == "BTCUSDT")
        assert pos["qty"] == pytest.approx(newest["position_after"])
        one = client.get("/paper/trades", params={"limit": 1, "symbol": "BTCUSDT"}).json()
        assert one["trades"] == [newest]
        text = client.get("/metrics").text
        assert "apprentice_paper_trades_total" in text


def test_paper_disabled(serve: Callable[..., Any]) -> None:
    with serve(100, paper_enabled=False) as (client, _, _):
        r = client.get("/paper")
        assert r.status_code == 404 and "disabled" in r.json()["detail"]


class FrozenClock:
    """A receive clock that stands still at ``now_ns`` (None: the real one)."""

    def __init__(self) -> None:
        self.now_ns: int | None = None

    def __call__(self) -> int:
        return time.perf_counter_ns() if self.now_ns is None else self.now_ns


def test_signal_body_is_the_response_model_answer_byte_for_byte(
    serve: Callable[..., Any], btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    """GET /signal answers pre-encoded bytes (service.http.signal_json): exactly what FastAPI's
    response_model=SignalOut route answered before, at every age and staleness."""
    from fastapi import FastAPI

    from service.http.schemas import SignalOut

    reference = FastAPI()
    ref_args: dict[str, Any] = {}

    @reference.get("/signal/{symbol}", response_model=SignalOut)
    async def ref_signal(symbol: str) -> SignalOut:  # the route as it was: a model per request
        return SignalOut.of(**ref_args)

    clock = FrozenClock()
    with serve(100, clock=clock) as (client, rt, feed), TestClient(reference) as ref:
        first = rt.store.latest("BTCUSDT")
        assert first is not None
        # ages a request can see: none, sub-µs (rounds to 0), 1e-5 (pydantic spells it 1e-5,
        # Python 1e-05), ordinary, past the stale limit, huge
        for age_s in (0.0, 4e-7, 1e-5, 0.123456789, 2.5, rt.stale_after_s + 1.0, 3.2e9):
            clock.now_ns = first.received_ns + int(age_s * 1e9)
            got = client.get("/signal/BTCUSDT")
            ref_args.update(
                s=first,
                age_seconds=rt.age_s(first.received_ns),
                stale=rt.is_stale(first),
                regime_threshold=rt.settings.vol_regime_threshold,
            )
            want = ref.get("/signal/BTCUSDT")
            assert got.status_code == want.status_code == 200
            assert got.content == want.content, age_s
            assert got.headers["content-type"] == want.headers["content-type"]
            assert got.headers["content-length"] == want.headers["content-length"]
        assert client.get("/signal/BTCUSDT").json()["stale"] is True
        # one encoding per new signal, on the first request that reads it
        encoded = client.app.state.signal_bodies.encoded
        clock.now_ns = None
        _push(client, rt, feed, make_events(btc_5m, 100, 102))
        newest = rt.store.latest("BTCUSDT")
        assert newest is not None and newest.candle_start == int(btc_5m.start[101])
        bodies = [client.get("/signal/BTCUSDT").json() for _ in range(3)]
        assert client.app.state.signal_bodies.encoded == encoded + 1
        assert {b["candle_start"] for b in bodies} == {newest.candle_start}
