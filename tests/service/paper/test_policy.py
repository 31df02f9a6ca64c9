"""Trading policies (DESIGN section 8): pure decisions against hand-worked cases."""

from __future__ import annotations

import math

import pytest

from service.paper.policy import PolicyConfig, PolicyError, check, resolve, target

COST = 2 * (5.5 + 1.0) / 1e4  # a round trip: 13 bps


def t(
    cfg: PolicyConfig,
    p: float,
    pv: float = 0.3,
    cur: float = 0.0,
    held: int = 0,
    ear: float = 0.002,
) -> float:
    return target(cfg, p, pv, cur, held, ear, COST)


def test_flat_never_trades() -> None:
    cfg = PolicyConfig(name="flat")
    assert t(cfg, 0.99) == 0.0 and t(cfg, 0.01, cur=1.0) == 0.0


def test_direction_is_the_seed_rule_and_holds_its_side() -> None:
    cfg = PolicyConfig(name="direction")
    assert t(cfg, 0.56) == 1.0 and t(cfg, 0.44) == -1.0 and t(cfg, 0.5) == 0.0
    assert t(cfg, 0.6, cur=1.0) == 1.0  # held, not resized
    assert t(cfg, 0.5, cur=1.0) == 0.0


def test_fee_aware_trades_only_past_the_cost() -> None:
    cfg = PolicyConfig(name="fee_aware", edge_multiple=2.0, min_hold_bars=3)
    # edge (2p - 1) * E|r|: at E|r| = 0.2 %, p = 0.9 gives 16 bps < 2 x 13 bps: no trade
    assert t(cfg, 0.9) == 0.0
    # E|r| = 1 %: p = 0.65 gives 30 bps > 26 bps: long
    assert t(cfg, 0.65, ear=0.01) == 1.0
    # in a long, an edge that turns negative closes it, but not before the minimum hold
    assert t(cfg, 0.45, cur=1.0, held=1, ear=0.01) == 1.0
    assert t(cfg, 0.45, cur=1.0, held=3, ear=0.01) == 0.0
    # an unknown E|r| never opens a trade
    assert t(cfg, 0.99, ear=math.nan) == 0.0


def test_vol_managed_scales_with_hysteresis_and_minimum_hold() -> None:
    cfg = PolicyConfig(name="vol_managed", vol_threshold=0.5, vol_band=0.1, min_hold_bars=2)
    assert t(cfg, 0.5, pv=0.3) == 1.0  # long base, calm
    assert t(cfg, 0.5, pv=0.55, cur=1.0, held=5) == 1.0  # inside the band: no switch
    assert t(cfg, 0.5, pv=0.65, cur=1.0, held=5) == 0.5  # past it: scaled down
    assert t(cfg, 0.5, pv=0.45, cur=0.5, held=5) == 0.5  # leaves only below 0.4
    assert t(cfg, 0.5, pv=0.35, cur=0.5, held=5) == 1.0
    assert t(cfg, 0.5, pv=0.35, cur=0.5, held=1) == 0.5  # not before the minimum hold
    d = PolicyConfig(name="vol_managed", vol_base="direction", min_hold_bars=0)
    assert t(d, 0.3, pv=0.9) == -0.5


def test_a_bad_policy_is_refused_with_a_reason() -> None:
    with pytest.raises(PolicyError, match="unknown policy"):
        check(PolicyConfig(name="yolo"))
    with pytest.raises(PolicyError, match="vol_scale"):
        check(PolicyConfig(vol_scale=2.0))


def test_resolve_override_then_card_then_flat() -> None:
    card = {"default": "vol_managed", "params": {"min_hold_bars": 7, "junk": 1}}
    cfg, src = resolve(None, card, 0.55, 0.45)
    assert cfg.name == "vol_managed" and cfg.min_hold_bars == 7 and "card" in src
    cfg, src = resolve("direction", card, 0.6, 0.4)
    assert cfg.name == "direction" and cfg.long_threshold == 0.6 and src == "APPRENTICE_POLICY"
    cfg, _ = resolve(None, None, 0.55, 0.45)
    assert cfg.name == "flat"
