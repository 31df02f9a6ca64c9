"""The served-path backtest's figures against hand-computed values."""

from __future__ import annotations

import math

import pytest

from service.paper.journal import AccountTerms
from service.paper.policy import PolicyConfig
from training.scoring.backtest import Close, buy_and_hold, curve_stats, merge, run, summarise

TERMS = AccountTerms(0, 2_000.0, 1_000.0, 10.0, 0.0, 0)  # 10 bps fee, no slippage


def close(sym: str, i: int, c: float, p: float, live: bool = True) -> Close:
    return Close(sym, "5", i * 300_000, c, p, 0.5, live)


def test_curve_stats_by_hand() -> None:
    s = curve_stats([110.0, 99.0], 100.0, 4.0)
    # per-bar PnL over the starting equity: +0.10, -0.11
    rets = [0.10, -0.11]
    mean = sum(rets) / 2
    std = math.sqrt(sum((r - mean) ** 2 for r in rets) / 2)
    assert s["sharpe"] == pytest.approx(mean / std * 2.0)
    assert s["max_drawdown"] == pytest.approx(1 - 99 / 110)
    # a sleeve that loses more than it had still has a Sharpe, and a negative one
    s = curve_stats([50.0, -10.0, -20.0], 100.0, 4.0)
    assert s["sharpe"] < 0 and s["max_drawdown"] == pytest.approx(1.2)


def test_buy_and_hold_pays_in_and_out() -> None:
    bh = buy_and_hold([100.0, 110.0], 1_000.0, 1_000.0, TERMS, 1.0)
    # 10 units; fee in 1.0, out 10 * 110 * 1e-3 = 1.1
    assert bh["net_return"] == pytest.approx((100.0 - 1.0 - 1.1) / 1_000.0)


def test_direction_round_trip_by_hand_and_flat_beside_it() -> None:
    warm = [close("BTCUSDT", i, 100.0, 0.5, live=False) for i in range(3)]
    live = [
        close("BTCUSDT", 3, 100.0, 0.9),  # long 10 at 100, fee 1.0
        close("BTCUSDT", 4, 110.0, 0.9),  # hold
        close("BTCUSDT", 5, 120.0, 0.5),  # flat: sell 10 at 120, +200, fee 1.2
    ]
    r = run(merge([warm + live]), PolicyConfig(name="direction"), TERMS)
    assert [(f.side, f.qty, f.price) for f in r.fills] == [
        ("buy", 10.0, 100.0),
        ("sell", 10.0, 120.0),
    ]
    assert r.times == [900_000, 1_200_000, 1_500_000]
    s = summarise(r, TERMS, "5")
    p = s["portfolio"]
    assert p["net_return"] == pytest.approx((200.0 - 2.2) / 2_000.0)
    assert p["fees"] == pytest.approx(2.2 / 2_000.0)
    assert p["round_trips"] == 1 and p["hit_rate"] == 1.0
    assert p["flat"] == {"net_return": 0.0}
    sym = s["symbols"]["BTCUSDT"]
    assert sym["net_return"] == pytest.approx((200.0 - 2.2) / 1_000.0)
    assert sym["buy_and_hold"]["net_return"] == pytest.approx((200.0 - 1.0 - 1.2) / 1_000.0)


def test_flat_never_trades() -> None:
    live = [close("BTCUSDT", i, 100.0 + i, 0.9) for i in range(5)]
    r = run(live, PolicyConfig(name="flat"), TERMS)
    assert r.fills == []
    assert summarise(r, TERMS, "5")["portfolio"]["net_return"] == 0.0


def test_cli_json_has_the_design_shape(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from training.scoring.backtest_cli import main

    argv = ["--policy", "direction", "--symbols", "BTCUSDT,ETHUSDT", "--json"]
    argv += ["--start", "2025-06-24", "--end", "2025-06-25", "--warmup-bars", "400"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"model", "policy", "period", "in_sample", "symbols", "portfolio"}
    assert set(out["model"]) == {"name", "version", "sha256"} and out["in_sample"] is False
    assert out["policy"] == "direction" and set(out["symbols"]) == {"BTCUSDT", "ETHUSDT"}
    result_keys = {
        "net_return",
        "gross_return",
        "fees",
        "round_trips",
        "hit_rate",
        "sharpe",
        "max_drawdown",
        "exposure",
        "turnover",
        "buy_and_hold",
        "flat",
    }
    for r in (out["portfolio"], *out["symbols"].values()):
        assert result_keys <= set(r)
        assert set(r["buy_and_hold"]) >= {"net_return", "sharpe", "max_drawdown"}
        assert r["flat"] == {"net_return": 0.0}
