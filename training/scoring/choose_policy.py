"""``python -m training policy``: choose the default trading policy on validation bars.

Runs the rule of ``configs/policy.toml`` (its comment states it; it was written before it
ran): every candidate through the served-path backtest over the model card's validation span
only, net of fees and slippage; eligible when it beats flat, keeps its fees within the budget
and has a Sharpe at least buy and hold's; the eligible one with the highest net return wins,
else flat. ``--write-card`` records the choice, its validation figures and the rule in the
card (``policy``); the ONNX file, and so the card's sha256, is untouched: nothing is retrained.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.model.card import ModelCard
from service.model.predictor import Predictor
from service.paper.journal import AccountTerms
from training.scoring.backtest_cli import DEFAULT_MODEL, backtest_all, bundled_table, iso

DAY_MS = 86_400_000


def eligible(summary: dict[str, Any], days: float, rule: dict[str, Any]) -> tuple[bool, str]:
    """Whether one candidate's portfolio passes the rule, and why (not)."""
    p = summary["portfolio"]
    bh = p["buy_and_hold"]
    fees_30d = p["fees"] * 30.0 / max(days, 1e-9)
    if p["net_return"] <= rule.get("min_net_return", 0.0):
        return False, f"net {p['net_return']:+.2%} does not beat flat"
    if fees_30d > rule["max_fees_per_30d"]:
        return False, f"fees {fees_30d:.2%} of equity per 30 days over the budget"
    if rule.get("sharpe_at_least_buy_and_hold", True) and p["sharpe"] < bh["sharpe"]:
        return False, f"Sharpe {p['sharpe']:.2f} below buy and hold's {bh['sharpe']:.2f}"
    return True, "eligible"


def choose(config: dict[str, Any], model: Path) -> dict[str, Any]:
    """Run the rule; returns the card's ``policy`` object."""
    rule, costs, params = config["selection"], config["costs"], config["params"]
    predictor = Predictor.load(model)
    card = predictor.card
    span = card.data_span
    first, last = int(span["val_first_ms"]), int(span["val_last_ms"])
    tables = [bundled_table(s, card.interval, first, last) for s in card.symbols]
    notional = float(costs["notional_usdt"])
    terms = AccountTerms(
        0, notional * len(tables), notional, costs["fee_bps"], costs["slippage_bps"], 0
    )
    runs = backtest_all(
        predictor,
        tables,
        first,
        last,
        rule["candidates"],
        terms,
        params["long_threshold"],
        params["short_threshold"],
        params=params,
    )
    days = (last - first) / DAY_MS
    figures: dict[str, Any] = {}
    best, best_net = "flat", 0.0
    for name, (_, summary) in runs.items():
        ok, why = eligible(summary, days, rule) if name != "flat" else (False, "the control")
        p = summary["portfolio"]
        figures[name] = {
            "net_return": p["net_return"],
            "fees": p["fees"],
            "sharpe": p["sharpe"],
            "max_drawdown": p["max_drawdown"],
            "round_trips": p["round_trips"],
            "buy_and_hold": p["buy_and_hold"],
            "verdict": why,
        }
        if ok and p["net_return"] > best_net:
            best, best_net = name, p["net_return"]
    return {
        "default": best,
        "params": params,
        "rule": "configs/policy.toml: validation span only, net of costs; beats flat, fees "
        f"within {rule['max_fees_per_30d']:.0%} of equity per 30 days, Sharpe at least buy and "
        "hold's; highest net return, else flat",
        "validation": {
            "first_ms": first,
            "last_ms": last,
            "symbols": list(card.symbols),
            "fee_bps": costs["fee_bps"],
            "slippage_bps": costs["slippage_bps"],
            "figures": figures,
        },
        "beats_flat": best != "flat",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m training policy", description=__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/policy.toml"))
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--write-card", action="store_true", help="record the choice in the card")
    args = ap.parse_args(argv)
    config = tomllib.loads(args.config.read_text())
    chosen = choose(config, args.model)
    v = chosen["validation"]
    print(f"validation {iso(v['first_ms'])} → {iso(v['last_ms'])} UTC, {', '.join(v['symbols'])}")
    for name, f in v["figures"].items():
        print(
            f"  {name:<12} net {f['net_return']:+.2%} fees {f['fees']:.2%} Sharpe "
            f"{f['sharpe']:.2f} (buy and hold {f['buy_and_hold']['sharpe']:.2f}): {f['verdict']}"
        )
    print(f"default policy: {chosen['default']}")
    if args.write_card:
        path = args.model.with_suffix(".json")
        card = ModelCard.load(path)
        card.policy = chosen
        card.save(path)  # the card's own writer: every other field byte for byte as it was
        print(f"recorded in {path} (sha256 {card.sha256[:12]}… unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
