"""The champion/challenger tables of the signal journal (blocking; the journal's thread).

``shadow_signals``: the challenger's outputs, a sibling of ``signals`` with a ``role`` column
(an additive migration: ``CREATE TABLE IF NOT EXISTS``, the existing tables untouched), one
row per (symbol, interval, candle, model version), pruned with the journal's retention.
``model_decisions``: every challenger change, promotion, refusal and rollback, with why.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow_signals (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    candle_start INTEGER NOT NULL,
    role TEXT NOT NULL,
    probability_up REAL NOT NULL,
    probability_high_vol REAL NOT NULL,
    live INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    generated_ms INTEGER NOT NULL,
    PRIMARY KEY (symbol, interval, candle_start, model_name, model_version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS model_decisions (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    champion TEXT,
    challenger TEXT,
    reason TEXT NOT NULL
);
"""


class ShadowRow(NamedTuple):
    """One challenger output, as journaled."""

    symbol: str
    interval: str
    candle_start: int
    role: str
    probability_up: float
    probability_high_vol: float
    live: bool
    model_name: str
    model_version: str
    model_sha256: str
    generated_ms: int


def ensure_schema(db: sqlite3.Connection) -> None:
    """The shadow and decision tables next to the journal's own (idempotent)."""
    db.executescript(SCHEMA)


def write_rows(
    db: sqlite3.Connection, rows: Sequence[ShadowRow], retention_ms: int, prune: bool = False
) -> None:
    """Insert challenger outputs (the first record of a candle stays); ``prune``: drop rows
    older than the newest minus the journal's retention (candle time)."""
    db.execute("BEGIN")
    try:
        db.executemany(
            "INSERT OR IGNORE INTO shadow_signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        if prune:
            db.execute(
                "DELETE FROM shadow_signals WHERE candle_start < "
                "(SELECT MAX(candle_start) FROM shadow_signals) - ?",
                (retention_ms,),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def read_rows(
    db: sqlite3.Connection, symbol: str, interval: str, name: str, version: str
) -> list[ShadowRow]:
    """One challenger version's outputs for one symbol, in candle order."""
    rows = db.execute(
        "SELECT * FROM shadow_signals WHERE symbol = ? AND interval = ? AND model_name = ? "
        "AND model_version = ? ORDER BY candle_start",
        (symbol, interval, name, version),
    )
    return [ShadowRow(*r) for r in rows]


def write_decision(
    db: sqlite3.Connection,
    action: str,
    outcome: str,
    champion: str | None,
    challenger: str | None,
    reason: str,
) -> None:
    """Journal one promotion, refusal, rollback or challenger change."""
    db.execute(
        "INSERT INTO model_decisions (ts_ms, action, outcome, champion, challenger, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (int(time.time() * 1000), action, outcome, champion, challenger, reason),
    )


def read_decisions(db: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest decisions first."""
    cur = db.execute(
        "SELECT ts_ms, action, outcome, champion, challenger, reason FROM model_decisions "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur]
