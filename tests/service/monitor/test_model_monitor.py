"""ModelMonitor: rows reach SQLite in batches; a failing journal keeps them, bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.market.klines import KlineTable
from service.metrics import Metrics
from service.monitor import model_monitor as monitor_mod
from service.monitor.model_monitor import ModelMonitor


async def test_failed_writes_keep_rows_bounded_then_commit(
    tmp_path: Path,
    btc_5m: KlineTable,
    make_events: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(monitor_mod, "MAX_PENDING_ROWS", 5)
    metrics = Metrics(CollectorRegistry())
    mon = ModelMonitor(symbols=["BTCUSDT"], interval="5", state_dir=tmp_path, metrics=metrics)
    await mon.start()
    mon.retry_s = 0.0
    for ev in make_events(btc_5m, 0, 3):
        mon.offer(ev, None, None)
    await asyncio.sleep(0)  # the drain runs on the loop's next pass
    await mon.flush()
    assert (await mon.call(mon.journal.counts))["klines"] == 3

    await mon.call(mon.journal.close)  # the journal now fails every write
    for ev in make_events(btc_5m, 3, 11):
        mon.offer(ev, None, None)
    await asyncio.sleep(0)
    await mon.flush()
    assert mon.write_errors == 1 and len(mon._klines) == 5 and mon.dropped_rows == 3
    assert metrics.journal_errors._value.get() == 1

    await mon.call(mon.journal.open)  # back: the newest five are committed
    await mon.flush()
    starts = [k.start for k in await mon.call(mon.journal.klines, "BTCUSDT", "5")]
    assert starts == [int(s) for s in btc_5m.start[[0, 1, 2, 6, 7, 8, 9, 10]]]
    await mon.aclose()


async def test_offers_from_another_thread_are_drained_on_the_monitor_loop(
    tmp_path: Path, btc_5m: KlineTable, make_events: Callable[..., Any]
) -> None:
    """The pipeline's thread offers; every row reaches the journal, none twice."""
    mon = ModelMonitor(
        symbols=["BTCUSDT"], interval="5", state_dir=tmp_path, metrics=Metrics(CollectorRegistry())
    )
    await mon.start()
    writer = asyncio.create_task(mon.run())
    events = make_events(btc_5m, 0, 2000)
    drained_on: set[int] = set()
    original = mon._take

    def take(*args: Any) -> None:
        drained_on.add(threading.get_ident())
        original(*args)

    mon._take = take  # type: ignore[method-assign]

    def produce() -> None:
        for ev in events:
            mon.offer(ev, None, None)

    thread = threading.Thread(target=produce)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.001)
    thread.join()
    await asyncio.sleep(0.01)
    await mon.flush()
    writer.cancel()
    starts = [k.start for k in await mon.call(mon.journal.klines, "BTCUSDT", "5")]
    assert starts == [int(s) for s in btc_5m.start[:2000]]
    assert drained_on == {threading.get_ident()}  # only on the monitor's own loop
    await mon.aclose()
