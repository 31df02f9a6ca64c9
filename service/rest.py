"""Bybit ``GET /v5/market/kline`` through pybit's HTTP client: backfill and history.

pybit is synchronous (``requests``), so each request runs in a worker thread
(``asyncio.to_thread``) and the retry waits are ``asyncio.sleep`` — cancellable, never on
the event loop. Facts from ../shared/reference/bybit-v5-public.md section 5: rows are 7
strings, newest first, and the newest row may be the still-open candle (dropped here using
the server's ``time``); errors come as HTTP 200 with ``retCode`` ≠ 0.

Error policy: ``retCode`` 10001/10029 (bad symbol or interval) → :class:`ConfigError`, never
retried; HTTP 429/5xx, network errors and ``retCode`` 10000/10002/10006/10016 → retried with
backoff, then :class:`RestError`; HTTP 403 (IP ban or geo block) → :class:`RestForbidden`
at once, so the caller stops REST traffic for minutes.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP

from service.bybit import MAINNET_REST_URL
from service.klines import Kline, interval_ms

MAX_LIMIT = 1000
CONFIG_CODES = frozenset({10001, 10029})  # parameter error / symbol invalid: fix the config
RETRY_CODES = frozenset({10000, 10002, 10006, 10016})  # timeouts, server errors, rate limits


class Backoff:
    """Exponential backoff with jitter: ``initial · factor^n`` capped at ``max_s``, ±``jitter``.

    Injectable so tests reconnect in milliseconds; :meth:`reset` after a healthy period.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s < 0 or max_s < initial_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("Backoff needs 0 <= initial_s <= max_s, factor >= 1, 0 <= jitter < 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (grows until :meth:`reset`)."""
        base = min(self.max_s, self.initial_s * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Back to the initial delay."""
        self.attempt = 0


class RestError(RuntimeError):
    """A kline request failed; ``retryable`` says whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ConfigError(RestError):
    """The exchange refused the symbol or interval: refuse to start, do not retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class RestForbidden(RestError):
    """HTTP 403: IP rate-limit ban or geo block; stop REST traffic for at least 10 minutes."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True, slots=True)
class KlinePage:
    """One parsed response: closed candles oldest first, the server time, the oldest start."""

    klines: list[Kline]
    server_time: int
    oldest_start: int | None


def _decimal(cell: Any, what: str) -> float:
    if not isinstance(cell, str):
        raise RestError(f"{what} must be a string, got {cell!r}", retryable=False)
    try:
        x = float(cell)
    except ValueError:
        raise RestError(f"{what} is not a number: {cell!r}", retryable=False) from None
    if not math.isfinite(x) or x < 0:
        raise RestError(f"{what} out of range: {cell!r}", retryable=False)
    return x


def parse_kline_page(symbol: str, interval: str, payload: dict[str, Any]) -> KlinePage:
    """Parse a successful envelope; drop the open candle (``start + interval > time``)."""
    step = interval_ms(interval)
    server_time = payload.get("time")
    rows = (payload.get("result") or {}).get("list")
    if not isinstance(server_time, int) or not isinstance(rows, list):
        raise RestError(
            "kline response lacks an integer 'time' or a 'result.list'", retryable=False
        )
    klines: list[Kline] = []
    oldest: int | None = None
    for row in rows:
        if not isinstance(row, list) or len(row) < 6:
            raise RestError(f"kline row has the wrong shape: {row!r}", retryable=False)
        if not isinstance(row[0], str) or not row[0].isdigit():
            raise RestError(f"kline start must be a digit string, got {row[0]!r}", retryable=False)
        start = int(row[0])
        oldest = start if oldest is None else min(oldest, start)
        if start + step > server_time:  # still open: REST has no confirm flag
            continue
        o, h, lo, c, v = (
            _decimal(row[i], name)
            for i, name in enumerate(("open", "high", "low", "close", "volume"), 1)
        )
        turnover = _decimal(row[6], "turnover") if len(row) > 6 else None
        klines.append(Kline(symbol, interval, start, o, h, lo, c, v, turnover, True))
    klines.sort(key=lambda k: k.start)
    return KlinePage(klines, server_time, oldest)


def windows(
    start_ms: int, end_ms: int, step_ms: int, limit: int = MAX_LIMIT
) -> list[tuple[int, int]]:
    """Request windows of at most ``limit`` candles covering [start_ms, end_ms] (inclusive).

    Bounded windows sidestep the undocumented page anchoring when a range holds more rows.
    """
    first = -(-start_ms // step_ms) * step_ms  # round up onto the grid
    out: list[tuple[int, int]] = []
    s = first
    while s <= end_ms:
        e = min(s + (limit - 1) * step_ms, end_ms)
        out.append((s, e))
        s += limit * step_ms
    return out


class RestKlines:
    """Kline history from Bybit (or the replay exchange) at ``base_url``; no I/O on init."""

    def __init__(
        self,
        base_url: str = MAINNET_REST_URL,
        *,
        category: str = "linear",
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff: Callable[[], Backoff] | None = None,
        limit: int = MAX_LIMIT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.category = category
        self.max_attempts = max_attempts
        self.limit = max(1, min(limit, MAX_LIMIT))
        self._backoff = backoff or (lambda: Backoff(initial_s=0.5, max_s=8.0))
        # pybit retries some retCodes with blocking sleeps; a code that never occurs turns
        # that off so every retry decision (and wait) is ours and cancellable.
        self._http = HTTP(testnet=False, timeout=timeout_s, max_retries=1, retry_codes={-1})
        self._http.endpoint = self.base_url  # read at call time (reference §5.5)
        self._lock = threading.Lock()  # one requests.Session shared by worker threads
        self.requests_made = 0

    def _call(self, params: dict[str, Any]) -> dict[str, Any]:
        """One blocking request; pybit/requests errors mapped onto the policy above."""
        what = f"{params.get('symbol')} interval {params.get('interval')}"
        try:
            with self._lock:
                self.requests_made += 1
                resp = self._http.get_kline(category=self.category, **params)
        except InvalidRequestError as e:
            code = int(e.status_code)
            if code in CONFIG_CODES:
                raise ConfigError(f"Bybit refused {what}: {e.message} (retCode {code})") from None
            raise RestError(
                f"{what}: {e.message} (retCode {code})", retryable=code in RETRY_CODES
            ) from None
        except FailedRequestError as e:
            status = int(e.status_code)
            if status == 403:
                raise RestForbidden(f"{what}: HTTP 403 ({e.message})") from None
            retry = status == 429 or status >= 500 or status == 409  # 409: pybit's JSON error
            raise RestError(f"{what}: HTTP {status}", retryable=retry) from None
        except requests.RequestException as e:
            raise RestError(f"{what}: {type(e).__name__}: {e}", retryable=True) from None
        if not isinstance(resp, dict):
            raise RestError(f"{what}: unexpected response {type(resp).__name__}", retryable=False)
        return resp

    async def _request(self, params: dict[str, Any]) -> dict[str, Any]:
        backoff = self._backoff()
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await asyncio.to_thread(self._call, params)
            except RestError as e:
                if not e.retryable or attempt == self.max_attempts:
                    raise
                await asyncio.sleep(backoff.next_delay())
        raise AssertionError("unreachable")

    async def fetch_range(
        self, symbol: str, interval: str, start_ms: int, end_ms: int
    ) -> list[Kline]:
        """Closed candles with start in [start_ms, end_ms], oldest first, no duplicates."""
        step = interval_ms(interval)
        got: dict[int, Kline] = {}
        for lo, hi in windows(start_ms, end_ms, step, self.limit):
            payload = await self._request(
                {
                    "symbol": symbol,
                    "interval": interval,
                    "start": lo,
                    "end": hi,
                    "limit": self.limit,
                }
            )
            page = parse_kline_page(symbol, interval, payload)
            got.update((k.start, k) for k in page.klines if lo <= k.start <= hi)
            if page.server_time < hi:  # the rest of the range is in the future
                break
        return [got[s] for s in sorted(got)]

    async def fetch_latest(self, symbol: str, interval: str, n: int) -> list[Kline]:
        """The newest ``n`` closed candles, oldest first (fewer if the exchange has fewer)."""
        step = interval_ms(interval)
        got: dict[int, Kline] = {}
        end: int | None = None
        while len(got) < n:
            want = min(self.limit, n - len(got) + 1)  # +1: the newest row may be open
            payload = await self._request(
                {"symbol": symbol, "interval": interval, "end": end, "limit": want}
            )
            page = parse_kline_page(symbol, interval, payload)
            if page.oldest_start is None:
                break
            got.update((k.start, k) for k in page.klines)
            if end is not None and page.oldest_start - step >= end:
                break  # the server ignored ``end``: stop rather than loop
            end = page.oldest_start - step
        return [got[s] for s in sorted(got)][-n:] if n > 0 else []

    def fetch_range_sync(
        self, symbol: str, interval: str, start_ms: int, end_ms: int
    ) -> list[Kline]:
        """Blocking :meth:`fetch_range` for scripts (not from inside a running event loop)."""
        return asyncio.run(self.fetch_range(symbol, interval, start_ms, end_ms))

    def fetch_latest_sync(self, symbol: str, interval: str, n: int) -> list[Kline]:
        """Blocking :meth:`fetch_latest` for scripts."""
        return asyncio.run(self.fetch_latest(symbol, interval, n))
