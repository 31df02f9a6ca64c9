"""The signal journal on real SQLite: one row per candle, retention, reopen, a data set."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from service.monitor.signal_journal import KlineRow, SignalJournal, SignalRow

STEP = 300_000


def _k(start: int, close: float = 100.0, source: str = "ws", sym: str = "BTCUSDT") -> KlineRow:
    return KlineRow(sym, "5", start, close, close + 1, close - 1, close, 10.0, None, source)


def _s(start: int, p: float = 0.6, live: bool = True) -> SignalRow:
    return SignalRow("BTCUSDT", "5", start, p, 0.3, "long", live, "m", "1", "abc", 1)


def test_rows_once_wal_and_reopen(tmp_path: Path) -> None:
    j = SignalJournal(tmp_path)
    j.open()
    j.write([_k(0), _k(STEP)], [_s(0)])
    j.write([_k(STEP, close=5.0, source="rest")], [_s(0, p=0.1, live=False)])  # repeats
    j.close()
    j2 = SignalJournal(tmp_path)
    j2.open()
    ks = j2.klines("BTCUSDT", "5")
    assert [k.start for k in ks] == [0, STEP] and ks[1].close == 100.0  # first record stays
    assert j2.signals("BTCUSDT", "5") == [_s(0)]
    assert j2.counts() == {"klines": 2, "signals": 1}
    mode = sqlite3.connect(j2.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    j2.close()


def test_retention_in_candle_time(tmp_path: Path) -> None:
    j = SignalJournal(tmp_path, retention_days=1.0)
    j.open()
    day = 86_400_000
    j.write([_k(0), _k(day // 2), _k(2 * day)], [_s(0), _s(2 * day)])
    j.prune()
    assert [k.start for k in j.klines("BTCUSDT", "5")] == [2 * day]
    assert [s.candle_start for s in j.signals("BTCUSDT", "5")] == [2 * day]
    j.close()


def test_table_is_training_layout(tmp_path: Path) -> None:
    j = SignalJournal(tmp_path)
    j.open()
    j.write([_k(i * STEP, close=100.0 + i) for i in range(5)], [])
    t = j.table("BTCUSDT", "5")
    assert len(t) == 5 and t.start.dtype == np.int64
    assert list(t.close) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert np.isnan(t.turnover).all()
    assert j.symbols() == ["BTCUSDT"] and j.intervals("BTCUSDT") == ["5"]
    j.close()
