"""The journal's read side: the trade page as JSON, its filter and count, and its indexes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from service.http.schemas import TradesOut
from service.paper.journal import JSON_CHUNK, Fill, Journal


def _fill(symbol: str, start: int, i: int) -> Fill:
    return Fill(
        symbol=symbol,
        candle_start=start,
        side="buy" if i % 2 else "sell",
        qty=0.01 + i * 1e-6,
        price=100_000.0 + i / 7,  # not round: the JSON must keep every digit
        close=100_000.0 + i / 9,
        fee=0.055 + i * 1e-9,
        realized_pnl=(-1) ** i * i / 3,
        position_after=0.01,
        avg_entry_after=100_000.0 + i / 7,
        probability_up=0.6,
        action="long",
        ts_ms=1_700_000_000_000 + i,
    )


def _journal(tmp_path: Path, n: int) -> tuple[Journal, int, list[Fill]]:
    j = Journal(tmp_path)
    j.open()
    epoch = j.current_account(10_000, 1_000, 5.5, 1.0).epoch
    fills = [_fill(("BTCUSDT", "ETHUSDT", "SOLUSDT")[i % 3], i * 300_000, i) for i in range(n)]
    j.db.execute("BEGIN")
    for f in fills:
        j.insert_fill(epoch, f)
    j.db.execute("COMMIT")
    return j, epoch, fills


def test_trades_json_is_the_api_schema_newest_first_and_total_honours_the_filter(
    tmp_path: Path,
) -> None:
    n = 3 * JSON_CHUNK + 5  # several chunks, the last one partial
    j, epoch, fills = _journal(tmp_path, n)
    try:
        everything = TradesOut.model_validate_json(j.trades_json(epoch, None, 10_000))
        assert everything.account == epoch and everything.total == n
        got = [Fill(**t.model_dump()) for t in everything.trades]
        assert got == fills[::-1]  # newest first, every float exact

        eth = json.loads(j.trades_json(epoch, "ETHUSDT", 10))
        eth_all = [f for f in fills if f.symbol == "ETHUSDT"]
        assert eth["total"] == len(eth_all) == j.count_fills(epoch, "ETHUSDT")
        assert [t["candle_start"] for t in eth["trades"]] == [
            f.candle_start for f in eth_all[::-1][:10]
        ]
        assert json.loads(j.trades_json(epoch, "XRPUSDT", 10)) == {
            "account": epoch,
            "total": 0,
            "trades": [],
        }
        assert json.loads(j.trades_json(epoch + 1, None, 10))["total"] == 0
    finally:
        j.close()


def test_page_and_count_queries_use_the_indexes(tmp_path: Path) -> None:
    j, epoch, _ = _journal(tmp_path, 50)
    try:
        queries = [
            ("SELECT * FROM fills WHERE epoch = ? ORDER BY id DESC LIMIT 10", (epoch,)),
            (
                "SELECT * FROM fills WHERE epoch = ? AND symbol = ? ORDER BY id DESC LIMIT 10",
                (epoch, "BTCUSDT"),
            ),
            ("SELECT COUNT(*) FROM fills WHERE epoch = ?", (epoch,)),
            ("SELECT COUNT(*) FROM fills WHERE epoch = ? AND symbol = ?", (epoch, "BTCUSDT")),
        ]
        for sql, args in queries:
            plan = " ".join(r[-1] for r in j.db.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "USING" in plan and "INDEX" in plan, (sql, plan)
            assert "TEMP B-TREE" not in plan, (sql, plan)  # no sort of the whole account
    finally:
        j.close()


async def test_reads_run_on_their_own_thread_while_the_writer_is_busy(tmp_path: Path) -> None:
    """A read is answered while the writer thread is blocked (it has its own thread and
    connection), and sees what the writer committed."""
    j, epoch, fills = _journal(tmp_path, 10)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    gate = asyncio.run_coroutine_threadsafe(release.wait(), loop)
    writer_busy = asyncio.ensure_future(j.call(gate.result, 10))  # blocks the writer thread
    try:
        body = await asyncio.wait_for(j.read(j.trades_json, epoch, None, 5), timeout=5)
        assert json.loads(body)["total"] == len(fills)
        assert not writer_busy.done()
    finally:
        release.set()
        await writer_busy
        await j.aclose()
