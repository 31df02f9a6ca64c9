"""What a client or user may send (DESIGN section 10): 4xx, never a 500, never a bad account.

Admin routes check the token before reading a body; bodies are size-limited; reset terms
are range-checked; a repeated query parameter and ``history=1.0`` are refused; a paper
account that cannot book says so on /health and in ``apprentice_paper_errors_total``. The
journal is the real SQLite file; its failure is a real SQLite error (a trigger).
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app, runtime_of
from service.market.klines import KlineEvent, KlineTable
from service.runtime import Runtime

TOKEN = "adm1n-t0ken-xyz"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def serve(
    make_settings: Callable[..., Any], btc_5m: KlineTable, feed_factory_maker: Callable[..., Any]
) -> Callable[..., Any]:
    @contextmanager
    def _serve(n_backfill: int = 0, **overrides: Any) -> Iterator[tuple[TestClient, Runtime, Any]]:
        settings = make_settings(admin_token=TOKEN, **overrides)
        factory, built = feed_factory_maker({"BTCUSDT": btc_5m}, n_backfill)
        app = create_app(settings, feed_factory=factory)
        with TestClient(app) as client:
            rt = runtime_of(app)
            _settle(client, rt, lambda: rt.pipeline.states["BTCUSDT"].bars >= n_backfill)
            yield client, rt, built[0]

    return _serve


def _settle(client: TestClient, rt: Runtime, done: Callable[[], bool]) -> None:
    async def wait() -> None:
        deadline = time.monotonic() + 30

        def idle() -> bool:  # nothing queued for the trader, nothing on its way to it
            handing = getattr(rt.pipeline.sink, "pending", 0)
            return rt.trader.queue.empty() and handing == 0  # type: ignore[union-attr]

        while time.monotonic() < deadline and not (done() and idle()):
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)  # the trader's settle wait and journal write
        async with rt.trader.lock:  # type: ignore[union-attr]
            pass

    client.portal.call(wait)  # type: ignore[union-attr]


def _live(client: TestClient, rt: Runtime, feed: Any, events: list[KlineEvent]) -> None:
    before = rt.pipeline.states["BTCUSDT"].bars
    client.portal.call(feed.push, events)  # type: ignore[union-attr]
    _settle(client, rt, lambda: rt.pipeline.states["BTCUSDT"].bars >= before + len(events))


async def _asgi(app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: int) -> Any:
    """POST ``path`` straight into the ASGI app with a body of ``chunks`` × 16 KiB that is
    produced only when asked for; returns (status, body chunks the app asked for)."""
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        more = asked < chunks
        return {"type": "http.request", "body": b"{" * 16384, "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, asked


def test_the_token_is_checked_before_a_byte_of_the_body_is_read(
    make_settings: Callable[..., Any],
) -> None:
    app = create_app(make_settings(admin_token=TOKEN))  # routes only: no lifespan needed
    for path in ("/admin/reload", "/paper/reset"):
        status, asked = asyncio.run(_asgi(app, path, [], chunks=10_000))  # "160 MB"
        assert (status, asked) == (401, 0), path
        bearer = [(b"authorization", f"Bearer {TOKEN}".encode())]
        status, asked = asyncio.run(_asgi(app, path, bearer, chunks=10_000))
        assert status == 413 and asked <= 5, (path, asked)  # counted as it came: 64 KiB max


def test_malformed_bodies_without_a_token_are_401_and_oversized_ones_413(
    serve: Callable[..., Any],
) -> None:
    with serve() as (client, _, _):
        for path in ("/admin/reload", "/paper/reset"):
            for body in (b"{not json", b"\xff\xfe", b'{"model": 5}', b"[]"):
                r = client.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 401, (path, body)
                r = client.post(
                    path, content=body, headers={**AUTH, "Content-Type": "application/json"}
                )
                assert r.status_code in (400, 422), (path, body, r.status_code)
            r = client.post(path, content=b"x" * 200_000, headers=AUTH)
            assert r.status_code == 413 and "larger than" in r.json()["detail"]


@pytest.mark.parametrize(
    "terms",
    [
        {"initial_usdt": 5e-324},
        {"notional_usdt": 5e-324},
        {"notional_usdt": 1.7e308},
        {"initial_usdt": 0},
        {"initial_usdt": -1},
        {"notional_usdt": 1e13},
        {"notional_usdt": True},  # JSON true is not 1 USDT
        {"initial_usdt": False},
    ],
)
def test_paper_reset_terms_are_range_checked(serve: Callable[..., Any], terms: Any) -> None:
    with serve() as (client, _, _):
        r = client.post("/paper/reset", json=terms, headers=AUTH)
        assert r.status_code == 422, r.text
        assert client.get("/paper").json()["account"] == 1  # nothing changed
    with serve() as (client, _, _):  # a JSON overflow literal is not a number either
        r = client.post(
            "/paper/reset",
            content=b'{"initial_usdt": 1e400}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert r.status_code == 422


def test_no_500_for_any_reload_name(serve: Callable[..., Any]) -> None:
    with serve() as (client, _, _):
        for name in ("a\x00b.onnx", "m" * 300 + ".onnx", "../x.onnx", "ü.onnx", "", ".onnx"):
            r = client.post("/admin/reload", json={"model": name}, headers=AUTH)
            assert r.status_code == 422, (name, r.status_code, r.text)


def test_repeated_query_parameters_and_non_integers_are_422(serve: Callable[..., Any]) -> None:
    with serve() as (client, _, _):
        assert client.get("/signals?history=1").status_code == 200
        for query in ("history=1&history=500", "history=1.0", "history=1e2", "history= 1"):
            r = client.get(f"/signals?{query}")
            assert r.status_code == 422, query
            assert isinstance(r.json()["detail"], list)  # FastAPI's validation-error shape
        assert client.get("/paper/trades?limit=1.0").status_code == 422
        assert client.get("/paper/trades?limit=5&symbol=BTCUSDT&limit=6").status_code == 422


def test_the_openapi_schema_states_the_limits(serve: Callable[..., Any]) -> None:
    with serve() as (client, _, _):
        spec = client.get("/openapi.json").json()
    for path in ("/admin/reload", "/paper/reset"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "401", "403", "413", "422"} <= set(responses), path
    model = spec["components"]["schemas"]["ReloadIn"]["properties"]["model"]
    text = json.dumps(model)
    assert '"maxLength": 128' in text and '"pattern"' in text
    reset = spec["components"]["schemas"]["ResetIn"]["properties"]["notional_usdt"]
    assert "1000000000000" in json.dumps(reset) or "1e+12" in json.dumps(reset)
    # query bounds in OpenAPI's words (minimum/maximum), not pydantic's (ge/le)
    params = {
        p["name"]: p["schema"]
        for path in ("/signals", "/paper/trades")
        for p in spec["paths"][path]["get"]["parameters"]
    }
    assert params["history"]["minimum"] == 0 and params["history"]["maximum"] == 500
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] == 10_000
    assert not {"ge", "le"} & (set(params["history"]) | set(params["limit"]))


def test_a_failing_journal_is_counted_and_shown_on_health_then_recovers(
    serve: Callable[..., Any],
    btc_5m: KlineTable,
    make_events: Callable[..., list[KlineEvent]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with serve(120) as (client, rt, feed):
        assert client.get("/health").status_code == 200
        db = sqlite3.connect(rt.journal.path)  # type: ignore[union-attr]
        db.execute(
            "CREATE TRIGGER no_fills BEFORE INSERT ON fills "
            "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: qty > 0'); END"
        )
        db.commit()
        caplog.clear()
        _live(client, rt, feed, make_events(btc_5m, 120, 220))
        errors = rt.metrics.registry.get_sample_value(
            "apprentice_paper_errors_total", {"reason": "journal"}
        )
        assert errors is not None and errors > 0
        r = client.get("/health")
        assert r.status_code == 503
        assert any("paper account failing" in p for p in r.json()["problems"])
        tracebacks = sum(1 for rec in caplog.records if rec.exc_info)
        assert tracebacks == 1  # the first failure in full, not one per candle
        db.execute("DROP TRIGGER no_fills")
        db.commit()
        db.close()
        _live(client, rt, feed, make_events(btc_5m, 220, 260))
        assert client.get("/health").status_code == 200
        assert client.get("/paper").json()["trades"] > 0


def test_the_account_never_holds_a_non_finite_value(
    serve: Callable[..., Any], btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    with serve(120, paper_notional_usdt=1e12, paper_initial_usdt=1e12) as (client, rt, feed):
        events = make_events(btc_5m, 120, 200)
        # candles the feed would refuse, pushed past it: the account must hold anyway
        poisoned = [
            replace(e, kline=replace(e.kline, open=p, high=p, low=p, close=p))
            for e, p in zip(events[40:44], (1e-310, 5e-324, 1e-300, 1e-305), strict=True)
        ]
        _live(client, rt, feed, events[:40] + poisoned + events[44:])
        paper = client.get("/paper").json()
        for key in ("equity", "realized_pnl", "unrealized_pnl", "fees", "net_pnl", "drawdown"):
            assert isinstance(paper[key], float) and math.isfinite(paper[key]), key
        assert all(math.isfinite(e) for _, e in paper["equity_curve"])
        assert abs(paper["equity"]) < 1e15
        errors = rt.metrics.registry.get_sample_value(
            "apprentice_paper_errors_total", {"reason": "invalid_amount"}
        )
        assert errors is not None and errors >= 1
        gauge = rt.metrics.registry.get_sample_value("apprentice_paper_equity_usdt")
        assert gauge is not None and math.isfinite(gauge)


def test_an_old_account_that_cannot_trade_is_replaced_at_start(
    serve: Callable[..., Any], make_settings: Callable[..., Any]
) -> None:
    from service.paper.journal import Journal

    journal = Journal(make_settings().state_dir)  # what an earlier version let a reset open
    journal.open()
    journal.new_account(5e-324, 5e-324, 5.5, 1.0)
    journal.close()
    with serve() as (client, _, _):
        paper = client.get("/paper").json()
        assert paper["account"] == 2 and paper["initial_usdt"] == 10_000.0
        assert paper["notional_usdt"] == 1_000.0
