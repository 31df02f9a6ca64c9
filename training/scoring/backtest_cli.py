"""``python -m training backtest``: a period through the served path, every policy beside
buy and hold and flat (DESIGN section 11).

The period: ``--start/--end`` (ISO dates, UTC, or ms) over the bundled files of ``--symbols``,
or ``--data FILE...``; by default the model card's test span on the card's symbols (bars the
model never trained or validated on). Bars before the start in the same file warm the
features (``--warmup-bars``, default all). ``--json`` prints DESIGN section 11's object (a list
of them with ``--policy all``); ``--png`` draws the portfolio equity of each policy and of buy
and hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.market.kline_io import DATA_DIR, load_klines
from service.market.klines import KlineTable, interval_ms
from service.model.card import sample_period
from service.model.predictor import Predictor
from service.paper.journal import AccountTerms
from service.paper.policy import POLICIES, resolve
from training.data.journal import journal_tables, open_journal
from training.scoring.backtest import Close, merge, run, score, summarise

DEFAULT_MODEL = Path("models/student_pooled_5m.onnx")


def parse_ms(text: str) -> int:
    """ms since the epoch from digits, or an ISO date/time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def iso(ms: int) -> str:
    """ms → ``YYYY-MM-DD HH:MM`` UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def bundled_table(symbol: str, interval: str, first_ms: int, last_ms: int) -> KlineTable:
    """The bundled file of ``symbol`` that holds the period (there may be several)."""
    token = "1d" if interval == "D" else f"{interval}m"
    for path in sorted(DATA_DIR.glob(f"bybit_linear_{symbol}_{token}_*.csv.gz")):
        t = load_klines(path, drop_last_unconfirmed=True)
        if len(t) and int(t.start[0]) <= first_ms and int(t.start[-1]) >= last_ms:
            return t
    raise SystemExit(
        f"backtest: no bundled {symbol} {token} file holds {iso(first_ms)} → {iso(last_ms)}"
    )


def in_sample(card: Any, symbols: Sequence[str], first_ms: int, last_ms: int) -> bool:
    """Does the period overlap the card's training or validation span on one of its symbols
    (``service.model.card.sample_period``, what the service's page says too)?"""
    return bool(sample_period(card, symbols, first_ms, last_ms)["in_sample"])


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m training backtest", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the student .onnx")
    p.add_argument("--policy", default=None, help=f"{', '.join(POLICIES)} or all (default: card's)")
    p.add_argument("--symbols", default=None, help="comma-separated (default: the card's)")
    p.add_argument("--start", type=parse_ms, default=None, help="first traded candle (UTC)")
    p.add_argument("--end", type=parse_ms, default=None, help="last traded candle (UTC)")
    p.add_argument("--data", nargs="+", type=Path, default=None, help="kline CSV files instead")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="a service's state directory: the klines its signal journal holds (REST warm-up "
        "and live), trading from its first live candle",
    )
    p.add_argument("--warmup-bars", type=int, default=0, help="bars before the start (0: all)")
    p.add_argument("--initial-usdt", type=float, default=None, help="default: notional × symbols")
    p.add_argument("--notional-usdt", type=float, default=1_000.0, help="per symbol")
    p.add_argument("--fee-bps", type=float, default=5.5, help="taker fee per fill")
    p.add_argument("--slippage-bps", type=float, default=1.0, help="adverse fill slippage")
    p.add_argument("--json", action="store_true", help="print JSON (DESIGN section 11)")
    p.add_argument("--png", type=Path, default=None, help="write the equity curves here")
    return p


def journaled(
    state_dir: Path, symbols: Sequence[str] | None, interval: str
) -> tuple[list[KlineTable], int]:
    """The service's journaled klines per symbol and its first live (websocket) candle."""
    tables = journal_tables(state_dir, symbols, interval)
    if not tables:
        raise SystemExit(f"backtest: no {interval} klines journaled in {state_dir}")
    journal = open_journal(state_dir)
    try:
        live = [
            r.start for t in tables for r in journal.klines(t.symbol, interval) if r.source == "ws"
        ]
    finally:
        journal.close()
    if not live:
        raise SystemExit(f"backtest: {state_dir} journaled no live candle")
    return tables, min(live)


