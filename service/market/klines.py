"""Klines: the one typed kline record and the columnar kline table.

Pure code (numpy + stdlib): training imports it, the service parses live data into it.
Reading the bundled CSV files, validating them and resampling live in ``kline_io``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

MINUTE_MS = 60_000
_INTERVAL_MINUTES = {
    "1": 1,
    "3": 3,
    "5": 5,
    "15": 15,
    "30": 30,
    "60": 60,
    "120": 120,
    "240": 240,
    "360": 360,
    "720": 720,
    "D": 1440,
    "W": 10080,
}
VALID_INTERVALS = tuple(_INTERVAL_MINUTES)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class KlineError(ValueError):
    """Kline data that breaks a rule; the message names the file, row and rule."""


def interval_ms(interval: str) -> int:
    """Length of a Bybit interval ("1", "5", "60", "D", "W") in milliseconds."""
    try:
        return _INTERVAL_MINUTES[interval] * MINUTE_MS
    except KeyError:
        raise KlineError(
            f"unsupported interval {interval!r}; use one of {', '.join(VALID_INTERVALS)}"
        ) from None


class Candle(Protocol):
    """Anything with a candle's fields: a :class:`Kline`, or a journaled row of one."""

    @property
    def start(self) -> int: ...
    @property
    def open(self) -> float: ...
    @property
    def high(self) -> float: ...
    @property
    def low(self) -> float: ...
    @property
    def close(self) -> float: ...
    @property
    def volume(self) -> float: ...
    @property
    def turnover(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Kline:
    """One candle. ``start`` is the candle open time in ms UTC, aligned to the interval."""

    symbol: str
    interval: str
    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float | None = None
    confirm: bool = True

    @property
    def end(self) -> int:
        """Last millisecond of the candle (Bybit's ``end``)."""
        return self.start + interval_ms(self.interval) - 1


@dataclass(frozen=True, slots=True)
class KlineEvent:
    """A kline as the feed delivers it, with both clocks.

    ``exchange_ts`` is the exchange's ``ts`` (ms, exchange/replay clock: used for candle
    closure decisions); ``received_ns`` is ``time.perf_counter_ns()`` when the frame was read
    from the socket (local clock: used for latency and staleness); ``source`` is "ws" or "rest".
    """

    kline: Kline
    exchange_ts: int
    received_ns: int
    source: str = "ws"


@dataclass(frozen=True)
class KlineTable:
    """Columnar klines of one symbol and interval, sorted by ``start``.

    Arrays all have shape (N,); ``turnover`` is NaN where the source had none.
    """

    symbol: str
    interval: str
    start: I64
    open: F64
    high: F64
    low: F64
    close: F64
    volume: F64
    turnover: F64

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def slice(self, lo: int | None = None, hi: int | None = None) -> KlineTable:
        """Rows ``lo:hi`` as a new table (views, no copy)."""
        s = slice(lo, hi)
        return KlineTable(
            self.symbol,
            self.interval,
            self.start[s],
            self.open[s],
            self.high[s],
            self.low[s],
            self.close[s],
            self.volume[s],
            self.turnover[s],
        )

    def between(self, start_ms: int, end_ms: int) -> KlineTable:
        """Rows whose start lies in [start_ms, end_ms] (inclusive, like Bybit's REST bounds)."""
        lo = int(np.searchsorted(self.start, start_ms, side="left"))
        hi = int(np.searchsorted(self.start, end_ms, side="right"))
        return self.slice(lo, hi)

    def row(self, i: int) -> Kline:
        """Row ``i`` as a confirmed :class:`Kline`."""
        t = float(self.turnover[i])
        return Kline(
            symbol=self.symbol,
            interval=self.interval,
            start=int(self.start[i]),
            open=float(self.open[i]),
            high=float(self.high[i]),
            low=float(self.low[i]),
            close=float(self.close[i]),
            volume=float(self.volume[i]),
            turnover=None if np.isnan(t) else t,
            confirm=True,
        )

    def klines(self) -> list[Kline]:
        """All rows as :class:`Kline` records."""
        return [self.row(i) for i in range(len(self))]

    @classmethod
    def from_klines(cls, symbol: str, interval: str, rows: Sequence[Candle]) -> KlineTable:
        """Build a table from records (kept in the given order)."""
        return cls(
            symbol=symbol,
            interval=interval,
            start=np.array([k.start for k in rows], dtype=np.int64),
            open=np.array([k.open for k in rows], dtype=np.float64),
            high=np.array([k.high for k in rows], dtype=np.float64),
            low=np.array([k.low for k in rows], dtype=np.float64),
            close=np.array([k.close for k in rows], dtype=np.float64),
            volume=np.array([k.volume for k in rows], dtype=np.float64),
            turnover=np.array(
                [np.nan if k.turnover is None else k.turnover for k in rows], dtype=np.float64
            ),
        )
