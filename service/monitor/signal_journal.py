"""The signal journal: every signal the service made and every closed kline it used, in SQLite.

``state_dir/signals.sqlite3`` (WAL, ``synchronous=NORMAL``: a committed batch survives a
kill -9 of the service; only an OS crash can lose the newest batch). Two tables, keyed so a
row can never be written twice: ``klines (symbol, interval, start)`` and ``signals (symbol,
interval, candle_start)``; writes are ``INSERT OR IGNORE``, so the backfill a restart
re-reads, or a repeated confirm, never doubles a row and the first record of a candle stays.

It is a data set: :meth:`SignalJournal.table` reads the klines of one symbol as a
:class:`service.market.klines.KlineTable` (``python -m training journal`` exports them to the
bundled CSV layout). Retention (``APPRENTICE_JOURNAL_RETENTION_DAYS``) is in candle time:
rows older than the symbol's newest candle minus the retention are deleted as batches are
written, so the file stays bounded however long the service runs.

This class is blocking and owned by one thread (:class:`service.monitor.model_monitor.ModelMonitor`
runs it on its writer thread); it holds no asyncio.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path

from service.market.klines import KlineTable

JOURNAL_FILE = "signals.sqlite3"
PRUNE_EVERY = 64  # batches between retention passes (a DELETE per batch is wasted work)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS klines (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    start INTEGER NOT NULL,
    open REAL NOT NULL,
    high REAL NOT NULL,
    low REAL NOT NULL,
    close REAL NOT NULL,
    volume REAL NOT NULL,
    turnover REAL,
    source TEXT NOT NULL,
    PRIMARY KEY (symbol, interval, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signals (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    candle_start INTEGER NOT NULL,
    probability_up REAL NOT NULL,
    probability_high_vol REAL NOT NULL,
    action TEXT NOT NULL,
    live INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    generated_ms INTEGER NOT NULL,
    PRIMARY KEY (symbol, interval, candle_start)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class KlineRow:
    """One journaled closed kline (``source`` "ws" or "rest")."""

    symbol: str
    interval: str
    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float | None
    source: str


@dataclass(frozen=True, slots=True)
class SignalRow:
    """One journaled signal; ``live`` False for one made from REST backfill."""

    symbol: str
    interval: str
    candle_start: int
    probability_up: float
    probability_high_vol: float
    action: str
    live: bool
    model_name: str
    model_version: str
    model_sha256: str
    generated_ms: int


_KLINE_COLS = tuple(f.name for f in fields(KlineRow))  # the table's column order
_SIGNAL_COLS = tuple(f.name for f in fields(SignalRow))
_kline_values = attrgetter(*_KLINE_COLS)
_signal_values = attrgetter(*_SIGNAL_COLS)


def _quick_check(db: sqlite3.Connection) -> str:
    """``"ok"`` or what SQLite found wrong (a damaged page, not a database at all)."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError:
        raise  # cannot read or write it (permissions, a read-only directory): not damage
    except sqlite3.DatabaseError as exc:  # not a database, a damaged header
        return str(exc)
    return "; ".join(str(r[0]) for r in rows[:3])


class JournalOpenError(RuntimeError):
    """The journal file cannot be opened; the message names it and what to check."""


