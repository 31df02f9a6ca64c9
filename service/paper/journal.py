"""The paper-trading journal: SQLite in the state directory, the account's source of truth.

WAL with ``synchronous=FULL``: a fill is committed (and fsynced) before the trader books it,
so whatever the account shows survives kill -9 and power loss. ``UNIQUE(account, symbol,
candle_start)`` makes "a candle never trades twice" a database rule, not a hope. A reset
opens a new account (epoch); old accounts and their fills stay for the record.

Every write runs on one dedicated worker thread (:meth:`Journal.call`), so SQLite's
fsync never blocks the event loop and the connection is only ever used by one thread. The
API's reads run on a second thread with its own query-only connection (:meth:`Journal.read`;
WAL lets it read while a fill commits), so a heavy read never delays a fill. The trade
list is served as JSON built on that thread (:meth:`Journal.trades_json`): SQLite releases
the GIL while it steps, and the rows are encoded in chunks of :data:`JSON_CHUNK`, so no
single C call holds the GIL for long (the candle thread needs it, ``service.pipeline.candle_loop``).
Both queries of a page run on indexes: ``(epoch, id)`` and ``(epoch, symbol, id)``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")
JOURNAL_FILE = "paper.sqlite3"
JSON_CHUNK = 256  # fills per orjson call: ~0.1 ms of GIL each

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    epoch INTEGER PRIMARY KEY,
    initial_usdt REAL NOT NULL,
    notional_usdt REAL NOT NULL,
    fee_bps REAL NOT NULL,
    slippage_bps REAL NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch INTEGER NOT NULL REFERENCES accounts(epoch),
    symbol TEXT NOT NULL,
    candle_start INTEGER NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    qty REAL NOT NULL CHECK (qty > 0),
    price REAL NOT NULL,
    close REAL NOT NULL,
    fee REAL NOT NULL,
    realized_pnl REAL NOT NULL,
    position_after REAL NOT NULL,
    avg_entry_after REAL NOT NULL,
    probability_up REAL NOT NULL,
    action TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    UNIQUE (epoch, symbol, candle_start)
);
CREATE INDEX IF NOT EXISTS fills_by_account ON fills (epoch, id);
CREATE INDEX IF NOT EXISTS fills_by_symbol ON fills (epoch, symbol, id);
CREATE TABLE IF NOT EXISTS equity_points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch INTEGER NOT NULL REFERENCES accounts(epoch),
    symbol TEXT NOT NULL,
    candle_start INTEGER NOT NULL,
    close REAL NOT NULL,
    equity REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS equity_points_epoch ON equity_points (epoch, id);
"""


@dataclass(frozen=True, slots=True)
class Fill:
    """One paper order, as journaled. ``qty`` > 0 in base units; prices and money in USDT."""

    symbol: str
    candle_start: int
    side: str
    qty: float
    price: float
    close: float
    fee: float
    realized_pnl: float
    position_after: float
    avg_entry_after: float
    probability_up: float
    action: str
    ts_ms: int


_FILL_COLUMNS = tuple(f.name for f in fields(Fill))  # the schema's column order


class JournalError(RuntimeError):
    """The journal cannot be opened or written; the message names the file."""


def check_sqlite(db: sqlite3.Connection, path: Path, what: str) -> None:
    """Raise :class:`JournalError` unless ``db`` passes SQLite's ``quick_check`` (a damaged
    page, or a file that is not a database at all)."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        verdict = "; ".join(str(r[0]) for r in rows[:3])
    except sqlite3.OperationalError:
        raise  # cannot read or write it (permissions, a read-only directory): not damage
    except sqlite3.DatabaseError as exc:  # not a database, a damaged header
        verdict = str(exc)
    if verdict != "ok":
        raise JournalError(
            f"the {what} {path} is damaged ({verdict[:200]}): move it aside, e.g. "
            f"mv {path} {path}.damaged, and start again (a new, empty one is created; the "
            "service never deletes data)"
        )


def probe_write(db: sqlite3.Connection, path: Path, what: str) -> None:
    """Raise :class:`JournalError` if ``db`` cannot be written (a read-only file or
    directory): a write in a transaction that is rolled back."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE write_probe (x INTEGER)")
        finally:
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise JournalError(
            f"the {what} {path} cannot be written ({exc}): make APPRENTICE_STATE_DIR and the "
            "files in it writable by this user, or point APPRENTICE_STATE_DIR elsewhere"
        ) from None


class DuplicateFill(JournalError):
    """This (account, symbol, candle_start) already has a fill."""


