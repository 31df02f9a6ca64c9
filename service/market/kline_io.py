"""Kline files: read both bundled CSV layouts, validate, report gaps, resample, write.

Layouts in the bundle (see data/bybit/PROVENANCE.md):
  * ``timestamp,open,high,low,close,volume`` with ISO-8601 UTC candle starts;
  * ``timestamp,datetime,open,high,low,close,volume`` with epoch-ms starts (``datetime`` is the
    author's local time and is ignored);
  * ``timestamp,open,high,low,close,volume,turnover,date`` (epoch ms, with turnover).
The CSV this module writes is ``timestamp,open,high,low,close,volume,turnover`` in epoch ms.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from service.market.klines import KlineError, KlineTable, interval_ms

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "bybit"
_NAME = re.compile(r"bybit_linear_(?P<symbol>[A-Z0-9]+)_(?P<interval>\d+m|1d)_")
_PRICE_COLS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing bars between two consecutive rows: starts ``after`` and ``before`` are present."""

    after: int
    before: int
    missing: int


def _interval_from_name(token: str) -> str:
    return "D" if token == "1d" else token.removesuffix("m")


def bundled_path(symbol: str, interval: str, data_dir: Path = DATA_DIR) -> Path:
    """The bundled file for (symbol, interval) — the earliest one if there are several."""
    token = "1d" if interval == "D" else f"{interval}m"
    matches = sorted(data_dir.glob(f"bybit_linear_{symbol}_{token}_*.csv.gz"))
    if not matches:
        have = ", ".join(sorted(p.name for p in data_dir.glob("*.csv.gz"))) or "none"
        raise FileNotFoundError(
            f"no bundled klines for {symbol} {token} in {data_dir} (have: {have})"
        )
    return matches[0]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _parse_ts(text: str, path: Path, row: int) -> int:
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise KlineError(
            f"{path}: row {row}: timestamp {text!r} is neither epoch ms nor ISO-8601"
        ) from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise KlineError(f"{path}: row {row}: timestamp {text!r} has no UTC offset")
    return int(dt.timestamp() * 1000)


def load_klines(
    path: str | Path,
    *,
    symbol: str | None = None,
    interval: str | None = None,
    drop_last_unconfirmed: bool = False,
) -> KlineTable:
    """Read a kline CSV (optionally gzip) into a validated :class:`KlineTable`.

    ``symbol`` and ``interval`` default to what the bundle's file name says. With
    ``drop_last_unconfirmed`` the final row is dropped: files fetched "up to now" end with a
    candle that was still open (PROVENANCE.md). A row repeated byte for byte right after
    itself is read once (the daily files repeat one day at a page boundary); any other
    duplicate start is an error, and nothing else is ever dropped.
    """
    path = Path(path)
    m = _NAME.search(path.name)
    symbol = symbol or (m["symbol"] if m else None)
    interval = interval or (_interval_from_name(m["interval"]) if m else None)
    if symbol is None or interval is None:
        raise KlineError(
            f"{path}: cannot infer symbol/interval from the name; pass them explicitly"
        )
    step = interval_ms(interval)
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise KlineError(f"{path}: empty file")
        cols = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in ("timestamp", *_PRICE_COLS) if c not in cols]
        if missing:
            raise KlineError(f"{path}: row 1 (header): missing column(s) {', '.join(missing)}")
        idx = [cols[c] for c in _PRICE_COLS]
        t_idx = cols.get("turnover")
        starts: list[int] = []
        values: list[list[float]] = []
        turnover: list[float] = []
        previous: list[str] = []
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if row == previous:
                continue  # an identical repeated row (a page-boundary overlap): one candle
            previous = row
            try:
                starts.append(_parse_ts(row[cols["timestamp"]].strip(), path, row_no))
                values.append([float(row[i]) for i in idx])
                cell = row[t_idx].strip() if t_idx is not None else ""
                turnover.append(float(cell) if cell else np.nan)
            except (IndexError, ValueError) as exc:
                if isinstance(exc, KlineError):
                    raise
                raise KlineError(f"{path}: row {row_no}: unparsable row {row!r} ({exc})") from None
    if drop_last_unconfirmed and starts:
        starts.pop()
        values.pop()
        turnover.pop()
    arr = np.array(values, dtype=np.float64).reshape(-1, 5)
    table = KlineTable(
        symbol=symbol,
        interval=interval,
        start=np.array(starts, dtype=np.int64),
        open=arr[:, 0].copy(),
        high=arr[:, 1].copy(),
        low=arr[:, 2].copy(),
        close=arr[:, 3].copy(),
        volume=arr[:, 4].copy(),
        turnover=np.array(turnover, dtype=np.float64),
    )
    validate_table(table, source=str(path), step_ms=step)
    return table


