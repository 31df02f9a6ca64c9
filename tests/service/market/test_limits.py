"""Bybit's limits as pure code: the connection plan and the token buckets, on a fake clock."""

from __future__ import annotations

import bisect
import itertools

import orjson
import pytest

from service.market.bybit import kline_topic
from service.market.limits import (
    ARGS_BUDGET_CHARS,
    ARGS_LIMIT_CHARS,
    CONNECT_WINDOW_S,
    CONNECTS_PER_WINDOW,
    REST_LIMIT_PER_WINDOW,
    REST_WINDOW_S,
    TokenBucket,
    args_chars,
    connect_limiter,
    plan_connections,
    rest_limiter,
)


def topics(n: int, interval: str = "5", width: int = 4) -> list[str]:
    return [kline_topic(interval, f"S{i:0{width}d}USDT") for i in range(n)]


def test_args_chars_is_the_json_array_a_subscribe_carries() -> None:
    ts = ["kline.5.BTCUSDT", "kline.5.ETHUSDT"]
    assert args_chars(ts) == len('["kline.5.BTCUSDT","kline.5.ETHUSDT"]') == 37
    assert args_chars([]) == 2


@pytest.mark.parametrize(
    ("n", "interval", "width"),
    [(1, "5", 4), (500, "5", 4), (1000, "5", 4), (1000, "240", 15), (5000, "D", 6)],
)
def test_every_topic_lands_once_in_a_group_within_the_budget(
    n: int, interval: str, width: int
) -> None:
    ts = topics(n, interval, width)
    groups = plan_connections(ts)
    assert [t for g in groups for t in g] == ts  # each once, in order
    assert all(g and args_chars(g) <= ARGS_BUDGET_CHARS < ARGS_LIMIT_CHARS for g in groups)
    # greedy: a group is closed only because the next topic would not fit
    for g, nxt in itertools.pairwise(groups):
        assert args_chars([*g, nxt[0]]) > ARGS_BUDGET_CHARS


def test_the_whole_market_needs_several_connections_and_500_symbols_one() -> None:
    # issue 30: 1000 topics on one socket passed Bybit's 21,000 characters and never got ready
    assert args_chars(topics(1000)) > ARGS_LIMIT_CHARS - 2_000
    assert len(plan_connections(topics(1000))) >= 2
    assert len(plan_connections(topics(500))) == 1
    assert plan_connections([]) == []


def test_a_small_budget_splits_and_a_topic_longer_than_it_is_refused() -> None:
    ts = ["kline.5.BTCUSDT", "kline.5.ETHUSDT", "kline.5.SOLUSDT"]
    assert plan_connections(ts, budget_chars=40) == [ts[:2], ts[2:]]
    assert plan_connections(ts, budget_chars=19) == [[t] for t in ts]
    with pytest.raises(ValueError, match="alone exceeds"):
        plan_connections(ts, budget_chars=18)


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open span of ``window`` seconds."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def greedy_schedule(bucket: TokenBucket, arrivals: list[float]) -> list[float]:
    """When each caller may go: each reserves at its arrival and waits what it is told."""
    return [t + bucket.reserve(t) for t in arrivals]


def test_a_rest_bucket_never_lets_more_than_its_cap_through_in_any_five_seconds() -> None:
    bucket = rest_limiter(400)
    # 500 symbols' warm-ups at once, then a steady flood of fills for a minute
    arrivals = [0.0] * 500 + [i * 0.001 for i in range(60_000)]
    go = greedy_schedule(bucket, sorted(arrivals))
    assert max_in_window(go, REST_WINDOW_S) <= 400 < REST_LIMIT_PER_WINDOW
    assert max_in_window(go, REST_WINDOW_S) >= 390  # and does not throttle far below it


def test_500_symbols_warm_up_well_inside_30_seconds() -> None:
    bucket = rest_limiter(400)
    go = greedy_schedule(bucket, [0.0] * 500)
    assert go[: int(bucket.burst)] == [0.0] * int(bucket.burst)  # the burst at once
    assert go == sorted(go) and go[-1] < 10.0  # first come first served, ~6.6 s in all
    assert bucket.waited_s == pytest.approx(sum(go))


def test_the_bucket_refills_with_the_clock_and_never_beyond_its_burst() -> None:
    now = [100.0]
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.reserve(100.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    assert bucket.reserve(101.0) == 0.0  # 2 tokens back, one was owed: one left, taken
    assert bucket.reserve(1000.0) == 0.0
    assert [bucket.reserve(1000.0) for _ in range(3)] == [0.0, 0.0, 0.5]  # capped at 3


async def test_wait_sleeps_what_reserve_says() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_s=100.0, burst=1, clock=lambda: now[0])
    await bucket.wait()  # the burst: at once
    await bucket.wait()  # owes 10 ms: a real, short sleep
    assert bucket.taken == 2 and bucket.waited_s == pytest.approx(0.01)


def test_connects_stay_at_half_of_bybits_500_per_5_minutes() -> None:
    bucket = connect_limiter()
    # a reconnect storm: every connection failing and retrying at once, for an hour
    go = greedy_schedule(bucket, [i * 0.05 for i in range(72_000)])
    assert max_in_window(go, CONNECT_WINDOW_S) <= CONNECTS_PER_WINDOW <= 500 // 2


@pytest.mark.parametrize("cap", [0, 600, 10_000])
def test_a_rest_cap_at_or_over_bybits_limit_is_refused(cap: int) -> None:
    with pytest.raises(ValueError):
        rest_limiter(cap)


def test_the_budget_is_the_one_the_reference_documents() -> None:
    # ../shared/reference/bybit-v5-public.md 1.4: 21,000 characters of args per connection
    assert ARGS_LIMIT_CHARS == 21_000
    assert len(orjson.dumps(topics(790))) < ARGS_BUDGET_CHARS < len(orjson.dumps(topics(1000)))
