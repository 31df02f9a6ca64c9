"""One symbol's REST side, in that symbol's own task: warm-up history and gap repair.

Why a task per symbol: REST answers can hang, trickle, fail or lie, and each of those once
stalled every symbol, because fills ran inside the websocket read loop. Now the read loop
only parses and routes; a symbol's :class:`~service.market.sequencer.CandleSequencer`
decides what to fetch, and its :class:`Lane` runs the fetch here, beside the socket, taking
requests from a bounded queue (one at a time: the sequencer never asks for a second before
the first is answered, and holds that symbol's later confirms meanwhile). A hanging BTC
request costs BTC its deadline; ETH's candles go on being read and delivered.

How answers are treated (classified once in :mod:`service.market.rest`):
- retryable errors and malformed answers: a range fill is tried again after ``fill_retry_ms``
  of exchange time, the warm-up after its backoff (capped, jittered); a failed fill (its
  request already retried) or warm-up makes the symbol a /ready reason and
  ``apprentice_symbol_problem{symbol}`` 1 until REST answers again;
- HTTP 403: the same, after ``forbidden_backoff_s``;
- a refusal (``retCode`` 10001/10029): before the symbol ever had a candle it is the
  configuration's fault and ends the feed (the service refuses to start); after that (a
  delisted symbol, a transient answer) the symbol is out of service with a log line, the
  metric and a /ready reason, and asked again every ``refused_retry_s``. Nothing the
  exchange says ends this task after start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service.market.bybit import short
from service.market.klines import Kline
from service.market.log_limit import LogLimit
from service.market.rest import Backoff, ConfigError, RestError, RestForbidden, RestKlines
from service.market.sequencer import CandleSequencer, Decision, Fetch
from service.metrics import Metrics

__all__ = ["Backoff", "Lane"]
log = logging.getLogger(__name__)
FAILING_AFTER = 1  # failed fills (each already retried) before a symbol is a /ready reason


class Lane:
    """A symbol's sequencer and the task that runs its fetches (module docstring).

    ``apply`` is the feed's hand-off of a :class:`Decision` (deliver, count, queue a fetch);
    the lane calls it with what each REST answer decided.
    """

    def __init__(
        self,
        seq: CandleSequencer,
        *,
        rest: RestKlines,
        metrics: Metrics,
        stats: dict[str, int],
        apply: Callable[[CandleSequencer, Decision], Awaitable[None]],
        logs: LogLimit,
        warmup_backoff: Backoff,
        fill_retry_ms: int = 5_000,
        forbidden_backoff_s: float = 600.0,
        refused_retry_s: float = 600.0,
    ) -> None:
        self.seq = seq
        self.symbol = seq.symbol
        self.rest = rest
        self.metrics = metrics
        self.stats = stats
        self.apply = apply
        self.logs = logs
        self.backoff = warmup_backoff
        self.fill_retry_ms = fill_retry_ms
        self.forbidden_backoff_s = forbidden_backoff_s
        self.refused_retry_s = refused_retry_s
        self.fetches: asyncio.Queue[Fetch] = asyncio.Queue(maxsize=1)
        self.problem: str | None = None  # why this symbol is not current, for /ready
        self.failures = 0  # consecutive failed requests
        self._m_problem = metrics.symbol_problem.labels(self.symbol)
        self._m_problem.set(0)

    # public face --------------------------------------------------------------------------
    def request(self, fetch: Fetch) -> None:
        """Queue the sequencer's fetch (never blocks: one is outstanding at a time)."""
        self.fetches.put_nowait(fetch)

    def reason(self) -> str | None:
        """Why /ready should name this symbol, if it should."""
        if self.problem is not None:
            return f"{self.symbol}: {self.problem}"
        if self.seq.last_start is None and self.seq.busy:
            return f"{self.symbol}: REST backfill in progress"
        return None

    async def run(self) -> None:
        """Take fetches from the queue and run them, forever (a bug is logged, not fatal)."""
        while True:
            fetch = await self.fetches.get()
            try:
                if fetch.latest:
                    await self._warm_up(fetch)
                else:
                    await self._fill(fetch)
            except (ConfigError, asyncio.CancelledError):
                raise  # ConfigError only before the symbol's first candle: start-up
            except Exception:  # a bug: log it, free the sequencer, keep the lane
                self.logs.log(
                    logging.ERROR,
                    "lane",
                    "lane %s failed",
                    self.symbol,
                    exc_info=True,
                )
                if self.seq.busy:
                    await self._hand_over(self.seq.on_fetch_failed(self.fill_retry_ms))

    # internals ----------------------------------------------------------------------------
    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _set_problem(self, problem: str | None) -> None:
        self.problem = problem
        self._m_problem.set(0 if problem is None else 1)

    def _failed(self, outcome: str, why: str) -> None:
        self.failures += 1
        self.metrics.rest_failures.labels(self.symbol, outcome).inc()
        if self.failures >= FAILING_AFTER or self.seq.last_start is None:
            self._set_problem(why)

    async def _answered(self, rows: list[Kline]) -> None:
        self.failures = 0
        self._set_problem(None)
        d = self.seq.on_fetched(rows, self.rest.server_time, time.perf_counter_ns())
        for _ in d.deliver:
            self.metrics.backfilled_klines.labels(self.symbol).inc()
            self._count("closed_rest")
        await self.apply(self.seq, d)
        await self._hand_over(self.seq.handed_over())

    async def _hand_over(self, d: Decision) -> None:
        """Hand on decisions until the sequencer is idle or has asked for the next fetch."""
        while True:
            await self.apply(self.seq, d)
            if d.fetch is not None or not d.deliver:
                return
            d = self.seq.handed_over()

    async def _refused(self, e: ConfigError) -> None:
        """A refusal after start-up: out of service, asked again slowly (module docstring)."""
        if self.seq.last_start is None:
            raise e  # never had a candle: the configuration is wrong (start-up)
        self._failed("refused", f"refused by the exchange ({short(str(e), 120)})")
        self._set_problem(
            f"refused by the exchange ({short(str(e), 120)}); retrying every "
            f"{self.refused_retry_s:g} s"
        )
        self.logs.log(
            logging.ERROR,
            f"refused-{self.symbol}",
            "REST refused %s (%s); out of service, retrying every %g s",
            self.symbol,
            e,
            self.refused_retry_s,
        )
        await asyncio.sleep(self.refused_retry_s)

    async def _warm_up(self, fetch: Fetch) -> None:
        """The newest ``fetch.latest`` closed candles; retried with ``backoff`` until REST
        answers. Each request is one attempt, so every wait is the one logged here."""
        while True:
            try:
                klines = await self.rest.fetch_latest(
                    self.symbol, self.seq.interval, fetch.latest, attempts=1
                )
            except ConfigError as e:
                await self._refused(e)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RestError, or a bug: never the end of the warm-up
                wait = (
                    self.forbidden_backoff_s
                    if isinstance(e, RestForbidden)
                    else self.backoff.next_delay()
                )
                outcome = "forbidden" if isinstance(e, RestForbidden) else "error"
                self._failed(outcome, f"REST backfill failing ({short(str(e), 120)})")
                self.logs.log(
                    logging.WARNING,
                    "warmup",
                    "backfill %s failed (%s); retrying in %.2f s",
                    self.symbol,
                    e if isinstance(e, RestError) else f"{type(e).__name__}: {e}",
                    wait,
                    exc_info=not isinstance(e, RestError),
                )
                await asyncio.sleep(wait)
                continue
            break
        self.backoff.reset()
        log.info(
            "backfilled %d closed %s klines for %s", len(klines), self.seq.interval, self.symbol
        )
        await self._answered(klines)

    async def _fill(self, fetch: Fetch) -> None:
        """One range fill; a failure defers the range on exchange time (the sequencer)."""
        self._count("fills")
        while True:
            try:
                klines = await self.rest.fetch_range(
                    self.symbol,
                    self.seq.interval,
                    fetch.first,
                    fetch.last,
                    max_candles=self.seq.history_bars,
                )
            except ConfigError as e:
                await self._refused(e)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RestError, or a bug: the range stays due
                forbidden = isinstance(e, RestForbidden)
                wait_ms = int(self.forbidden_backoff_s * 1000) if forbidden else 0
                self._failed(
                    "forbidden" if forbidden else "error",
                    f"REST fills failing ({short(str(e), 120)})",
                )
                self._count("fill_errors")
                self.logs.log(
                    logging.WARNING,
                    "fill",
                    "REST fill %s [%d, %d] failed: %s",
                    self.symbol,
                    fetch.first,
                    fetch.last,
                    e if isinstance(e, RestError) else f"{type(e).__name__}: {e}",
                    exc_info=not isinstance(e, RestError),
                )
                await self._hand_over(self.seq.on_fetch_failed(max(wait_ms, self.fill_retry_ms)))
                return
            await self._answered(klines)
            return