def load_bundled(symbol: str, interval: str, data_dir: Path = DATA_DIR) -> KlineTable:
    """The bundled klines for (symbol, interval), trailing open candle dropped."""
    return load_klines(bundled_path(symbol, interval, data_dir), drop_last_unconfirmed=True)


def validate_table(
    table: KlineTable, *, source: str = "klines", step_ms: int | None = None
) -> None:
    """Raise :class:`KlineError` naming the source, row (1-based data row + header) and rule.

    Rules: sorted, unique, on the interval grid, positive prices, non-negative volume,
    high ≥ max(open, close), low ≤ min(open, close), high ≥ low, no NaN. Gaps are allowed
    (see :func:`find_gaps`) — missing bars are reported, not invented.
    """
    step = step_ms if step_ms is not None else interval_ms(table.interval)

    def fail(i: int, rule: str) -> None:
        raise KlineError(f"{source}: row {int(i) + 2}: {rule}")

    s = table.start
    if s.size == 0:
        return
    d = np.diff(s)
    if (bad := np.flatnonzero(d == 0)).size:
        fail(bad[0] + 1, f"duplicate timestamp {int(s[bad[0] + 1])}")
    if (bad := np.flatnonzero(d < 0)).size:
        fail(bad[0] + 1, f"not sorted: {int(s[bad[0] + 1])} after {int(s[bad[0]])}")
    if step <= 7 * 86_400_000 and (bad := np.flatnonzero(s % step != 0)).size:
        fail(bad[0], f"start {int(s[bad[0]])} is off the {table.interval} grid")
    o, h, lo, c, v = table.open, table.high, table.low, table.close, table.volume
    for name, col in (("open", o), ("high", h), ("low", lo), ("close", c), ("volume", v)):
        if (bad := np.flatnonzero(~np.isfinite(col))).size:
            fail(bad[0], f"{name} is not a finite number")
    if (bad := np.flatnonzero((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0))).size:
        fail(bad[0], "prices must be positive")
    if (bad := np.flatnonzero(v < 0)).size:
        fail(bad[0], "volume must not be negative")
    if (bad := np.flatnonzero(h < lo)).size:
        fail(bad[0], "high < low")
    if (bad := np.flatnonzero(h < np.maximum(o, c))).size:
        fail(bad[0], "high < max(open, close)")
    if (bad := np.flatnonzero(lo > np.minimum(o, c))).size:
        fail(bad[0], "low > min(open, close)")


def find_gaps(table: KlineTable) -> list[Gap]:
    """Every run of missing bars between consecutive rows."""
    step = interval_ms(table.interval)
    d = np.diff(table.start)
    return [
        Gap(
            after=int(table.start[i]), before=int(table.start[i + 1]), missing=int(d[i] // step - 1)
        )
        for i in np.flatnonzero(d > step)
    ]


def resample(table: KlineTable, interval: str) -> KlineTable:
    """Aggregate to a coarser interval exactly: first open, max high, min low, last close, sums.

    Only complete buckets (every constituent bar present) are emitted; partial buckets at the
    edges or around gaps are dropped rather than invented.
    """
    src, dst = interval_ms(table.interval), interval_ms(interval)
    if dst % src != 0 or dst <= src:
        raise KlineError(f"cannot resample {table.interval} to {interval}: not a coarser multiple")
    k = dst // src
    bucket = table.start - table.start % dst
    uniq, first, counts = np.unique(bucket, return_index=True, return_counts=True)
    keep = counts == k
    first = first[keep]
    if first.size == 0:
        empty = np.zeros(0)
        return KlineTable(table.symbol, interval, np.zeros(0, np.int64), *(empty,) * 6)
    rows = first[:, None] + np.arange(k)[None, :]  # (M, k) row indices of each full bucket
    turn = table.turnover[rows]
    return KlineTable(
        symbol=table.symbol,
        interval=interval,
        start=uniq[keep].astype(np.int64),
        open=table.open[first],
        high=table.high[rows].max(axis=1),
        low=table.low[rows].min(axis=1),
        close=table.close[rows[:, -1]],
        volume=table.volume[rows].sum(axis=1),
        turnover=turn.sum(axis=1),
    )


def write_klines_csv(table: KlineTable, path: str | Path) -> Path:
    """Write ``timestamp,open,high,low,close,volume,turnover`` (epoch ms); gzip if *.gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "open", "high", "low", "close", "volume", "turnover"])
        for i in range(len(table)):
            t = table.turnover[i]
            w.writerow(
                [
                    int(table.start[i]),
                    repr(float(table.open[i])),
                    repr(float(table.high[i])),
                    repr(float(table.low[i])),
                    repr(float(table.close[i])),
                    repr(float(table.volume[i])),
                    "" if np.isnan(t) else repr(float(t)),
                ]
            )
    return path