def load_period(args: argparse.Namespace, card: Any) -> tuple[list[KlineTable], int, int]:
    """The tables and the traded period [first_ms, last_ms]."""
    span = card.data_span or {}
    if args.state_dir:
        symbols = args.symbols.split(",") if args.symbols else None
        tables, live_from = journaled(args.state_dir, symbols, card.interval)
        first = args.start if args.start is not None else live_from
        last = args.end if args.end is not None else min(int(t.start[-1]) for t in tables)
    elif args.data:
        tables = [load_klines(p, drop_last_unconfirmed=True) for p in args.data]
        first = args.start if args.start is not None else int(tables[0].start[0])
        last = args.end if args.end is not None else min(int(t.start[-1]) for t in tables)
    else:
        symbols = args.symbols.split(",") if args.symbols else list(card.symbols)
        first = args.start if args.start is not None else int(span["test_first_ms"])
        last = args.end if args.end is not None else int(span["test_last_ms"])
        tables = [bundled_table(s, card.interval, first, last) for s in symbols]
    if args.warmup_bars:
        step = interval_ms(tables[0].interval)
        tables = [t.between(first - args.warmup_bars * step, last) for t in tables]
    return tables, first, last


def backtest_all(
    predictor: Predictor,
    tables: Sequence[KlineTable],
    first: int,
    last: int,
    policies: Sequence[str],
    terms: AccountTerms,
    long_threshold: float = 0.55,
    short_threshold: float = 0.45,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score once, then run every policy over the same closes: {policy: (Run, summary)}.
    Policy parameters: ``params`` when given, else the card's."""
    stream: list[Close] = merge(score(predictor, t, first, last) for t in tables)
    out: dict[str, Any] = {}
    source = {"params": params} if params is not None else predictor.card.policy
    for name in policies:
        cfg, _ = resolve(name, source, long_threshold, short_threshold)
        r = run(stream, cfg, terms)
        out[name] = (r, summarise(r, terms, tables[0].interval))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    predictor = Predictor.load(args.model)
    card = predictor.card
    tables, first, last = load_period(args, card)
    default = (card.policy or {}).get("default") or "flat"
    policies = list(POLICIES) if args.policy == "all" else [args.policy or default]
    initial = args.initial_usdt or args.notional_usdt * len(tables)
    terms = AccountTerms(0, initial, args.notional_usdt, args.fee_bps, args.slippage_bps, 0)
    runs = backtest_all(predictor, tables, first, last, policies, terms)
    symbols = [t.symbol for t in tables]
    objs = []
    for name, (r, summary) in runs.items():
        objs.append(
            {
                "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
                "policy": name,
                "period": {"first_ms": r.times[0] if r.times else first, "last_ms": last},
                "in_sample": in_sample(card, symbols, first, last),
                "sharpe_annualisation": "sqrt(bars per year), per-bar returns",
                **summary,
            }
        )
    if args.png:
        plot(runs, args.png, terms)
    if args.json:
        print(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2))
        return 0
    o = objs[0]
    sample = "IN SAMPLE" if o["in_sample"] else "out of sample"
    print(
        f"{card.name} {card.version}: {', '.join(symbols)} {iso(first)} → {iso(last)} UTC "
        f"({sample}); fee {args.fee_bps} bps + slippage {args.slippage_bps} bps per fill"
    )
    print(table(objs))
    return 0


def table(objs: Sequence[dict[str, Any]]) -> str:
    """A markdown table: each policy's portfolio beside buy and hold and flat."""
    rows = [
        "| policy | net | gross | fees | fees / 30 d | fills | round trips | Sharpe [95 %] |"
        " max DD | exposure | buy & hold net | B&H Sharpe [95 %] | B&H max DD | flat |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def sharpe(x: dict[str, Any]) -> str:
        lo, hi = x.get("sharpe_95", [float("nan")] * 2)
        return f"{x['sharpe']:.2f} [{lo:.1f}, {hi:.1f}]"

    for o in objs:
        p, bh = o["portfolio"], o["portfolio"]["buy_and_hold"]
        rows.append(
            f"| {o['policy']} | {p['net_return']:+.2%} | {p['gross_return']:+.2%} | "
            f"{p['fees']:.2%} | {p['fees_per_30d']:.2%} | {p['fills']} | {p['round_trips']} | "
            f"{sharpe(p)} | {p['max_drawdown']:.2%} | {p['exposure']:.2f} | "
            f"{bh['net_return']:+.2%} | {sharpe(bh)} | {bh['max_drawdown']:.2%} | +0.00% |"
        )
    return "\n".join(rows)


def plot(runs: dict[str, Any], path: Path, terms: AccountTerms) -> None:
    """Portfolio equity of each policy and of buy and hold, against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, (r, _) in runs.items():
        ax.plot(np.array(r.times, dtype="datetime64[ms]"), r.equity, label=name, lw=1)
    r0 = next(iter(runs.values()))[0]
    times = np.array(r0.times, dtype="datetime64[ms]")
    bh = [terms.initial_usdt] * len(times)
    for closes in r0.closes.values():
        if closes:
            q = terms.notional_usdt / closes[0]
            for k in range(min(len(closes), len(bh))):
                bh[k] += q * (closes[k] - closes[0])
    ax.plot(times, bh, label="buy and hold (before costs)", lw=1, color="black", ls="--")
    ax.set_ylabel("equity, USDT")
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
