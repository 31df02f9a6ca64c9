"""``python -m training fetch``: download Bybit klines (REST, paginated) into a CSV file.

Uses the service's REST client (pybit underneath): windows of at most 1000 candles, rows
reversed to oldest first, the still-open candle dropped by the server's time, ``retCode``
errors raised with Bybit's message. The file has the layout ``service.market.kline_io`` writes and
reads (``timestamp,open,high,low,close,volume,turnover``, epoch ms), validated before it is
written. Example (needs internet)::

    python -m training fetch --symbol BTCUSDT --interval 5 --days 30
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from service.market.bybit import MAINNET_REST_URL
from service.market.kline_io import find_gaps, validate_table, write_klines_csv
from service.market.klines import VALID_INTERVALS, KlineError, KlineTable, interval_ms
from service.market.rest import ConfigError, RestError, RestKlines

DEFAULT_DIR = Path("data") / "fetched"
DAY_MS = 86_400_000


def _utc_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y%m%d")


def default_path(symbol: str, interval: str, start_ms: int, end_ms: int) -> Path:
    """``data/fetched/bybit_linear_BTCUSDT_5m_20250403-20250502.csv.gz`` (the bundle's naming)."""
    token = "1d" if interval == "D" else f"{interval}m"
    return DEFAULT_DIR / f"bybit_linear_{symbol}_{token}_{_day(start_ms)}-{_day(end_ms)}.csv.gz"


def build_parser() -> argparse.ArgumentParser:
    """The ``fetch`` command line."""
    p = argparse.ArgumentParser(
        prog="python -m training fetch",
        description="Download closed Bybit linear klines via GET /v5/market/kline into a CSV.",
    )
    p.add_argument("--symbol", required=True, help="upper-case Bybit symbol, e.g. BTCUSDT")
    p.add_argument("--interval", default="5", choices=VALID_INTERVALS, help="Bybit interval")
    p.add_argument("--days", type=float, default=30.0, help="how far back from --end")
    p.add_argument("--end", type=_utc_ms, default=None, help="last time (ISO UTC or ms); now")
    p.add_argument("--out", type=Path, default=None, help="output .csv or .csv.gz")
    p.add_argument("--rest-url", default=MAINNET_REST_URL, help="REST base URL")
    return p


def main(argv: list[str] | None = None) -> int:
    """Fetch, validate, write; 0 on success, 2 for a configuration error, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.days <= 0:
        print("fetch: --days must be positive", file=sys.stderr)
        return 2
    step = interval_ms(args.interval)
    end_ms = args.end if args.end is not None else int(time.time() * 1000)
    start_ms = end_ms - int(args.days * DAY_MS)
    rest = RestKlines(args.rest_url)
    print(
        f"fetching {args.symbol} {args.interval} from {args.rest_url} ({args.days:g} days)",
        flush=True,
    )
    try:
        klines = rest.fetch_range_sync(args.symbol, args.interval, start_ms, end_ms)
    except ConfigError as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 2
    except RestError as e:
        print(f"fetch: request failed: {e}", file=sys.stderr)
        return 1
    if not klines:
        print(f"fetch: the exchange returned no closed klines for {args.symbol}", file=sys.stderr)
        return 1
    table = KlineTable.from_klines(args.symbol, args.interval, klines)
    out = args.out or default_path(
        args.symbol, args.interval, int(table.start[0]), int(table.start[-1])
    )
    try:
        validate_table(table, source=f"{args.rest_url} {args.symbol}", step_ms=step)
    except KlineError as e:
        print(f"fetch: refusing to write invalid data: {e}", file=sys.stderr)
        return 1
    gaps = find_gaps(table)
    write_klines_csv(table, out)
    missing = sum(g.missing for g in gaps)
    print(
        f"wrote {len(table)} klines {_day(int(table.start[0]))}..{_day(int(table.start[-1]))} "
        f"to {out} in {rest.requests_made} requests; {len(gaps)} gaps ({missing} bars missing)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