class SignalJournal:
    """SQLite journal at ``state_dir/signals.sqlite3``; every method blocks."""

    def __init__(self, state_dir: Path, retention_days: float = 30.0) -> None:
        self.path = Path(state_dir) / JOURNAL_FILE
        self.retention_ms = int(retention_days * 86_400_000)
        self._db: sqlite3.Connection | None = None
        self._batches = 0

    def open(self) -> None:
        """Create the directory, the file and the tables (idempotent).

        A damaged file (``PRAGMA quick_check``) or one that cannot be written (a rolled-back
        write) is refused with :class:`JournalOpenError`, naming the file and what to do,
        instead of failing later on every write. Nothing is moved or deleted here.
        """
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            verdict = _quick_check(db)
            if verdict != "ok":
                raise JournalOpenError(
                    f"the signal journal {self.path} is damaged ({verdict[:200]}): move it "
                    f"aside, e.g. mv {self.path} {self.path}.damaged, and start again (a new "
                    "one is created; the service never deletes data)"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")  # a write probe, rolled back: read-only is refused
            try:
                db.execute("CREATE TABLE write_probe (x INTEGER)")
            finally:
                db.execute("ROLLBACK")
        except (OSError, sqlite3.Error, JournalOpenError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, JournalOpenError):
                raise
            raise JournalOpenError(
                f"cannot open the signal journal {self.path}: {exc}; make "
                "APPRENTICE_STATE_DIR and the files in it writable by this user"
            ) from None
        self._db = db

    def close(self) -> None:
        """Close the connection (a later :meth:`open` reopens it)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalOpenError(f"signal journal {self.path} is not open")
        return self._db

    def write(self, klines: Sequence[KlineRow], signals: Sequence[SignalRow]) -> None:
        """One transaction: insert what is new (a row already there is kept), then prune."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO klines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_kline_values(k) for k in klines],
            )
            db.executemany(
                "INSERT OR IGNORE INTO signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_signal_values(x) for x in signals],  # bool live is stored as 0/1
            )
            self._batches += 1
            if self._batches % PRUNE_EVERY == 1:
                self._prune({k.symbol for k in klines} | {s.symbol for s in signals})
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _prune(self, symbols: Iterable[str]) -> None:
        for sym in symbols:
            row = self.db.execute("SELECT MAX(start) FROM klines WHERE symbol = ?", (sym,))
            newest = row.fetchone()[0]
            if newest is None:
                continue
            cutoff = int(newest) - self.retention_ms
            self.db.execute("DELETE FROM klines WHERE symbol = ? AND start < ?", (sym, cutoff))
            self.db.execute(
                "DELETE FROM signals WHERE symbol = ? AND candle_start < ?", (sym, cutoff)
            )

    def prune(self) -> None:
        """A retention pass over every symbol now (tests, tools)."""
        syms = [r[0] for r in self.db.execute("SELECT DISTINCT symbol FROM klines")]
        self.db.execute("BEGIN")
        self._prune(syms)
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ reading
    def symbols(self) -> list[str]:
        """Symbols with journaled klines, sorted."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT symbol FROM klines ORDER BY 1")]

    def intervals(self, symbol: str) -> list[str]:
        """Intervals journaled for ``symbol``."""
        rows = self.db.execute("SELECT DISTINCT interval FROM klines WHERE symbol = ?", (symbol,))
        return sorted(r[0] for r in rows)

    def klines(self, symbol: str, interval: str, since: int | None = None) -> list[KlineRow]:
        """Klines of one symbol and interval in candle order (optionally from ``since``)."""
        rows = self.db.execute(
            "SELECT * FROM klines WHERE symbol = ? AND interval = ? AND start >= ? ORDER BY start",
            (symbol, interval, -(2**62) if since is None else since),
        )
        return [KlineRow(*r) for r in rows]

    def signals(self, symbol: str, interval: str, since: int | None = None) -> list[SignalRow]:
        """Signals of one symbol and interval in candle order (optionally from ``since``)."""
        rows = self.db.execute(
            "SELECT * FROM signals WHERE symbol = ? AND interval = ? AND candle_start >= ? "
            "ORDER BY candle_start",
            (symbol, interval, -(2**62) if since is None else since),
        )
        out = []
        for r in rows:
            values = dict(zip(_SIGNAL_COLS, r, strict=True))
            values["live"] = bool(values["live"])
            out.append(SignalRow(**values))
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table (for /model/health)."""
        return {
            t: int(self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("klines", "signals")
        }

    def table(self, symbol: str, interval: str) -> KlineTable:
        """The journaled klines of one symbol as a table (the training data layout)."""
        return KlineTable.from_klines(symbol, interval, self.klines(symbol, interval))
