"""Paper trading: fills and PnL against hand-computed numbers, the journal, the trader."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.paper.account import PaperAccount, PaperTrader, fill_price, replay_fills
from service.paper.journal import AccountTerms, DuplicateFill, Journal
from service.pipeline.signals import Signal

TERMS = AccountTerms(1, 10_000.0, 1_000.0, 5.5, 1.0, 0)
FEE = 5.5e-4
SLIP = 1e-4


def sig(symbol: str, start: int, close: float, action: str, *, live: bool = True) -> Signal:
    p = {"long": 0.7, "short": 0.3, "flat": 0.5}[action]
    return Signal(
        symbol=symbol,
        interval="5",
        candle_start=start,
        close=close,
        probability_up=p,
        direction="up" if p >= 0.5 else "down",
        confidence=abs(2 * p - 1),
        action=action,
        model_name="m",
        model_version="1",
        features_us=1.0,
        inference_us=1.0,
        received_ns=0,
        generated_at=0.0,
        live=live,
    )


def test_fill_price_moves_against_the_order() -> None:
    assert fill_price(100.0, "buy", 1.0) == pytest.approx(100.01)
    assert fill_price(100.0, "sell", 1.0) == pytest.approx(99.99)


def test_long_hold_flip_flat_matches_hand_computation() -> None:
    acc = PaperAccount(TERMS)
    # 1) long at close 100: buy 1000/100 = 10 BTC at 100.01, fee 10*100.01*5.5e-4
    f1 = acc.plan(sig("BTCUSDT", 0, 100.0, "long"), 1)
    assert f1 is not None
    assert f1.side == "buy"
    assert f1.qty == pytest.approx(10.0) and f1.price == pytest.approx(100.01)
    assert f1.fee == pytest.approx(10 * 100.01 * FEE)
    assert f1.realized_pnl == 0.0
    acc.apply(f1)
    assert acc.equity == pytest.approx(10_000 - 0.550055 + 10 * (100 - 100.01))

    # 2) long again at close 110: hold (no resize), marked at 110
    s2 = sig("BTCUSDT", 300_000, 110.0, "long")
    acc.mark("BTCUSDT", 110.0)
    assert acc.plan(s2, 2) is None
    assert acc.unrealized_pnl == pytest.approx(10 * (110 - 100.01))

    # 3) short at 120: one sell of 10 + 1000/120, at 120*(1-1e-4) = 119.988
    f3 = acc.plan(sig("BTCUSDT", 600_000, 120.0, "short"), 3)
    assert f3 is not None
    qty3 = 10 + 1000 / 120
    assert f3.side == "sell"
    assert f3.qty == pytest.approx(qty3) and f3.price == pytest.approx(119.988)
    assert f3.realized_pnl == pytest.approx(10 * (119.988 - 100.01))  # 199.78
    assert f3.fee == pytest.approx(qty3 * 119.988 * FEE)
    assert f3.position_after == pytest.approx(-1000 / 120)
    assert f3.avg_entry_after == pytest.approx(119.988)
    acc.apply(f3)
    fees = 10 * 100.01 * FEE + qty3 * 119.988 * FEE
    assert acc.fees == pytest.approx(fees)
    assert acc.realized_pnl == pytest.approx(199.78)
    unreal = -1000 / 120 * (120 - 119.988)
    assert acc.equity == pytest.approx(10_000 + 199.78 - fees + unreal)

    # 4) flat at 100: buy back 1000/120 at 100.01; the short earns (119.988 - 100.01) each
    f4 = acc.plan(sig("BTCUSDT", 900_000, 100.0, "flat"), 4)
    assert f4 is not None and f4.side == "buy"
    assert f4.realized_pnl == pytest.approx(1000 / 120 * (119.988 - 100.01))
    acc.apply(f4)
    assert acc.position("BTCUSDT").qty == 0.0
    fees += 1000 / 120 * 100.01 * FEE
    realized = 199.78 + 1000 / 120 * (119.988 - 100.01)
    assert acc.unrealized_pnl == 0.0
    assert acc.equity == pytest.approx(10_000 + realized - fees)
    assert acc.trades == 3
    assert acc.snapshot()["net_pnl"] == pytest.approx(realized - fees)


def test_two_symbols_and_drawdown() -> None:
    acc = PaperAccount(TERMS)
    for f in (
        acc.plan(sig("BTCUSDT", 0, 100.0, "long"), 0),
        acc.plan(sig("ETHUSDT", 0, 10.0, "short"), 0),
    ):
        assert f is not None
        acc.apply(f)
    acc.mark("BTCUSDT", 90.0)  # long loses 10 * (90 - 100.01)
    acc.mark("ETHUSDT", 11.0)  # short of 100 ETH loses 100 * (11 - 9.999)
    expected_unreal = 10 * (90 - 100.01) - 100 * (11 - 9.999)
    assert acc.unrealized_pnl == pytest.approx(expected_unreal)
    acc.record(1)
    fees = 10 * 100.01 * FEE + 100 * 9.999 * FEE
    assert acc.equity == pytest.approx(10_000 - fees + expected_unreal)
    assert acc.drawdown == pytest.approx((10_000 - acc.equity) / 10_000)


def test_journal_roundtrip_and_unique_candle(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    terms = j.current_account(10_000, 1_000, 5.5, 1.0)
    acc = PaperAccount(terms)
    f = acc.plan(sig("BTCUSDT", 0, 100.0, "long"), 123)
    assert f is not None
    j.insert_fill(terms.epoch, f)
    with pytest.raises(DuplicateFill):
        j.insert_fill(terms.epoch, f)
    j.close()

    j2 = Journal(tmp_path)  # a restart
    j2.open()
    assert j2.current_account(1, 1, 0, 0) == terms  # resumes, ignores new defaults
    assert j2.fills(terms.epoch) == [f]
    mode = j2.db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    new = j2.new_account(5_000, 500, 5.5, 1.0)
    assert new.epoch == terms.epoch + 1 and j2.fills(new.epoch) == []
    assert j2.count_fills(terms.epoch) == 1  # the old account's fills stay
    j2.close()
    raw = sqlite3.connect(tmp_path / "paper.sqlite3")
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO fills SELECT NULL, epoch, symbol, candle_start, side, qty, price, close,"
            " fee, realized_pnl, position_after, avg_entry_after, probability_up, action, ts_ms"
            " FROM fills"
        )


async def test_trader_journals_before_booking_and_never_trades_a_candle_twice(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path)
    await j.call(j.open)
    terms = await j.call(j.current_account, 10_000.0, 1_000.0, 5.5, 1.0)
    metrics = Metrics()
    trader = PaperTrader(j, PaperAccount(terms), metrics)

    assert await trader.on_signal(sig("BTCUSDT", 0, 100.0, "long", live=False)) is None
    assert trader.account.trades == 0  # history is never traded
    fill = await trader.on_signal(sig("BTCUSDT", 300_000, 100.0, "long"))
    assert fill is not None and await j.call(j.fills, terms.epoch) == [fill]
    assert metrics.paper_trades.labels(symbol="BTCUSDT", side="buy")._value.get() == 1

    # A restart rebuilds the same account from the journal ...
    restored = replay_fills(terms, await j.call(j.fills, terms.epoch))
    assert restored.snapshot()["positions"] == trader.account.snapshot()["positions"]
    # ... and the same candle offered again (even with another action) does not trade.
    trader2 = PaperTrader(j, restored, metrics)
    assert await trader2.on_signal(sig("BTCUSDT", 300_000, 100.0, "short")) is None
    assert trader2.duplicates == 1 and trader2.account.trades == 1
    assert await j.call(j.count_fills, terms.epoch) == 1

    reset = await trader2.reset(2_000.0, 100.0)
    assert reset.terms.epoch == terms.epoch + 1 and reset.equity == 2_000.0
    # the new account may trade the candle again: it is a different account
    assert await trader2.on_signal(sig("BTCUSDT", 300_000, 100.0, "short")) is not None
    await j.aclose()


async def test_a_failed_journal_write_books_nothing_and_trading_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journal(tmp_path)
    await j.call(j.open)
    terms = await j.call(j.current_account, 10_000.0, 1_000.0, 5.5, 1.0)
    trader = PaperTrader(j, PaperAccount(terms), Metrics())
    real_insert = j.insert_fill
    calls = {"n": 0}

    def flaky(epoch: int, fill: object) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_insert(epoch, fill)  # type: ignore[arg-type]

    monkeypatch.setattr(j, "insert_fill", flaky)
    task = asyncio.create_task(trader.run())
    trader.offer(sig("BTCUSDT", 0, 100.0, "long"))
    trader.offer(sig("BTCUSDT", 300_000, 101.0, "long"))
    for _ in range(1000):
        if trader.queue.empty() and not trader.lock.locked() and calls["n"] >= 2:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert trader.errors == 1
    fills = await j.call(j.fills, terms.epoch)
    assert [f.candle_start for f in fills] == [300_000]  # the retry on the next candle
    assert trader.account.trades == 1
    await j.aclose()


async def test_a_restart_keeps_the_whole_equity_curve_peak_and_marks(tmp_path: Path) -> None:
    from service.paper.account import EQUITY_POINTS

    j = Journal(tmp_path)
    await j.call(j.open)
    terms = await j.call(j.current_account, 10_000.0, 1_000.0, 5.5, 1.0)
    trader = PaperTrader(j, PaperAccount(terms), Metrics())
    actions = ["long", "long", "flat", "short", "short", "long", "flat", "flat"]
    for i in range(40):
        for sym, base in (("BTCUSDT", 100.0), ("ETHUSDT", 10.0)):
            close = base * (1 + 0.03 * ((i * 7) % 5 - 2))
            await trader.on_signal(sig(sym, i * 300_000, close, actions[(i + len(sym)) % 8]))
    before = trader.account.snapshot()
    # one point per candle, not one per symbol per candle (issue 28: three points per candle
    # with the same time on /paper)
    assert len(before["equity_curve"]) == 40 < before["trades"]
    assert len({t for t, _ in before["equity_curve"]}) == 40
    fills = await j.call(j.fills, terms.epoch)
    curve = await j.call(j.curve_state, terms.epoch, EQUITY_POINTS)
    after = replay_fills(terms, fills, curve).snapshot()  # what a restart builds
    # buy and hold is summed in another order after a restart: equal to rounding
    assert after.pop("buy_and_hold_equity") == pytest.approx(before.pop("buy_and_hold_equity"))
    bh_after, bh_before = after.pop("buy_and_hold_curve"), before.pop("buy_and_hold_curve")
    assert [t for t, _ in bh_after] == [t for t, _ in bh_before]
    assert [b for _, b in bh_after] == pytest.approx([b for _, b in bh_before])
    assert after == before  # curve, peak (drawdown), marks (unrealised PnL, equity): all of it
    await j.aclose()


class _CountingGauge:
    def __init__(self) -> None:
        self.labelled: list[str] = []

    def labels(self, symbol: str) -> _CountingGauge:
        self.labelled.append(symbol)
        return self

    def set(self, value: float) -> None:
        pass


async def test_a_signal_costs_o1_in_the_number_of_symbols(tmp_path: Path) -> None:
    """Issue 30 item 1: a signal sets only its own symbol's gauge, and equity is not a sum
    over the positions (the old account summed every position per signal)."""
    j = Journal(tmp_path)
    await j.call(j.open)
    terms = await j.call(j.current_account, 1e9, 1_000.0, 5.5, 1.0)
    trader = PaperTrader(j, PaperAccount(terms), Metrics())
    symbols = [f"S{i:03d}USDT" for i in range(300)]
    for s in symbols:
        await trader.on_signal(sig(s, 0, 100.0, "long"))
    gauge = _CountingGauge()
    trader.metrics.paper_position = gauge  # type: ignore[assignment]
    acc = trader.account
    before = acc.equity
    await trader.on_signal(sig("S007USDT", 300_000, 101.0, "long"))
    assert gauge.labelled == ["S007USDT"]
    assert acc.equity == pytest.approx(before + 10.0)  # 10 units up 1 USDT
    assert acc.unrealized_pnl == pytest.approx(sum(p.unrealized for p in acc.positions.values()))
    await j.aclose()


def test_round_trips_and_per_symbol_pnl_count_what_they_say() -> None:
    acc = PaperAccount(TERMS)
    for f in (acc.plan(sig("BTCUSDT", 0, 100.0, "long"), 0),):
        assert f is not None
        acc.apply(f)
    f = acc.plan(sig("BTCUSDT", 300_000, 110.0, "flat"), 0)
    assert f is not None
    acc.apply(f)
    snap = acc.snapshot()
    assert snap["fills"] == 2 and snap["round_trips"] == 1  # fills are not round trips
    (trip,) = snap["round_trip_list"]
    fees = 10 * 100.01 * FEE + 10 * 109.989 * FEE
    assert trip["fees"] == pytest.approx(fees)
    assert trip["net_pnl"] == pytest.approx(10 * (109.989 - 100.01) - fees)
    (pos,) = snap["positions"]
    assert pos["net_pnl"] == pytest.approx(trip["net_pnl"])  # per symbol, after fees


async def test_replay_keeps_the_running_sums_finite_over_hand_edited_fills(
    tmp_path: Path,
) -> None:
    """Issue 27 item 10: two journaled fills of 1e308 are each finite, their sum is not;
    replay skips what no account of these terms can reach, so /paper's equity stays a number."""
    j = Journal(tmp_path)
    await j.call(j.open)
    try:
        terms = await j.call(j.current_account, 10_000.0, 1_000.0, 5.5, 1.0)
        trader = PaperTrader(j, PaperAccount(terms), Metrics())
        await trader.on_signal(sig("BTCUSDT", 300_000, 100.0, "long"))
        await trader.on_signal(sig("BTCUSDT", 600_000, 101.0, "short"))
        await trader.on_signal(sig("BTCUSDT", 900_000, 102.0, "long"))
        honest = replay_fills(terms, await j.call(j.fills, terms.epoch))
        assert honest.trades == 3
    finally:
        j.close()
    with sqlite3.connect(j.path) as db:  # an operator's hand edit
        db.execute("UPDATE fills SET realized_pnl = 1e308 WHERE candle_start IN (600000, 900000)")
    j = Journal(tmp_path)
    await j.call(j.open)
    try:
        fills = await j.call(j.fills, terms.epoch)
    finally:
        j.close()
    assert sum(1 for f in fills if f.realized_pnl == 1e308) == 2
    restored = replay_fills(terms, fills)
    snap = restored.snapshot()
    assert restored.trades == 1  # the edited fills are skipped, the honest one kept
    assert snap["equity"] is not None and abs(snap["equity"]) < 1e6


