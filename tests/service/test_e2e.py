"""End to end on real sockets: replay exchange → feed → pipeline → HTTP, paper trades."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from service.features import batch_features, make_windows
from service.http.app import create_app, runtime_of
from service.market.kline_io import load_bundled
from service.model.predictor import Predictor
from service.replay import ReplayConfig, ReplayExchange

SYMBOLS = ("BTCUSDT", "ETHUSDT")


async def test_replay_exchange_to_signals_over_http(
    make_settings: Callable[..., Any], fixture_model: Any, until: Callable[..., Any]
) -> None:
    cfg = ReplayConfig(symbols=SYMBOLS, interval="5", speed=1200.0, port=0)  # 4 candles/s
    async with ReplayExchange(cfg) as ex:
        settings = make_settings(
            symbols=list(SYMBOLS), ws_url=ex.ws_url, rest_url=ex.rest_url, backfill_bars=300
        )
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        serving = asyncio.create_task(server.serve())
        try:
            await until(lambda: _started(server), 30, "the server to start", poll_s=0.05)
            port = server.servers[0].sockets[0].getsockname()[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

                async def ready() -> bool:
                    return (await http.get("/ready")).status_code == 200

                await until(ready, 30, "/ready", poll_s=0.05)
                first = (await http.get("/signal/BTCUSDT")).json()

                async def advanced() -> dict[str, Any] | None:
                    body = (await http.get("/signal/BTCUSDT")).json()
                    step = 300_000
                    return (
                        body if body["candle_start"] >= first["candle_start"] + 3 * step else None
                    )

                latest = await until(advanced, 30, "live candles", poll_s=0.05)

                async def traded() -> dict[str, Any] | None:
                    body = (await http.get("/paper/trades", params={"limit": 1000})).json()
                    return body if body["total"] >= 2 else None

                trades = await until(traded, 30, "paper trades", poll_s=0.05)
                metrics = (await http.get("/metrics")).text
                signals = (await http.get("/signals")).json()

            rt = runtime_of(app)
            predictor = rt.slot.current
            assert predictor is not None
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 20)

        # Every trade is on a live candle the exchange closed after the replay started.
        recorded = {s: {k.start for k in ex.recorded(s)} for s in SYMBOLS}
        for t in trades["trades"]:
            assert t["candle_start"] in recorded[t["symbol"]]
            assert t["candle_start"] >= ex.start_ms
        pairs = [(t["symbol"], t["candle_start"]) for t in trades["trades"]]
        assert len(pairs) == len(set(pairs))
        assert [s["symbol"] for s in signals["signals"]] == list(SYMBOLS)
        count = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("apprentice_signal_latency_seconds_count")
        ]
        assert float(count[0].split()[-1]) > 0

        # The served probability equals onnxruntime on the batch features of the same window.
        table = load_bundled("BTCUSDT", "5")
        end = int(np.searchsorted(table.start, latest["candle_start"]))
        assert table.start[end] == latest["candle_start"]
        t = table.slice(0, end + 1)
        feats = batch_features(t.open, t.high, t.low, t.close, t.volume)
        fresh = Predictor.load(fixture_model.onnx_path)
        expected = float(fresh.predict_batch(make_windows(feats, [end]))[0])
        assert latest["probability_up"] == pytest.approx(expected, abs=1e-5)


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started and server.servers)
