"""Soak the kline feed against the replay exchange and compare with what the exchange closed.

``python -m service.replay.soak --faults all --candles 200`` starts a replay exchange on a
free loopback port, runs a :class:`~service.market.feed.KlineFeed` against it with fast timeouts,
and checks that the closed candles delivered per symbol equal the exchange's own series bar
for bar (backfill included). Tests use :func:`soak` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from service.market.backfill import Backoff
from service.market.feed import KlineFeed
from service.market.kline_io import load_bundled
from service.market.klines import Kline, KlineEvent, KlineTable
from service.market.rest import RestKlines
from service.metrics import Metrics
from service.replay.exchange import ReplayConfig, ReplayExchange
from service.replay.faults import Faults
from service.replay.hostile import HostileRest


@dataclass
class SoakResult:
    """What the feed delivered, what the exchange closed, and how they compare."""

    closed: dict[str, list[KlineEvent]]
    interim: dict[str, list[KlineEvent]]
    expected: dict[str, list[Kline]]
    exchange_stats: dict[str, int]
    feed_stats: dict[str, Any]
    rejected: dict[str, float]
    seconds: float
    registry: CollectorRegistry
    mismatches: list[str] = field(default_factory=list)
    direct: int = 0  # closed candles handed to the direct callback (``soak(direct=True)``)
    # per symbol, seconds from the candle's close on the exchange to its delivery, live
    # candles only (the warm-up's history is not late, it is old)
    lag_s: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the feed's /ready reasons at the end

    def lag_figures(self, symbol: str) -> dict[str, float]:
        """Median, 99th percentile and maximum delivery lag of ``symbol``'s live candles."""
        lags = sorted(self.lag_s.get(symbol, []))
        if not lags:
            return {"n": 0}
        return {
            "n": len(lags),
            "median_s": round(lags[len(lags) // 2], 4),
            "p99_s": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 4),
            "max_s": round(lags[-1], 4),
        }

    @property
    def ok(self) -> bool:
        """True when every symbol's delivered series equals the exchange's, bar for bar."""
        return not self.mismatches

    def summary(self) -> dict[str, Any]:
        """Figures for a report."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "closed_delivered": {s: len(v) for s, v in self.closed.items()},
            "initial_backfill": {s: _leading_rest(v) for s, v in self.closed.items()},
            "rest_fills": {
                s: sum(e.source == "rest" for e in v) - _leading_rest(v)
                for s, v in self.closed.items()
            },
            "interim_delivered": {s: len(v) for s, v in self.interim.items()},
            "faults_injected": self.exchange_stats,
            "feed": self.feed_stats,
            "rejected_by_reason": self.rejected,
            "mismatches": self.mismatches[:10],
            "lag": {s: self.lag_figures(s) for s in self.closed},
        }


def fast_feed_options() -> dict[str, Any]:
    """Timeouts and backoff scaled for a loopback replay (seconds instead of minutes)."""
    return {
        "ping_interval_s": 0.1,
        "backoff": Backoff(initial_s=0.01, max_s=0.1),
        "silence_timeout_s": 0.5,
        "data_timeout_s": 1.0,
        "ack_timeout_s": 0.5,
        "stable_after_s": 0.5,
        "forbidden_backoff_s": 0.2,
        "open_timeout_s": 2.0,
    }


def _leading_rest(events: list[KlineEvent]) -> int:
    n = 0
    while n < len(events) and events[n].source == "rest":
        n += 1
    return n


def _compare(symbol: str, got: list[KlineEvent], ex: ReplayExchange, backfill: int) -> list[str]:
    tape, step = ex.tapes[symbol], ex.step
    if not got:
        return [f"{symbol}: nothing delivered"]
    out: list[str] = []
    n_rest = _leading_rest(got)
    if backfill and n_rest < backfill:
        out.append(f"{symbol}: only {n_rest} backfilled bars before the first live one")
    first = got[0].kline.start
    for i, ev in enumerate(got):
        want = tape.closed(first + i * step)
        if want is not None and want.symbol != symbol:  # one file served under many names
            want = replace(want, symbol=symbol)
        if ev.kline != want:
            out.append(f"{symbol}[{i}]: delivered {ev.kline} ({ev.source}), exchange has {want}")
            break
    return out


async def soak(
    faults: Faults,
    *,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
    candles: int = 30,
    speed: float = 6000.0,
    seed: int = 1,
    backfill_bars: int = 300,
    timeout_s: float = 60.0,
    feed_options: dict[str, Any] | None = None,
    feed_symbols: list[str] | None = None,
    queue_size: int = 10_000,
    consumer_delay_s: float = 0.0,
    direct: bool = False,
    script: Callable[[ReplayExchange], Coroutine[Any, Any, None]] | None = None,
    hostile: HostileRest | None = None,
    rest_options: dict[str, Any] | None = None,
    on_feed: Callable[[KlineFeed], object] | None = None,
    tables: dict[str, KlineTable] | None = None,
) -> SoakResult:
    """Run the feed until ``candles`` replayed candles per symbol are delivered (or timeout).

    A consumer task records each event as it takes it from the queue. ``direct``: also the
    service's hand-off — closed candles that find the queue empty go to a callback instead
    (``SoakResult.direct`` counts the callback's share). ``script(exchange)`` runs beside the
    feed (a hostile exchange's extra frames, via ``ReplayExchange.inject``). ``hostile``: the
    feed's REST goes to that server instead (started on the exchange); its ``target`` symbol
    is then not required to reach ``candles``, only to be exact as far as it got.
    """
    cfg = ReplayConfig(
        symbols=symbols,
        speed=speed,
        updates_per_candle=2,
        faults=faults,
        seed=seed,
        history_bars=backfill_bars + 100,
        tables=tables,  # e.g. one bundled file under many names: a many-symbol soak
    )
    registry = CollectorRegistry()
    t0 = time.perf_counter()
    async with ReplayExchange(cfg) as ex:
        out: asyncio.Queue[KlineEvent] = asyncio.Queue(maxsize=queue_size)
        rest_url = ex.rest_url
        if hostile is not None:
            await hostile.start(ex)
            rest_url = hostile.url
        options: dict[str, Any] = {
            "backoff": lambda: Backoff(0.01, 0.05),
            "max_attempts": 8,
            "timeout_s": 5.0,
        }
        rest = RestKlines(rest_url, **(options | (rest_options or {})))
        wanted = feed_symbols or list(symbols)
        feed = KlineFeed(
            symbols=wanted,
            interval=cfg.interval,
            ws_url=ex.ws_url,
            rest=rest,
            out=out,
            metrics=Metrics(registry),
            backfill_bars=backfill_bars,
            **(feed_options or fast_feed_options()),
        )
        closed: dict[str, list[KlineEvent]] = {s: [] for s in wanted}
        interim: dict[str, list[KlineEvent]] = {s: [] for s in wanted}
        target = ex.start_ms + candles * ex.step
        live = [s for s in wanted if f"kline.{cfg.interval}.{s}" not in faults.reject_topics]
        if hostile is not None:
            live = [s for s in live if s != hostile.target]
        lag_s: dict[str, list[float]] = {s: [] for s in wanted}
        arrived = asyncio.Event()
        handed = [0]

        def record(ev: KlineEvent) -> None:
            k = ev.kline
            (closed if k.confirm else interim)[k.symbol].append(ev)
            at = ex.closed_at_ns[k.symbol].get(k.start) if k.confirm else None
            if at is not None:
                lag_s[k.symbol].append((time.perf_counter_ns() - at) / 1e9)
            arrived.set()

        def direct_record(ev: KlineEvent) -> None:
            handed[0] += 1
            record(ev)

        async def consume() -> None:  # like Pipeline.run: take and record in one step
            while True:
                ev = await out.get()
                if consumer_delay_s:
                    await asyncio.sleep(consumer_delay_s)  # a slow pipeline
                record(ev)

        if direct:
            feed.direct = direct_record
        if on_feed is not None:
            on_feed(feed)
        consumer = asyncio.create_task(consume(), name="soak-consumer")
        task = asyncio.create_task(feed.run(), name="soak-feed")
        helpers = [consumer]
        if script is not None:
            helpers.append(asyncio.create_task(script(ex), name="soak-script"))

        def finished() -> bool:
            return all(closed[s] and closed[s][-1].kline.start >= target for s in live)

        try:
            async with asyncio.timeout(timeout_s):
                while not finished():
                    arrived.clear()
                    wait = asyncio.ensure_future(arrived.wait())
                    fired, _ = await asyncio.wait({wait, task}, return_when=asyncio.FIRST_COMPLETED)
                    if task in fired:
                        wait.cancel()
                        task.result()  # the feed must never stop on its own: surface why
                        raise RuntimeError("the feed returned")
        except TimeoutError:
            pass
        finally:
            for t in (task, *helpers):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if hostile is not None:
                await hostile.stop()
        mismatches = [m for s in live for m in _compare(s, closed[s], ex, backfill_bars)]
        if hostile is not None and hostile.target in closed and closed[hostile.target]:
            mismatches += _compare(hostile.target, closed[hostile.target], ex, 0)
        for s in live:
            if not closed[s] or closed[s][-1].kline.start < target:
                mismatches.append(f"{s}: timed out before candle {target}")
        rejected = {
            smp.labels["reason"]: smp.value
            for metric in registry.collect()
            if metric.name == "apprentice_klines_rejected"
            for smp in metric.samples
            if smp.name.endswith("_total")
        }
        return SoakResult(
            closed=closed,
            interim=interim,
            expected={s: ex.recorded(s) for s in symbols},
            exchange_stats=dict(ex.stats),
            feed_stats=feed.snapshot(),
            rejected=rejected,
            seconds=time.perf_counter() - t0,
            registry=registry,
            mismatches=mismatches,
            direct=handed[0],
            lag_s=lag_s,
            problems=feed.problems(),
        )


def _rss_mb() -> float:
    """This process's resident memory now (Linux), in MB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(argv: list[str] | None = None) -> int:
    """CLI: print the soak figures as JSON; exit 1 if the series differ."""
    p = argparse.ArgumentParser(prog="python -m service.replay.soak", description=__doc__)
    p.add_argument(
        "--faults",
        type=Faults.parse,
        help="default: all; with --hostile-symbol: the websocket drops now and then "
        "(disconnect=0.03) and that symbol loses confirms (missing_confirm=0.3, gap=0.05)",
    )
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    p.add_argument("--candles", type=int, default=200)
    p.add_argument("--minutes", type=float, help="run this long instead (sets --candles)")
    p.add_argument("--speed", type=float, default=6000.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--hostile-symbol",
        help="this symbol's REST goes to a hostile server (service.replay.hostile); the "
        "others must stay exact and on time",
    )
    p.add_argument(
        "--clones",
        type=int,
        default=0,
        help="serve the first symbol's bundled file under this many names (S000USDT ...): "
        "the many-symbol measurement behind the 100-symbol ceiling",
    )
    p.add_argument("--hostile-modes", default="hang,trickle,http500,html,malformed,ok")
    p.add_argument("--hostile-every-s", type=float, default=60.0, help="next mode after this")
    args = p.parse_args(argv)
    symbols = tuple(s for s in args.symbols.split(",") if s)
    tables = None
    if args.clones:
        table = load_bundled(symbols[0], "5")
        symbols = tuple(f"S{i:03d}USDT" for i in range(args.clones))
        tables = dict.fromkeys(symbols, table)
    candles = args.candles
    if args.minutes:
        candles = int(args.minutes * 60 * args.speed / 300)  # 5-minute candles
    faults = args.faults
    if faults is None:
        faults = Faults.all()
        if args.hostile_symbol:  # its REST is then needed, and hostile
            faults = Faults(
                disconnect=0.03,
                missing_confirm=0.3,
                gap=0.05,
                only=frozenset({args.hostile_symbol}),
            )
    hostile = None
    script = None
    options = fast_feed_options() | {"silence_timeout_s": 5.0, "data_timeout_s": 10.0}
    if args.hostile_symbol:
        modes = [m for m in args.hostile_modes.split(",") if m]
        hostile = HostileRest(target=args.hostile_symbol, trickle_s=1.0)

        async def cycle(ex: ReplayExchange) -> None:
            assert hostile is not None
            for n in itertools.count():
                hostile.mode = modes[n % len(modes)]
                await asyncio.sleep(args.hostile_every_s)
                rss.append(_rss_mb())  # one sample per mode: the trend, after the warm-up

        script = cycle
    rss0 = _rss_mb()
    rss: list[float] = []
    result = asyncio.run(
        soak(
            faults,
            symbols=symbols,
            candles=candles,
            speed=args.speed,
            seed=args.seed,
            timeout_s=max(600.0, 3 * candles * 300 / args.speed),
            hostile=hostile,
            script=script,
            feed_options=options if hostile or tables else None,
            tables=tables,
        )
    )
    summary = result.summary() | {
        "rss_mb": {
            "before": round(rss0, 1),
            "first_sample": round(rss[0], 1) if rss else None,
            "max_sample": round(max(rss), 1) if rss else None,
            "end": round(_rss_mb(), 1),
        }
    }
    if hostile is not None:
        summary["hostile_answers"] = dict(hostile.stats)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
