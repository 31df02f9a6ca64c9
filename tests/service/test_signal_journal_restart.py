"""kill -9 the real service, restart it: the signal journal and the live scores continue with
no candle lost and none doubled (replay exchange on loopback, two real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from service.klines import interval_ms
from service.replay import ReplayConfig, ReplayExchange

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
STEP = interval_ms("5")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(db_path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


async def _until(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_kill9_restart_journal_and_scores_continue(
    fixture_model: Any, tmp_path: Path
) -> None:
    port = _free_port()
    state = tmp_path / "state"
    db = state / "signals.sqlite3"
    cfg = ReplayConfig(symbols=SYMBOLS, interval="5", speed=1200.0, port=0)  # 4 candles/s
    async with ReplayExchange(cfg) as ex:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
        env.update(
            APPRENTICE_SYMBOLS=",".join(SYMBOLS),
            APPRENTICE_WS_URL=ex.ws_url,
            APPRENTICE_REST_URL=ex.rest_url,
            APPRENTICE_MODEL=str(fixture_model.onnx_path),
            APPRENTICE_STATE_DIR=str(state),
            APPRENTICE_PORT=str(port),
            APPRENTICE_LOG_LEVEL="warning",
        )

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL
            )

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            served: set[tuple[str, int]] = set()

            async def scored(at_least: int) -> dict[str, Any] | None:
                try:
                    health = (await http.get("/model/health")).json()
                    for s in (await http.get("/signals")).json()["signals"]:
                        served.add((s["symbol"], s["candle_start"]))
                except (httpx.HTTPError, ValueError, KeyError):
                    return None
                totals = [
                    h["scored_total"] for sym in health["symbols"].values() for h in sym.values()
                ]
                return health if min(totals) >= at_least else None

            proc = start()
            try:
                before = await _until(lambda: scored(6), 60, "live scores before the kill")
                await asyncio.sleep(0.3)  # the journal commits within milliseconds
                os.kill(proc.pid, signal.SIGKILL)  # mid-run: candles keep closing meanwhile
                assert proc.wait(10) == -signal.SIGKILL
            finally:
                if proc.poll() is None:
                    proc.kill()

            journaled = {(s, c) for s, c in _rows(db, "SELECT symbol, candle_start FROM signals")}
            assert served <= journaled, "a signal served over HTTP is missing from the journal"
            n_before = len(journaled)

            proc = start()
            try:
                # right after the restart the scores are the journal's (rebuilt), not zero
                first = await _until(lambda: scored(1), 60, "the restarted service")
                for sym in SYMBOLS:
                    for head in ("direction", "volatility"):
                        was = before["symbols"][sym][head]["scored_total"]
                        assert first["symbols"][sym][head]["scored_total"] >= was
                target = max(
                    h["scored_total"] for sym in before["symbols"].values() for h in sym.values()
                )
                await _until(lambda: scored(target + 8), 60, "scores after the restart")

                async def live_signals() -> bool:  # only live candles observe the latency
                    text = (await http.get("/metrics")).text
                    line = next(
                        x
                        for x in text.splitlines()
                        if x.startswith("apprentice_signal_latency_seconds_count")
                    )
                    return float(line.split()[-1]) >= 2 * len(SYMBOLS)

                await _until(live_signals, 60, "live candles after the catch-up")
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) in (0, -signal.SIGTERM)

    assert len(_rows(db, "SELECT * FROM signals")) > n_before
    for sym in SYMBOLS:
        klines = [
            r[0] for r in _rows(db, "SELECT start FROM klines WHERE symbol = ? ORDER BY 1", sym)
        ]
        signals = _rows(
            db, "SELECT candle_start, live FROM signals WHERE symbol = ? ORDER BY 1", sym
        )
        starts = [s for s, _ in signals]
        # no kline and no signal lost across the kill: the restart's backfill filled the
        # downtime, one row per candle (the primary keys forbid a double)
        assert klines == list(range(klines[0], klines[-1] + STEP, STEP))
        assert starts == list(range(starts[0], klines[-1] + STEP, STEP))
        assert len(starts) == len(set(starts))
        live = [s for s, is_live in signals if is_live]
        assert live and live[-1] == starts[-1]  # the service ended on live candles
