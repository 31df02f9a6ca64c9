"""``python -m service.replay``: serve bundled Bybit klines as a live exchange on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import fields
from datetime import datetime

from service.replay.exchange import ReplayConfig, ReplayExchange
from service.replay.faults import Faults
from service.replay.hostile import MODES, HostileRest


def _start_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--start {text!r} needs a UTC offset, e.g. +00:00")
    return int(dt.timestamp() * 1000)


def faults_help() -> str:
    """Every fault the exchange knows: what it does and what ``all`` sets it to (read from
    :class:`Faults` itself, so the list cannot go stale)."""
    everything = Faults.all()
    rows = [f"  {'name':<19} {'all':<6} what it does"]
    for f in fields(Faults):
        value = getattr(everything, f.name)
        shown = "+".join(sorted(value)) or "-" if isinstance(value, frozenset) else str(value)
        rows.append(f"  {f.name:<19} {shown:<6} {f.metadata.get('help', '')}")
    return (
        "faults: --faults none | all | name=value,... (e.g. all,gap=0.2,disconnect=0);\n"
        "rates are probabilities per event, off (0) unless given; reject_topics takes\n"
        "+-separated topics, e.g. reject_topics=kline.5.XRPUSDT\n" + "\n".join(rows)
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m service.replay",
        description="Bybit v5 public websocket + GET /v5/market/kline on one loopback port, "
        "driven by the bundled real klines on a virtual clock.",
        epilog=faults_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = " (default: %(default)s)"
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT", help="comma-separated" + d)
    p.add_argument("--interval", default="5", help="interval of the bundled files, 1 or 5" + d)
    p.add_argument("--speed", type=float, default=300.0, help="virtual seconds per real second" + d)
    p.add_argument("--host", default="127.0.0.1", help="listen address" + d)
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port" + d)
    p.add_argument(
        "--start",
        type=_start_ms,
        default=None,
        help="virtual start, ISO time with offset or ms (default: --history-bars after the "
        "first bundled bar)",
    )
    p.add_argument(
        "--history-bars", type=int, default=1000, help="closed bars before the start" + d
    )
    p.add_argument(
        "--updates-per-candle", type=int, default=4, help="confirm=false pushes per candle" + d
    )
    p.add_argument(
        "--faults",
        type=Faults.parse,
        default="none",
        help="none | all | name=value,... (names below)" + d,
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fault generator" + d)
    p.add_argument(
        "--push-jitter-ms",
        type=float,
        default=4.0,
        help="extra real delay of each push, uniform in [0, N) ms, as network delay varies "
        "(0: exactly on the schedule, whose real period is a whole number of the VM's 4 ms "
        "timer ticks, so every push of a run lands at one phase of them)" + d,
    )
    p.add_argument(
        "--hostile",
        metavar="SYMBOL:MODE",
        help="also serve REST on a second port where SYMBOL's answers misbehave, MODE one of "
        f"{', '.join(MODES)} (service.replay.hostile); point APPRENTICE_REST_URL at it",
    )
    return p


async def _serve(cfg: ReplayConfig, hostile_spec: str | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with ReplayExchange(cfg) as ex:
        start = datetime.fromtimestamp(ex.start_ms / 1000).astimezone().isoformat()
        print(f"replay exchange: ws {ex.ws_url}  rest {ex.rest_url}", flush=True)
        hostile = None
        if hostile_spec:
            symbol, _, mode = hostile_spec.partition(":")
            hostile = HostileRest(target=symbol, mode=mode or "hang")
            await hostile.start(ex)
            print(f"  hostile rest {hostile.url} ({symbol}: {hostile.mode})", flush=True)
        print(
            f"  symbols {','.join(cfg.symbols)} interval {cfg.interval} speed {cfg.speed}x "
            f"from {start}; faults {cfg.faults}",
            flush=True,
        )
        await stop.wait()
        if hostile is not None:
            await hostile.stop()
        print(f"replay exchange: stopping; stats {dict(ex.stats)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    cfg = ReplayConfig(
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        interval=args.interval,
        speed=args.speed,
        host=args.host,
        port=args.port,
        start_ms=args.start,
        history_bars=args.history_bars,
        updates_per_candle=args.updates_per_candle,
        faults=args.faults,
        seed=args.seed,
        push_jitter_ms=args.push_jitter_ms,
    )
    try:
        asyncio.run(_serve(cfg, args.hostile))
    except (FileNotFoundError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
