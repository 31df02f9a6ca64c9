"""Issue 28's small HTTP defects, each with a test that failed on the code before it, and
``/docs`` rendered offline in headless Chromium with the network blocked."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.market.klines import KlineTable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def client(
    make_settings: Callable[..., Any], btc_5m: KlineTable, feed_factory_maker: Callable[..., Any]
) -> Iterator[TestClient]:
    settings = make_settings()
    factory, _ = feed_factory_maker({"BTCUSDT": btc_5m}, 0)
    with TestClient(create_app(settings, feed_factory=factory)) as c:
        yield c


def test_paper_trades_of_an_unknown_symbol_is_404_like_signal(client: TestClient) -> None:
    assert client.get("/signal/NOPEUSDT").status_code == 404
    r = client.get("/paper/trades", params={"symbol": "NOPEUSDT"})
    assert r.status_code == 404 and "unknown symbol" in r.json()["detail"]
    assert client.get("/paper/trades", params={"symbol": "BTCUSDT"}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/signals", "/paper/trades", "/chart", "/model/health", "/paper", "/health"]
)
def test_an_unknown_query_parameter_is_422_on_every_route(client: TestClient, path: str) -> None:
    r = client.get(path, params={"limt": "5"})
    assert r.status_code == 422, (path, r.status_code)
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "limt"]


def test_a_bad_limit_is_the_same_kind_of_answer_everywhere(client: TestClient) -> None:
    for path in ("/paper/trades?limit=0", "/chart?limit=0", "/signals?history=-1"):
        r = client.get(path)
        assert r.status_code == 422 and isinstance(r.json()["detail"], list), path


def test_model_health_states_the_n_it_has_the_period_and_the_policy(client: TestClient) -> None:
    body = client.get("/model/health").json()
    assert body["window"] == 288 and body["n"] == 0  # nothing scored yet: N = 0, not 288
    assert body["period"]["statement"] == "no live candle yet"
    assert body["policy"]["name"] == "direction" and body["policy"]["statement"]
    assert "explanation" in body["drift"]
    paper = client.get("/paper").json()
    assert paper["policy"] == "direction" and paper["fills"] == 0 and paper["round_trips"] == 0


def test_docs_are_served_from_the_service_not_a_cdn(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "https://" not in page
    assert client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    assert "cdn" not in client.get("/redoc").text.lower()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_docs_render_offline_in_chromium(make_settings: Callable[..., Any], tmp_path: Path) -> None:
    app = create_app(make_settings(), feed_factory=lambda s, q, m: _Idle())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code in (200, 503)
        assert CHROMIUM is not None
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={tmp_path / 'profile'}",
                # the network blocked: every host but the service's loopback port is refused
                "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=127.0.0.1",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        ).stdout
    finally:
        server.should_exit = True
        thread.join(15)
    assert "opblock" in dom, "Swagger UI rendered no operation"
    for op in ("/signal/{symbol}", "/paper/trades", "/model/health"):
        assert op in dom, op


class _Idle:
    connected = False

    async def run(self) -> None:
        import asyncio

        await asyncio.Event().wait()
