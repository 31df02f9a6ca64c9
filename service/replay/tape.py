"""The replay's market: bundled klines on a virtual clock, encoded the way Bybit sends them.

A :class:`Tape` holds one symbol's real klines. The open candle at virtual time ``t`` is
synthesised from the real one (open fixed, close moving linearly towards the real close,
volume growing), so interim pushes and the REST open row look live while every closed candle
is exactly the bundled row — on the websocket and on REST alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

import numpy as np

from service.market.klines import Kline, KlineTable, interval_ms


def decimal_str(x: float) -> str:
    """Plain decimal text that parses back to exactly ``x`` (no exponent, like Bybit)."""
    text = format(Decimal(repr(float(x))), "f")
    return text.removesuffix(".0") if "." in text else text


class VirtualClock:
    """Exchange time in ms: ``start_ms`` at creation, advancing ``speed`` × real time."""

    def __init__(
        self, start_ms: int, speed: float, now: Callable[[], float] = time.monotonic
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive (virtual seconds per real second)")
        self.start_ms = start_ms
        self.speed = speed
        self._now = now
        self._t0 = now()

    def now_ms(self) -> int:
        """The current virtual time."""
        return self.start_ms + int((self._now() - self._t0) * self.speed * 1000)

    def real_delay(self, virtual_ms: int) -> float:
        """Real seconds until the clock reaches ``virtual_ms`` (0 if already past)."""
        return max(0.0, (virtual_ms - self.now_ms()) / (self.speed * 1000))


class Tape:
    """One symbol's bundled klines, read as the exchange would serve them at time ``t``."""

    def __init__(self, table: KlineTable) -> None:
        self.table = table
        self.symbol = table.symbol
        self.interval = table.interval
        self.step = interval_ms(table.interval)

    def index(self, start: int) -> int | None:
        """Row index of the candle starting at ``start``, if the tape has it."""
        i = int(np.searchsorted(self.table.start, start))
        if i < len(self.table) and int(self.table.start[i]) == start:
            return i
        return None

    def closed(self, start: int) -> Kline | None:
        """The real (closed) candle at ``start``."""
        i = self.index(start)
        if i is None:
            return None
        k = self.table.row(i)
        if k.turnover is None:  # the bundle has no turnover: serve volume × close, fixed once
            k = replace(k, turnover=round(k.volume * k.close, 8))
        return k

    def partial(self, start: int, at_ms: int) -> Kline | None:
        """The candle at ``start`` as it looked, still open, at virtual time ``at_ms``."""
        k = self.closed(start)
        if k is None:
            return None
        frac = min(1.0, max(0.0, (at_ms - start) / self.step))
        # clamp into the final candle's range so the partial OHLC stays consistent
        close = min(k.high, max(k.low, round(k.open + frac * (k.close - k.open), 10)))
        high = max(k.open, close)
        low = min(k.open, close)
        volume = round(k.volume * frac, 10)
        turnover = round((k.turnover or 0.0) * frac, 8)
        return Kline(k.symbol, k.interval, start, k.open, high, low, close, volume, turnover, False)

    def rest_rows(
        self, now_ms: int, start: int | None, end: int | None, limit: int
    ) -> list[list[str]]:
        """``GET /v5/market/kline`` rows: newest first, open candle included, inclusive bounds.

        With only ``start`` the page is anchored at ``start`` (pybit #186); otherwise at the
        newest row not after ``end`` (or now).
        """
        t = self.table
        lo = 0 if start is None else int(np.searchsorted(t.start, start, side="left"))
        newest_open = now_ms if end is None else min(end, now_ms)
        hi = int(np.searchsorted(t.start, newest_open, side="right"))  # rows with start <= it
        if hi <= lo:
            return []
        if start is not None and end is None:
            hi = min(hi, lo + limit)
        else:
            lo = max(lo, hi - limit)
        rows: list[list[str]] = []
        for i in range(hi - 1, lo - 1, -1):
            s = int(t.start[i])
            k = self.closed(s) if s + self.step <= now_ms else self.partial(s, now_ms)
            assert k is not None
            rows.append(rest_row(k))
        return rows


def rest_row(k: Kline) -> list[str]:
    """``[start, open, high, low, close, volume, turnover]`` as 7 strings."""
    turnover = k.turnover if k.turnover is not None else round(k.volume * k.close, 8)
    return [
        str(k.start),
        decimal_str(k.open),
        decimal_str(k.high),
        decimal_str(k.low),
        decimal_str(k.close),
        decimal_str(k.volume),
        decimal_str(turnover),
    ]


def ws_item(k: Kline, last_trade_ms: int) -> dict[str, object]:
    """One element of a kline push's ``data`` (integer ms times, string prices)."""
    step = interval_ms(k.interval)
    row = rest_row(k)
    return {
        "start": k.start,
        "end": k.start + step - 1,
        "interval": k.interval,
        "open": row[1],
        "close": row[4],
        "high": row[2],
        "low": row[3],
        "volume": row[5],
        "turnover": row[6],
        "confirm": k.confirm,
        "timestamp": last_trade_ms,
    }


def push_frame(topic: str, items: list[dict[str, object]], ts: int) -> str:
    """A compact ``{"topic","data","ts","type":"snapshot"}`` text frame."""
    return json.dumps(
        {"topic": topic, "data": items, "ts": ts, "type": "snapshot"}, separators=(",", ":")
    )
