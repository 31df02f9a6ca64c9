"""kill -9 the real service, restart it: the signal journal and the live scores continue with
no candle lost and none doubled (replay exchange on loopback, two real processes)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from service.market.klines import interval_ms
from service.replay import ReplayConfig, ReplayExchange

ROOT = Path(__file__).resolve().parents[3]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
STEP = interval_ms("5")


def _rows(db_path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


async def test_kill9_restart_journal_and_scores_continue(
    service_process: Callable[..., Any], until: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    db = state / "signals.sqlite3"
    cfg = ReplayConfig(symbols=SYMBOLS, interval="5", speed=1200.0, port=0)  # 4 candles/s
    async with ReplayExchange(cfg) as ex:
        svc = service_process(ex.ws_url, ex.rest_url, SYMBOLS, state)

        async with httpx.AsyncClient(base_url=svc.base_url, timeout=5) as http:
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

            svc.start()
            before = await until(lambda: scored(6), 60, "live scores before the kill")
            await asyncio.sleep(0.3)  # the journal commits within milliseconds
            svc.kill9()

            journaled = {(s, c) for s, c in _rows(db, "SELECT symbol, candle_start FROM signals")}
            assert served <= journaled, "a signal served over HTTP is missing from the journal"
            n_before = len(journaled)

            svc.start()
            try:
                # right after the restart the scores are the journal's (rebuilt), not zero
                first = await until(lambda: scored(1), 60, "the restarted service")
                for sym in SYMBOLS:
                    for head in ("direction", "volatility"):
                        was = before["symbols"][sym][head]["scored_total"]
                        assert first["symbols"][sym][head]["scored_total"] >= was
                target = max(
                    h["scored_total"] for sym in before["symbols"].values() for h in sym.values()
                )
                await until(lambda: scored(target + 8), 60, "scores after the restart")

                async def live_signals() -> bool:  # only live candles observe the latency
                    text = (await http.get("/metrics")).text
                    line = next(
                        x
                        for x in text.splitlines()
                        if x.startswith("apprentice_signal_latency_seconds_count")
                    )
                    return float(line.split()[-1]) >= 2 * len(SYMBOLS)

                await until(live_signals, 60, "live candles after the catch-up")
            finally:
                svc.stop()

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
