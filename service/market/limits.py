"""Bybit's limits and the client's own, as pure code: the connection plan and rate limiters.

Facts (../shared/reference/bybit-v5-public.md, sections 1.4 and 5.4, from Bybit's
``docs/v5/ws/connect`` and ``docs/v5/rate-limit``):
- the ``args`` of one public websocket connection may total at most 21,000 characters;
  linear has no limit on their count. Past it the subscription never completes: measured
  here, a 1000-symbol list on one socket looped forever without becoming ready (issue 30);
- at most 500 new websocket connections per 5 minutes per domain;
- REST: at most 600 requests per 5 s per IP; past it HTTP 403 and a ban of 10 minutes.

So the symbols are split across connections (:func:`plan_connections`), connections are
opened through a :class:`TokenBucket` far below 500 per 5 minutes, and every REST request of
the process (warm-up pages, gap fills, clock probes) takes a token from one shared bucket
set below 600 per 5 s. No I/O and no asyncio here: each limiter takes the clock reading as
an argument, so tests drive it with a fake clock; :meth:`TokenBucket.wait` is the thin shell.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import orjson

# Bybit: total length of one connection's ``args`` <= 21,000 characters [DOC-connect].
ARGS_LIMIT_CHARS = 21_000
# What the planner fills a connection to. The margin (~24 %) covers how Bybit counts (the
# JSON array with its quotes and commas is what is counted here: longer than the bare
# strings) and a topic name longer than today's; 16,000 is ~800 five-minute topics.
ARGS_BUDGET_CHARS = 16_000
# Bybit: <= 500 new connections per 5 min per domain [DOC-rate]. The client keeps to half:
# a burst of 20 (opening a few connections at once), then one every 1.2 s.
CONNECTS_PER_WINDOW = 250
CONNECT_WINDOW_S = 300.0
CONNECT_BURST = 20
# Bybit: <= 600 REST requests per 5 s per IP [DOC-rate]; 403 and a 10-minute ban past it.
REST_WINDOW_S = 5.0
REST_LIMIT_PER_WINDOW = 600
# The client's default cap (setting APPRENTICE_REST_PER_5S). The bucket holds it for requests
# as sent; as they arrive, network jitter can add a request or two to a 5 s span (measured
# on loopback, 1000 warm-ups: 401 in the busiest span at 400), hence a cap well below 600.
# At 400 (80 at once, then 64/s), 500 symbols' warm-up requests all go within ~6.6 s.
DEFAULT_REST_PER_WINDOW = 400


def args_chars(topics: list[str]) -> int:
    """Characters of ``topics`` as the JSON ``args`` array a subscribe request carries."""
    return len(orjson.dumps(topics))


def plan_connections(topics: list[str], budget_chars: int = ARGS_BUDGET_CHARS) -> list[list[str]]:
    """``topics`` split, in their order, into groups whose ``args`` array each fits
    ``budget_chars`` (every topic in exactly one group; one connection each).

    Greedy in order: the fewest connections for topics of similar length, and a symbol
    list given in a stable order keeps its symbols on the same connection across restarts.
    A single topic longer than the budget cannot be planned (:class:`ValueError`).
    """
    if budget_chars < 2:
        raise ValueError("an args budget below 2 characters holds not even an empty array")
    groups: list[list[str]] = []
    current: list[str] = []
    used = 2  # the brackets
    for topic in topics:
        cost = len(orjson.dumps(topic)) + (1 if current else 0)  # quotes, escapes, comma
        if used + cost > budget_chars and current:
            groups.append(current)
            current, used = [], 2
            cost -= 1
        if used + cost > budget_chars:
            raise ValueError(f"topic {topic[:40]!r} alone exceeds the {budget_chars}-char budget")
        current.append(topic)
        used += cost
    if current:
        groups.append(current)
    return groups


class TokenBucket:
    """At most ``burst + rate_per_s · T`` events in any span of T seconds.

    :meth:`reserve` takes a token now and says how long to wait before using it (the
    bucket may go into debt), so callers are served first come, first served without a
    lock, and a waiter that is cancelled has still spent its token (never more than the
    limit). Pure: ``now`` is a reading of any monotonic clock.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)) or not 1 <= burst < math.inf:
            raise ValueError("TokenBucket needs a finite rate > 0 and a burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._at: float | None = None
        self.waited_s = 0.0  # total delay handed out (how much the limit held callers back)
        self.taken = 0

    @classmethod
    def per_window(
        cls,
        limit: int,
        window_s: float,
        *,
        burst_share: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenBucket:
        """A bucket that lets at most ``limit`` events through in any ``window_s`` span:
        ``burst_share`` of the limit at once, the rest spread evenly over the window."""
        if limit < 1 or not 0 < burst_share < 1 or not window_s > 0:
            raise ValueError("per_window needs limit >= 1, 0 < burst_share < 1, window_s > 0")
        burst = max(1.0, math.floor(limit * burst_share))
        return cls((limit - burst) / window_s, burst, clock=clock)

    def reserve(self, now: float) -> float:
        """Take one token at ``now``; the seconds to wait before using it (0: at once)."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        self._tokens -= 1.0
        self.taken += 1
        delay = 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s
        self.waited_s += delay
        return delay

    async def wait(self) -> None:
        """Take a token and sleep until it may be used (the asyncio shell of :meth:`reserve`)."""
        delay = self.reserve(self.clock())
        if delay > 0:
            await asyncio.sleep(delay)


def rest_limiter(per_window: int = DEFAULT_REST_PER_WINDOW) -> TokenBucket:
    """The process's REST bucket: at most ``per_window`` requests in any 5 s (below 600)."""
    if not 1 <= per_window < REST_LIMIT_PER_WINDOW:
        raise ValueError(f"a REST cap must be in 1..{REST_LIMIT_PER_WINDOW - 1} per 5 s")
    return TokenBucket.per_window(per_window, REST_WINDOW_S)


def connect_limiter() -> TokenBucket:
    """The process's websocket-open bucket: ``CONNECT_BURST`` at once, at most
    ``CONNECTS_PER_WINDOW`` per ``CONNECT_WINDOW_S`` (half of Bybit's 500 per 5 min)."""
    rate = (CONNECTS_PER_WINDOW - CONNECT_BURST) / CONNECT_WINDOW_S
    return TokenBucket(rate, CONNECT_BURST)
