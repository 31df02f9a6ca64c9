"""Split a symbol list across service replicas: each symbol to exactly one shard, stably.

    python deploy/shard_symbols.py --shards 2 BTCUSDT,ETHUSDT,SOLUSDT,XRPUSDT
    python deploy/shard_symbols.py --shards 2 --env BTCUSDT,ETHUSDT,...  >> .env

A symbol's shard is CRC-32 of its name modulo the number of shards: the same on every
machine and Python (unlike ``hash()``), and independent of the other symbols, so adding or
removing a symbol never moves another one to a different replica (each replica has its own
paper account and journal: a symbol that moved would start over there). The price of that
stability is balance: shards differ by a few symbols on small lists (about ±√(N/k)); the
output says how many each got. Changing the number of shards moves most symbols: do it
with the replicas stopped, as a new deployment.

``--env`` prints ``APPRENTICE_SYMBOLS_SHARD_<i>=...`` lines, the variables
``deploy/docker-compose.sharded.yml`` reads; without it, one comma-separated list per line.
Standard library only: it runs anywhere a shell does.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Sequence


def shard_of(symbol: str, shards: int) -> int:
    """The shard (0-based) that serves ``symbol``."""
    return zlib.crc32(symbol.encode("ascii")) % shards


def split(symbols: Sequence[str], shards: int) -> list[list[str]]:
    """``symbols`` split into ``shards`` lists, each in the input's order."""
    if shards < 1:
        raise ValueError("at least one shard")
    seen = set()
    out: list[list[str]] = [[] for _ in range(shards)]
    for sym in symbols:
        if sym in seen:
            raise ValueError(f"symbol {sym} repeats")
        seen.add(sym)
        out[shard_of(sym, shards)].append(sym)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    p = argparse.ArgumentParser(prog="python deploy/shard_symbols.py", description=__doc__)
    p.add_argument("symbols", help="comma-separated symbols, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--shards", type=int, default=2, help="number of replicas (default 2)")
    p.add_argument("--env", action="store_true", help="print APPRENTICE_SYMBOLS_SHARD_<i>=...")
    args = p.parse_args(argv)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    try:
        parts = split(symbols, args.shards)
    except ValueError as exc:
        p.error(str(exc))
    empty = [i for i, part in enumerate(parts) if not part]
    for i, part in enumerate(parts):
        line = ",".join(part)
        print(f"APPRENTICE_SYMBOLS_SHARD_{i}={line}" if args.env else line)
    sizes = ", ".join(f"shard {i}: {len(part)}" for i, part in enumerate(parts))
    print(f"# {len(symbols)} symbols, {sizes}", file=sys.stderr)
    if empty:
        print(f"# shard(s) {empty} got no symbol: use fewer shards", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
