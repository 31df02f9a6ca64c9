"""A many-symbol mock exchange: N symbols whose candles all close at the same instant.

``python -m bench.many_symbols --symbols N --period-s P --port PORT --log FILE`` serves
Bybit's v5 public websocket and ``GET /v5/market/kline`` (the replay exchange's protocol,
:mod:`service.replay`, used as it is) for N synthetic symbols ``S0000USDT`` … built from real
bundled 5-minute klines: symbol i reads the BTC, ETH, SOL, XRP or BNB tape (i mod 5) from
row 37·(i div 5) on, re-stamped onto one common candle grid, so every symbol has real price
action, its own numbers, and a candle that closes with all the others. A candle lasts
``P`` real seconds; each symbol gets ``updates`` interim pushes per candle and exactly one
confirm when it closes, all confirms of a close sent back to back (a burst of N frames).

For each close it appends a JSON line to ``FILE``: ``{"candle": start_ms, "first": t0,
"last": t1, "n": N}`` where t0/t1 are ``time.perf_counter()`` (CLOCK_MONOTONIC, comparable
across processes on Linux) just before the first confirm was written and just after the
last one was — the outside clock the scale benchmark measures "last confirm → every signal
visible over HTTP" from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from service.market.kline_io import load_bundled
from service.market.klines import KlineTable, interval_ms
from service.replay.exchange import ReplayConfig, ReplayExchange

BASES = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")
ROW_SHIFT = 37  # rows between two symbols made from the same base tape
HISTORY_BARS = 400  # REST history before the replay starts (the service backfills 300)
INTERVAL = "5"


def symbol_names(n: int) -> list[str]:
    """``S0000USDT``, ``S0001USDT``, … (valid Bybit-style names)."""
    return [f"S{i:04d}USDT" for i in range(n)]


def synthetic_tables(n: int, bars: int) -> dict[str, KlineTable]:
    """N tables of ``bars`` rows on one common 5-minute grid, from the bundled tapes."""
    bases = [load_bundled(b, INTERVAL) for b in BASES]
    lo = max(int(t.start[0]) for t in bases)
    hi = min(int(t.start[-1]) for t in bases)
    bases = [t.between(lo, hi) for t in bases]
    step = interval_ms(INTERVAL)
    for t in bases:  # one grid without holes, or the shifted rows would not line up
        if len(t) != len(bases[0]) or not np.all(np.diff(t.start) == step):
            raise ValueError(f"{t.symbol}: the bundled tape has holes on {lo}..{hi}")
    grid = bases[0].start
    need = bars + ROW_SHIFT * ((n - 1) // len(BASES))
    if need > len(grid):
        raise ValueError(f"{n} symbols x {bars} bars need {need} rows, the tapes have {len(grid)}")
    out = {}
    for i, name in enumerate(symbol_names(n)):
        base = bases[i % len(BASES)]
        off = ROW_SHIFT * (i // len(BASES))
        rows = slice(off, off + bars)
        out[name] = KlineTable(
            name,
            INTERVAL,
            grid[:bars].copy(),
            base.open[rows],
            base.high[rows],
            base.low[rows],
            base.close[rows],
            base.volume[rows],
            base.turnover[rows],
        )
    return out


class ManySymbols(ReplayExchange):
    """The replay exchange over synthetic tables, logging each close's send times."""

    def __init__(self, config: ReplayConfig, log: IO[str] | None = None) -> None:
        super().__init__(config)
        self._log = log
        self.bursts: list[dict[str, float]] = []

    async def _boundary(self, vt: int) -> bool:
        t0 = time.perf_counter()
        alive = await super()._boundary(vt)
        t1 = time.perf_counter()
        line = {"candle": vt - self.step, "first": t0, "last": t1, "n": len(self.tapes)}
        self.bursts.append(line)
        if self._log is not None:
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()
        return alive


def config(
    n: int, period_s: float, port: int = 0, updates: int = 1, bars: int = 2000
) -> ReplayConfig:
    """A replay of ``n`` synthetic symbols, one candle every ``period_s`` real seconds."""
    tables = synthetic_tables(n, bars)
    first = int(next(iter(tables.values())).start[0])
    return ReplayConfig(
        symbols=tuple(tables),
        interval=INTERVAL,
        speed=interval_ms(INTERVAL) / 1000.0 / period_s,
        port=port,
        start_ms=first + HISTORY_BARS * interval_ms(INTERVAL),
        updates_per_candle=updates,
        tables=tables,
    )


async def serve(cfg: ReplayConfig, log: Path | None) -> None:
    """Run until cancelled (SIGINT)."""
    fh = open(log, "a") if log is not None else None  # noqa: SIM115 - closed below
    try:
        async with ManySymbols(cfg, fh) as ex:
            print(f"many-symbol exchange: {len(ex.tapes)} symbols on {ex.ws_url}", flush=True)
            await asyncio.Event().wait()
    finally:
        if fh is not None:
            fh.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.many_symbols", description=__doc__)
    p.add_argument("--symbols", type=int, default=500, help="how many symbols (default 500)")
    p.add_argument("--period-s", type=float, default=2.5, help="real seconds per candle")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    p.add_argument("--updates", type=int, default=1, help="interim pushes per candle")
    p.add_argument("--bars", type=int, default=2000, help="rows per synthetic tape")
    p.add_argument("--log", type=Path, default=None, help="JSON lines of each close's send times")
    args = p.parse_args(argv)
    cfg = config(args.symbols, args.period_s, args.port, args.updates, args.bars)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the bench stops it
        asyncio.run(serve(cfg, args.log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