async def test_a_burst_of_equity_points_is_one_transaction(tmp_path: Path) -> None:
    """Issue 30 item 1 (journals commit per burst): 200 symbols' live signals queued
    together cost the trader one equity-point transaction, not 200 autocommits (each an
    fsync under synchronous=FULL), and every point is in the journal after it."""
    j = Journal(tmp_path)
    await j.call(j.open)
    terms = await j.call(j.current_account, 1e9, 1_000.0, 5.5, 1.0)
    trader = PaperTrader(j, PaperAccount(terms), Metrics(), settle_s=0.0)
    writes: list[int] = []
    original = j.insert_points

    def counting(points: list[tuple[int, object]]) -> None:
        writes.append(len(points))
        original(points)  # type: ignore[arg-type]

    j.insert_points = counting  # type: ignore[method-assign]
    symbols = [f"S{i:03d}USDT" for i in range(200)]
    for s in symbols:
        trader.offer(sig(s, 300_000, 100.0, "long"))
    task = asyncio.create_task(trader.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if sum(writes) == len(symbols):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert writes == [len(symbols)]
    db = sqlite3.connect(tmp_path / "paper.sqlite3")
    (n,) = db.execute("SELECT COUNT(*) FROM equity_points").fetchone()
    db.close()
    assert n == len(symbols)
    await j.aclose()
