"""The backtest is the service's paper account (DESIGN section 11, issue 28).

A real replay exchange on loopback serves the committed student's out-of-sample bars; a real
service (uvicorn, onnxruntime, SQLite journal) consumes them and paper-trades; then
``python -m training backtest``'s code runs the same candles from the bundled files and must
give the same fills, to the cent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import uvicorn

from service.http.app import create_app
from service.model.card import ModelCard
from service.model.predictor import Predictor
from service.paper.journal import AccountTerms, Journal
from service.replay import ReplayConfig, ReplayExchange
from service.settings import load_settings
from training.scoring.backtest_cli import backtest_all, bundled_table, in_sample, journaled

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "student_pooled_5m.onnx"
SYMBOLS = ("BTCUSDT", "ETHUSDT")
POLICY = "direction"  # the policy that trades most: the strongest check of the fills
MIN_FILLS = 12


async def _serve_replay(tmp_path: Path) -> tuple[Path, int]:
    card = ModelCard.load(MODEL.with_suffix(".json"))
    start = int(card.data_span["test_first_ms"])
    cfg = ReplayConfig(symbols=SYMBOLS, interval="5", speed=1200.0, port=0, start_ms=start)
    state = tmp_path / "state"
    async with ReplayExchange(cfg) as ex:
        settings = load_settings(
            symbols=list(SYMBOLS),
            model=MODEL,
            state_dir=state,
            ws_url=ex.ws_url,
            rest_url=ex.rest_url,
            port=0,
            backfill_bars=300,
            policy=POLICY,
        )
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        serving = asyncio.create_task(server.serve())
        try:
            deadline = time.monotonic() + 90
            journal = Journal(state)
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if not journal.path.exists():
                    continue
                journal.open()
                try:
                    n = journal.count_fills(1)
                finally:
                    journal.close()
                if n >= MIN_FILLS:
                    break
            else:
                raise AssertionError("the service made too few fills")
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 20)
    return state, start


@pytest.mark.timeout(180)
def test_backtest_of_a_replayed_period_gives_the_service_fills_to_the_cent(
    tmp_path: Path,
) -> None:
    state, start = asyncio.run(_serve_replay(tmp_path))
    journal = Journal(state)
    journal.open()
    try:
        terms = journal.current_account(0, 0, 0, 0)
        served = journal.fills(terms.epoch)
        points = journal.db.execute(
            "SELECT symbol, MIN(candle_start), MAX(candle_start) FROM equity_points "
            "WHERE epoch = ? GROUP BY symbol",
            (terms.epoch,),
        ).fetchall()
    finally:
        journal.close()
    first = min(p[1] for p in points)
    last = min(p[2] for p in points)  # the last candle every symbol finished
    assert first >= start  # every traded candle is out of sample
    served = [f for f in served if f.candle_start <= last]
    assert len(served) >= MIN_FILLS - len(SYMBOLS)

    predictor = Predictor.load(MODEL)
    tables = [bundled_table(s, "5", first, last) for s in SYMBOLS]
    bt_terms = AccountTerms(
        0, terms.initial_usdt, terms.notional_usdt, terms.fee_bps, terms.slippage_bps, 0
    )
    (run, summary) = backtest_all(predictor, tables, first, last, [POLICY], bt_terms)[POLICY]
    assert not in_sample(predictor.card, SYMBOLS, first, last)

    def key(f: object) -> tuple[object, ...]:
        return (
            f.symbol,  # type: ignore[attr-defined]
            f.candle_start,  # type: ignore[attr-defined]
            f.side,  # type: ignore[attr-defined]
            round(f.qty * f.price, 2),  # type: ignore[attr-defined]
            round(f.price, 2),  # type: ignore[attr-defined]
            round(f.fee, 2),  # type: ignore[attr-defined]
            round(f.realized_pnl, 2),  # type: ignore[attr-defined]
            f.action,  # type: ignore[attr-defined]
        )

    assert [key(f) for f in run.fills] == [key(f) for f in served]
    # and not only to the cent: the same arithmetic on the same closes
    assert [(f.qty, f.price, f.fee) for f in run.fills] == [(f.qty, f.price, f.fee) for f in served]
    assert summary["portfolio"]["fills"] == len(served)

    # the same from the service's own journal (--state-dir): its REST warm-up bars and its
    # live candles, the period starting at its first live candle
    tables, live_from = journaled(state, list(SYMBOLS), "5")
    assert live_from == first
    (again, _) = backtest_all(predictor, tables, live_from, last, [POLICY], bt_terms)[POLICY]
    assert [key(f) for f in again.fills] == [key(f) for f in served]
