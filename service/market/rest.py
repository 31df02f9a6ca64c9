"""Bybit ``GET /v5/market/kline``: backfill and history, on a bounded HTTP client.

Each request is one :func:`service.market.http_get.get`: one total deadline (connect, head
and whole body), a cap on the bytes read and on the bytes inflated, cancellable at any await
(no worker thread; pybit's ``requests`` client had only a per-read timeout and no size cap,
so a trickling or bomb answer held the caller, a thread and gigabytes). Facts from
../shared/reference/bybit-v5-public.md section 5: rows are 7 strings, newest first, and the
newest row may be the still-open candle (dropped here using the server's ``time``); errors
come as HTTP 200 with ``retCode`` ≠ 0.

Every answer is classified once, here (:func:`classify`):
- ``retCode`` 10001/10029 (bad symbol or interval) → :class:`ConfigError`: at start-up the
  configuration is wrong; after start-up the feed treats it as that symbol being refused;
- HTTP 403 (IP ban or geo block) → :class:`RestForbidden` at once: stop REST for minutes;
- HTTP 429/5xx, network errors, deadlines, ``retCode`` 10000/10002/10006/10016 → retryable
  :class:`RestError`, retried with backoff inside one call, then raised;
- anything else (an HTML page, an envelope of the wrong shape, an oversized body, another
  ``retCode``) → a :class:`RestError` that is not retried inside the call.
No answer, however malformed, raises anything but a :class:`RestError`.

Rate: Bybit bans an IP that sends more than 600 requests in 5 s (HTTP 403, 10 minutes). With
a ``limiter`` (the service's: :func:`service.market.limits.rest_limiter`, one per process,
shared by every symbol's lane and clock probe) each attempt, retries included, first takes a
token; requests of different symbols still run at the same time, none waits for another's
answer, only for the bucket.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.market import http_get
from service.market.bybit import MAINNET_REST_URL, short
from service.market.klines import Kline, interval_ms
from service.market.limits import TokenBucket
from service.market.log_limit import LogLimit

log = logging.getLogger(__name__)
MAX_LIMIT = 1000
CONFIG_CODES = frozenset({10001, 10029})  # parameter error / symbol invalid: fix the config
# prices outside this band are no market's (DESIGN section 10: a REST row is held to the
# rules of a websocket confirm; these bounds catch a page that is absurd as a whole, such
# as every row at 1e300 or 1e-300, where no neighbour can serve as a reference)
MIN_PRICE, MAX_PRICE = 1e-8, 1e9
RETRY_CODES = frozenset({10000, 10002, 10006, 10016})  # timeouts, server errors, rate limits


class Backoff:
    """Exponential backoff with jitter: ``initial · factor^n`` capped at ``max_s``, ±``jitter``.

    The cap is applied step by step, before the next value is computed (``min(max_s,
    base · factor)``), never by raising ``factor`` to the number of attempts: after thousands
    of failures (an exchange outage of hours) the delay stays ``max_s`` and nothing overflows.
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
        if not (0 <= initial_s <= max_s and math.isfinite(max_s)) or not (
            1 <= factor < math.inf and 0 <= jitter < 1
        ):
            raise ValueError("Backoff needs 0 <= initial_s <= max_s, factor >= 1, 0 <= jitter < 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0
        self._base = initial_s

    def copy(self) -> Backoff:
        """A fresh backoff with the same parameters (and its own random generator)."""
        return Backoff(self.initial_s, self.max_s, self.factor, self.jitter)

    def next_delay(self) -> float:
        """The delay before the next attempt (grows until :meth:`reset`)."""
        base = self._base
        self._base = min(self.max_s, base * self.factor)
        self.attempt += 1
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Back to the initial delay."""
        self.attempt = 0
        self._base = self.initial_s


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
    """One parsed response: closed candles oldest first, the server time, the oldest start,
    and the reasons of any rows refused."""

    klines: list[Kline]
    server_time: int
    oldest_start: int | None
    rejected: list[str] = field(default_factory=list)


class RowError(ValueError):
    """One unusable REST row; ``reason`` is a bounded ``klines_rejected`` label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _decimal(cell: Any, what: str, *, positive: bool) -> float:
    if not isinstance(cell, str):
        raise RowError("bad_value", f"{what} must be a string, got {short(cell)}")
    try:
        x = float(cell)
    except ValueError:
        raise RowError("bad_value", f"{what} is not a number: {short(cell)}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise RowError("bad_price", f"{what} is not finite and positive: {short(cell)}")
    if positive and not MIN_PRICE <= x <= MAX_PRICE:
        raise RowError("implausible_price", f"{what} {short(cell)} is outside any market")
    if not positive and x > 1e18:
        raise RowError("bad_value", f"{what} {short(cell)} is absurd")
    return x


def _row(symbol: str, interval: str, step: int, row: Any) -> Kline:
    """One ``[start, open, high, low, close, volume, turnover]`` row, held to the same rules
    as a websocket kline (DESIGN section 10): finite positive prices, consistent OHLC, on grid."""
    if not isinstance(row, list) or len(row) < 6:
        raise RowError("bad_shape", f"kline row has the wrong shape: {short(row)}")
    if not isinstance(row[0], str) or not row[0].isdigit() or len(row[0]) > 19:
        raise RowError("bad_value", f"kline start must be a digit string, got {short(row[0])}")
    start = int(row[0])
    if start % step and interval != "W":
        raise RowError("off_grid", f"kline start {start} is not on the {interval} grid")
    o, h, lo, c = (
        _decimal(row[i], name, positive=True)
        for i, name in enumerate(("open", "high", "low", "close"), 1)
    )
    v = _decimal(row[5], "volume", positive=False)
    turnover = _decimal(row[6], "turnover", positive=False) if len(row) > 6 else None
    if h < max(o, c, lo) or lo > min(o, c):
        raise RowError("bad_ohlc", f"inconsistent OHLC o={o} h={h} l={lo} c={c}")
    return Kline(symbol, interval, start, o, h, lo, c, v, turnover, True)


def parse_kline_page(symbol: str, interval: str, payload: dict[str, Any]) -> KlinePage:
    """Parse a successful envelope; drop the open candle (``start + interval > time``).

    A row that breaks a kline rule is skipped and named in ``rejected`` (one reason each).
    """
    step = interval_ms(interval)
    server_time = payload.get("time")
    result = payload.get("result")
    rows = result.get("list") if isinstance(result, dict) else None
    if (
        not isinstance(server_time, int)
        or isinstance(server_time, bool)
        or not isinstance(rows, list)
    ):
        raise RestError(
            "kline response lacks an integer 'time' or a 'result.list'", retryable=False
        )
    klines: list[Kline] = []
    rejected: list[str] = []
    oldest: int | None = None
    for row in rows:
        try:
            k = _row(symbol, interval, step, row)
        except RowError as e:
            rejected.append(e.reason)
            continue
        oldest = k.start if oldest is None else min(oldest, k.start)
        if k.start + step > server_time:  # still open: REST has no confirm flag
            continue
        klines.append(k)
    klines.sort(key=lambda k: k.start)
    return KlinePage(klines, server_time, oldest, rejected)


def windows(
    start_ms: int, end_ms: int, step_ms: int, limit: int = MAX_LIMIT
) -> Iterator[tuple[int, int]]:
    """Request windows of at most ``limit`` candles covering [start_ms, end_ms] (inclusive).

    Lazy on purpose: a caller bounds the range first, and even an unbounded one costs
    nothing until a window is asked for. Bounded windows sidestep the undocumented page
    anchoring when a range holds more rows.
    """
    s = -(-start_ms // step_ms) * step_ms  # round up onto the grid
    while s <= end_ms:
        yield s, min(s + (limit - 1) * step_ms, end_ms)
        s += limit * step_ms


def bounded(start_ms: int, end_ms: int, step_ms: int, max_candles: int) -> tuple[int, int]:
    """[start_ms, end_ms] cut to its newest ``max_candles`` candles (DESIGN section 10: a gap
    larger than the history kept is fetched as that history, not as the whole gap)."""
    return max(start_ms, end_ms - (max_candles - 1) * step_ms), end_ms


def classify(status: int, body: bytes, what: str) -> dict[str, Any]:
    """The envelope of a successful answer, else the :class:`RestError` it amounts to (see
    the module docstring); pure, so every hostile answer is tested on bytes."""
    if status == 403:
        raise RestForbidden(f"{what}: HTTP 403 ({short(body, 120)})")
    if status != 200:
        retry = status == 429 or status >= 500
        raise RestError(f"{what}: HTTP {status}", retryable=retry)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RestError(f"{what}: not JSON ({short(body, 60)})", retryable=True) from None
    if not isinstance(payload, dict):
        raise RestError(f"{what}: the answer is not a JSON object", retryable=False)
    code = payload.get("retCode")
    if not isinstance(code, int) or isinstance(code, bool):
        raise RestError(f"{what}: no integer retCode in the answer", retryable=False)
    if code != 0:
        said = short(payload.get("retMsg"), 200)
        if code in CONFIG_CODES:
            raise ConfigError(f"Bybit refused {what}: {said} (retCode {code})")
        raise RestError(f"{what}: {said} (retCode {code})", retryable=code in RETRY_CODES)
    return payload


class RestKlines:
    """Kline history from Bybit (or the replay exchange) at ``base_url``; no I/O on init.

    ``timeout_s`` is the total deadline of one request (connect + whole body);
    ``max_body``/``max_inflated`` cap its bytes on the wire and after gzip.
    """

    def __init__(
        self,
        base_url: str = MAINNET_REST_URL,
        *,
        category: str = "linear",
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff: Callable[[], Backoff] | None = None,
        limit: int = MAX_LIMIT,
        on_reject: Callable[[str], None] | None = None,
        max_body: int = http_get.MAX_BODY,
        max_inflated: int = http_get.MAX_INFLATED,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter  # None: no client-side cap (scripts, tests); see module doc
        # called with the reason of each refused row (the feed counts it as a rejected kline)
        self.on_reject = on_reject
        self.server_time: int | None = None  # the newest exchange ``time`` seen on REST
        self.category = category
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_body = max_body
        self.max_inflated = max_inflated
        self.limit = max(1, min(limit, MAX_LIMIT))
        self._backoff = backoff or (lambda: Backoff(initial_s=0.5, max_s=8.0))
        self.requests_made = 0
        self.logs = LogLimit(log, burst=6)

    async def _call(self, params: dict[str, Any]) -> dict[str, Any]:
        """One request, its answer classified (module docstring)."""
        what = f"{params.get('symbol')} interval {params.get('interval')}"
        if self.limiter is not None:
            await self.limiter.wait()  # below Bybit's per-IP limit (module docstring)
        self.requests_made += 1
        try:
            resp = await http_get.get(
                f"{self.base_url}/v5/market/kline",
                {"category": self.category, **params},
                deadline_s=self.timeout_s,
                max_body=self.max_body,
                max_inflated=self.max_inflated,
            )
        except http_get.HttpError as e:
            raise RestError(f"{what}: {short(str(e), 160)}", retryable=True) from None
        return classify(resp.status, resp.body, what)

    async def _request(self, params: dict[str, Any], attempts: int | None = None) -> dict[str, Any]:
        backoff = self._backoff()
        n = attempts or self.max_attempts
        for attempt in range(1, n + 1):
            try:
                return await self._call(params)
            except RestError as e:
                if not e.retryable or attempt == n:
                    raise
                delay = backoff.next_delay()
                # a wait is logged as it is taken (the log's timing is the real timing), a
                # few per minute: in an outage every symbol retries (the rest are counted)
                self.logs.log(
                    logging.WARNING,
                    "rest_retry",
                    "REST %s (attempt %d/%d); retrying in %.2f s",
                    e,
                    attempt,
                    n,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _page(self, symbol: str, interval: str, payload: dict[str, Any]) -> KlinePage:
        page = parse_kline_page(symbol, interval, payload)
        if self.server_time is None or page.server_time > self.server_time:
            self.server_time = page.server_time
        if page.rejected and self.on_reject is not None:
            for reason in page.rejected:
                self.on_reject(reason)
        return page

    async def exchange_time(self, symbol: str, interval: str) -> int:
        """The exchange's clock (the envelope's ``time``) from one small request, one attempt:
        the feed asks it when a frame claims a time far ahead of what it has seen."""
        payload = await self._request({"symbol": symbol, "interval": interval, "limit": 1}, 1)
        return self._page(symbol, interval, payload).server_time

    async def fetch_range(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        end_ms: int,
        *,
        max_candles: int | None = None,
    ) -> list[Kline]:
        """Closed candles with start in [start_ms, end_ms], oldest first, no duplicates;
        with ``max_candles``, only the newest that many of the range are asked for."""
        step = interval_ms(interval)
        if max_candles is not None:
            start_ms, end_ms = bounded(start_ms, end_ms, step, max_candles)
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
            page = self._page(symbol, interval, payload)
            got.update((k.start, k) for k in page.klines if lo <= k.start <= hi)
            if page.server_time < hi:  # the rest of the range is in the future
                break
        return [got[s] for s in sorted(got)]

    async def fetch_latest(
        self, symbol: str, interval: str, n: int, *, attempts: int | None = None
    ) -> list[Kline]:
        """The newest ``n`` closed candles, oldest first (fewer if the exchange has fewer);
        ``attempts`` per request overrides ``max_attempts`` (the warm-up retries itself)."""
        step = interval_ms(interval)
        got: dict[int, Kline] = {}
        end: int | None = None
        while len(got) < n:
            want = min(self.limit, n - len(got) + 1)  # +1: the newest row may be open
            payload = await self._request(
                {"symbol": symbol, "interval": interval, "end": end, "limit": want}, attempts
            )
            page = self._page(symbol, interval, payload)
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
