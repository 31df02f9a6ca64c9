"""``python -m training journal``: the service's signal journal as training/evaluation data.

The live service journals every closed kline it used to ``STATE_DIR/signals.sqlite3``
(:mod:`service.monitor.signal_journal`). This command exports them per symbol to the bundled CSV
layout (``timestamp,open,high,low,close,volume,turnover``, epoch ms) under a name the loader
understands, so any experiment trains or evaluates on what the service saw::

    python -m training journal --state-dir state/demo --out runs/journal
    python -m training teacher --config configs/teacher.toml \\
        --set data.path=runs/journal/bybit_linear_BTCUSDT_5m_journal.csv

The export is validated like any kline file (on the grid, sorted, no duplicates); gaps from
service downtime stay gaps, as in the exchange's own history.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from service.market.kline_io import find_gaps, validate_table, write_klines_csv
from service.market.klines import KlineTable
from service.monitor.signal_journal import JOURNAL_FILE, SignalJournal


def export_name(symbol: str, interval: str) -> str:
    """The bundled naming scheme, so ``load_klines`` infers symbol and interval."""
    token = "1d" if interval == "D" else f"{interval}m"
    return f"bybit_linear_{symbol}_{token}_journal.csv"


def open_journal(state_dir: Path) -> SignalJournal:
    """The service's journal in ``state_dir``; FileNotFoundError when there is none."""
    path = Path(state_dir) / JOURNAL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no signal journal at {path} (run the service with this state dir)"
        )
    journal = SignalJournal(Path(state_dir))
    journal.open()
    return journal


def journal_tables(
    state_dir: Path, symbols: Sequence[str] | None = None, interval: str | None = None
) -> list[KlineTable]:
    """Every (symbol, interval) of the journal as a validated table, sorted by symbol."""
    journal = open_journal(state_dir)
    try:
        out = []
        for sym in journal.symbols():
            if symbols and sym not in symbols:
                continue
            for iv in journal.intervals(sym):
                if interval is not None and iv != interval:
                    continue
                table = journal.table(sym, iv)
                validate_table(table, source=str(journal.path))
                out.append(table)
        return out
    finally:
        journal.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training journal",
        description="Export the service's journaled klines (STATE_DIR/signals.sqlite3) to "
        "kline CSVs that data.path reads.",
    )
    p.add_argument(
        "--state-dir", type=Path, required=True, help="the service's APPRENTICE_STATE_DIR"
    )
    p.add_argument("--out", type=Path, default=Path("runs/journal"), help="output directory")
    p.add_argument("--symbol", action="append", help="only this symbol (repeatable)")
    p.add_argument("--interval", help="only this interval (Bybit spelling, e.g. 5)")
    args = p.parse_args(argv)
    try:
        tables = journal_tables(args.state_dir, args.symbol, args.interval)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not tables:
        print("error: the journal holds no klines for that selection", file=sys.stderr)
        return 2
    for t in tables:
        path = write_klines_csv(t, args.out / export_name(t.symbol, t.interval))
        gaps = find_gaps(t)
        print(
            f"{t.symbol} {t.interval}: {len(t)} klines, {len(gaps)} gaps -> {path}\n"
            f"  train on it: --set data.path={path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
