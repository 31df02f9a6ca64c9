"""Issue 27: a signal journal whose writes keep failing logs once per state change (the
first failure, then the recovery), not a traceback on every retry. Real SQLite: the file is
made unwritable under the writer (its connection is swapped for a query-only one)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from service.monitor.model_monitor import ModelMonitor
from service.monitor.signal_journal import KlineRow


def row(i: int) -> KlineRow:
    return KlineRow("BTCUSDT", "5", 1_743_999_900_000 + i * 300_000, 1, 1, 1, 1, 1, None, "ws")


async def test_a_failing_writer_logs_once_per_state_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.monitor.model_monitor")
    m = ModelMonitor(
        symbols=["BTCUSDT"], interval="5", state_dir=tmp_path, metrics=Metrics(CollectorRegistry())
    )
    await m.start()
    m.retry_s = 0.0
    good = m.journal._db
    ro = sqlite3.connect(m.journal.path, isolation_level=None, check_same_thread=False)
    ro.execute("PRAGMA query_only=ON")
    m.journal._db = ro  # every write now fails: "attempt to write a readonly database"
    for i in range(50):
        m._klines.append(row(i))
        await m.flush()
    assert m.write_errors == 50
    m.journal._db = good
    await m.flush()
    assert m.rows_written == 50
    lines = [r for r in caplog.records if r.name == "service.monitor.model_monitor"]
    assert [r.levelno for r in lines] == [logging.ERROR, logging.WARNING], [
        r.getMessage() for r in lines
    ]
    assert "writing again after 50 failed tries" in lines[-1].getMessage()
    ro.close()
    m.journal.close()