@dataclass(frozen=True, slots=True)
class EquityPoint:
    """The account's equity after one live candle of ``symbol`` closed at ``close``."""

    symbol: str
    candle_start: int
    close: float
    equity: float


@dataclass(frozen=True, slots=True)
class CurveState:
    """What a restart needs beyond the fills: the newest equity points (oldest first), the
    peak equity over all of them, and each symbol's latest close (its mark)."""

    points: list[EquityPoint]
    peak: float | None
    marks: dict[str, float]
    firsts: dict[str, float] = field(default_factory=dict)  # each symbol's first live close


@dataclass(frozen=True, slots=True)
class AccountTerms:
    """An account's fixed terms, as journaled when it was opened."""

    epoch: int
    initial_usdt: float
    notional_usdt: float
    fee_bps: float
    slippage_bps: float
    created_ms: int


class Journal:
    """SQLite journal at ``state_dir/paper.sqlite3``; open with :meth:`open` (blocking)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / JOURNAL_FILE
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None  # made on first use: no thread yet
        self._reader: sqlite3.Connection | None = None  # used on the reader thread only
        self._read_executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The journal's one worker thread (recreated after a close, e.g. a second lifespan)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        return self._executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the journal's thread and await it."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the reader thread (its own connection) and await it."""
        if self._read_executor is None:
            self._read_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="journal-read"
            )
        return await asyncio.get_running_loop().run_in_executor(self._read_executor, fn, *args)

    async def aclose(self) -> None:
        """Close on the journal threads (after any in-flight write), then stop them."""
        if self._read_executor is not None:
            reader, self._read_executor = self._read_executor, None
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            await asyncio.to_thread(reader.shutdown, True)
        if self._executor is None:
            return
        await self.call(self._close_db)
        executor, self._executor = self._executor, None
        await asyncio.to_thread(executor.shutdown, True)

    # ------------------------------------------------------------------ blocking API
    def open(self) -> None:
        """Create the directory, the file and the schema; WAL + synchronous=FULL.

        Refuses (:class:`JournalError`, naming the file and what to do) a file that is not a
        sound SQLite database (``PRAGMA quick_check``) and one that cannot be written (a
        rolled-back write probe): either would otherwise start a service that fails later,
        on every fill. The service never moves or deletes a journal itself.
        """
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            check_sqlite(db, self.path, "paper journal")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            probe_write(db, self.path, "paper journal")
        except (OSError, sqlite3.Error, JournalError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(
                f"cannot open the paper journal {self.path}: {exc}; make "
                "APPRENTICE_STATE_DIR and the files in it writable by this user"
            ) from None
        self._db = db

    def close(self) -> None:
        """Blocking close for scripts; not from the journal thread or a running event loop."""
        if self._read_executor is not None:
            reader, self._read_executor = self._read_executor, None
            reader.submit(self._close_reader).result()
            reader.shutdown(wait=True)
        if self._executor is None:
            self._close_db()
            return
        executor, self._executor = self._executor, None
        executor.submit(self._close_db).result()
        executor.shutdown(wait=True)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> sqlite3.Connection:
        """The query-only connection of the reader thread (opened on first use)."""
        if self._reader is None:
            if self._db is None:
                raise JournalError(f"journal {self.path} is not open")
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA query_only=ON")
            db.execute("PRAGMA busy_timeout=5000")
            self._reader = db
        return self._reader

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"journal {self.path} is not open")
        return self._db

    def current_account(
        self, initial_usdt: float, notional_usdt: float, fee_bps: float, slippage_bps: float
    ) -> AccountTerms:
        """The newest account, or a new one with these terms if the journal is empty."""
        row = self.db.execute("SELECT * FROM accounts ORDER BY epoch DESC LIMIT 1").fetchone()
        if row is None:
            return self.new_account(initial_usdt, notional_usdt, fee_bps, slippage_bps)
        return AccountTerms(*row)

    def new_account(
        self, initial_usdt: float, notional_usdt: float, fee_bps: float, slippage_bps: float
    ) -> AccountTerms:
        """Open a fresh account (the next epoch); committed before it is returned."""
        now = int(time.time() * 1000)
        cur = self.db.execute(
            "INSERT INTO accounts (initial_usdt, notional_usdt, fee_bps, slippage_bps, "
            "created_ms) VALUES (?, ?, ?, ?, ?)",
            (initial_usdt, notional_usdt, fee_bps, slippage_bps, now),
        )
        epoch = cur.lastrowid
        assert epoch is not None
        return AccountTerms(epoch, initial_usdt, notional_usdt, fee_bps, slippage_bps, now)

    def insert_fill(self, epoch: int, fill: Fill) -> int:
        """Journal one fill and commit it (autocommit); returns its row id.

        Raises :class:`DuplicateFill` if the candle already traded in this account.
        """
        values = astuple(fill)
        try:
            cur = self.db.execute(
                f"INSERT INTO fills (epoch, {', '.join(_FILL_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(_FILL_COLUMNS))})",
                (epoch, *values),
            )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise DuplicateFill(
                    f"{fill.symbol} candle {fill.candle_start} already traded in account {epoch}"
                ) from None
            raise
        rowid = cur.lastrowid
        assert rowid is not None
        return rowid

    def fills(
        self,
        epoch: int,
        *,
        symbol: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Fill]:
        """Fills of one account (optionally one symbol), in journal order or newest first."""
        sql = f"SELECT {', '.join(_FILL_COLUMNS)} FROM fills WHERE epoch = ?"
        args: list[Any] = [epoch]
        if symbol is not None:
            sql += " AND symbol = ?"
            args.append(symbol)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Fill(*row) for row in self.db.execute(sql, args)]

    def insert_points(self, points: Sequence[tuple[int, EquityPoint]]) -> None:
        """Journal (epoch, equity point) pairs in one transaction: the curve survives a
        restart, at one commit per burst of candles."""
        with self.db:  # BEGIN ... COMMIT (the connection autocommits otherwise)
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO equity_points (epoch, symbol, candle_start, close, equity) "
                "VALUES (?, ?, ?, ?, ?)",
                [(e, p.symbol, p.candle_start, p.close, p.equity) for e, p in points],
            )

    def curve_state(self, epoch: int, limit: int) -> CurveState:
        """The newest ``limit`` points of an account, its peak and its symbols' last closes."""
        rows = self.db.execute(
            "SELECT symbol, candle_start, close, equity FROM equity_points WHERE epoch = ? "
            "ORDER BY id DESC LIMIT ?",
            (epoch, limit),
        ).fetchall()
        (peak,) = self.db.execute(
            "SELECT MAX(equity) FROM equity_points WHERE epoch = ?", (epoch,)
        ).fetchone()
        marks = dict(
            self.db.execute(
                "SELECT symbol, close FROM equity_points WHERE id IN "
                "(SELECT MAX(id) FROM equity_points WHERE epoch = ? GROUP BY symbol)",
                (epoch,),
            ).fetchall()
        )
        firsts = dict(
            self.db.execute(
                "SELECT symbol, close FROM equity_points WHERE id IN "
                "(SELECT MIN(id) FROM equity_points WHERE epoch = ? GROUP BY symbol)",
                (epoch,),
            ).fetchall()
        )
        points = [EquityPoint(*r) for r in reversed(rows)]
        return CurveState(points, None if peak is None else float(peak), marks, firsts)

    def fills_page(self, epoch: int, symbol: str | None, limit: int) -> list[Fill]:
        """The newest ``limit`` fills of one account (optionally one symbol), newest first."""
        return self.fills(epoch, symbol=symbol, limit=limit, newest_first=True)

    def count_fills(self, epoch: int, symbol: str | None = None) -> int:
        """Number of fills in one account (optionally one symbol)."""
        return _count(self.db, epoch, symbol)

    def trades_json(self, epoch: int, symbol: str | None, limit: int) -> bytes:
        """``{"account", "total", "trades"}`` as JSON (the API's ``TradesOut``): the newest
        ``limit`` fills of one account (optionally one symbol), newest first, and how many
        match the same filter, read in one snapshot. Reader thread only."""
        db = self.reader
        sql = f"SELECT {', '.join(_FILL_COLUMNS)} FROM fills WHERE epoch = ?"
        args: list[Any] = [epoch]
        if symbol is not None:
            sql += " AND symbol = ?"
            args.append(symbol)
        db.execute("BEGIN")  # the count and the page from one snapshot
        try:
            total = _count(db, epoch, symbol)
            rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        finally:
            db.execute("COMMIT")
        chunks = [
            orjson.dumps([Fill(*r) for r in rows[i : i + JSON_CHUNK]])[1:-1]
            for i in range(0, len(rows), JSON_CHUNK)
        ]
        head = b'{"account":%d,"total":%d,"trades":[' % (epoch, total)
        return head + b",".join(chunks) + b"]}"


def _count(db: sqlite3.Connection, epoch: int, symbol: str | None) -> int:
    if symbol is None:
        row = db.execute("SELECT COUNT(*) FROM fills WHERE epoch = ?", (epoch,)).fetchone()
    else:
        row = db.execute(
            "SELECT COUNT(*) FROM fills WHERE epoch = ? AND symbol = ?", (epoch, symbol)
        ).fetchone()
    return int(row[0])
