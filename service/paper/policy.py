"""Trading policies (DESIGN section 8): a signal's two heads → a target position, pure.

A policy turns one closed candle's probabilities into a **target fraction** of the configured
notional per symbol (+1 long the whole notional, −0.5 short half of it, 0 flat). It is a pure
function of its configuration and of what the account already knows about the symbol (the
current target, how many bars it has been held, the recent mean absolute bar return), so the
paper trader and the backtest (``training.scoring.backtest``) call the very same code.

* ``direction``: the seed's rule, long at p_up ≥ long_threshold, short at ≤ short_threshold,
  else flat; while the side is unchanged the position is held.
* ``fee_aware``: the expected next-bar return of a calibrated P(up) is (2p − 1)·E|r|, E|r| the
  recent mean absolute bar return. Enter (or flip) only when it exceeds ``edge_multiple`` ×
  the round-trip cost (fees + slippage, both sides); once in, hold for at least
  ``min_hold_bars`` and while the expected return still points the position's way; else flat.
* ``vol_managed``: a base exposure (``vol_base``: always long, or the direction rule's side)
  scaled to ``vol_scale`` in the high-volatility regime. The regime has hysteresis (enter at
  P(high vol) ≥ threshold + band, leave below threshold − band) and a change waits until the
  position has been held ``min_hold_bars``: switching every bar pays more in fees than the
  forecast earns (issue 28).
* ``flat``: never trades; the control every other policy is measured against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

DIRECTION = "direction"
FEE_AWARE = "fee_aware"
VOL_MANAGED = "vol_managed"
FLAT = "flat"
POLICIES = (DIRECTION, FEE_AWARE, VOL_MANAGED, FLAT)
VOL_BASES = ("long", "direction")
RETURN_WINDOW = 48  # bars in the mean absolute return E|r| (the account keeps them)


class PolicyError(ValueError):
    """An unknown policy name or a parameter outside its range; the message says which."""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """A policy and its parameters; :func:`check` validates them."""

    name: str = DIRECTION
    long_threshold: float = 0.55
    short_threshold: float = 0.45
    edge_multiple: float = 2.0
    min_hold_bars: int = 12
    vol_threshold: float = 0.5
    vol_band: float = 0.1
    vol_scale: float = 0.5
    vol_base: str = "long"

    def with_name(self, name: str) -> PolicyConfig:
        """The same parameters under another policy."""
        return check(replace(self, name=name))


def check(cfg: PolicyConfig) -> PolicyConfig:
    """Return ``cfg`` or raise :class:`PolicyError` naming what is wrong."""
    if cfg.name not in POLICIES:
        raise PolicyError(f"unknown policy {cfg.name!r}; use one of {', '.join(POLICIES)}")
    if not 0.0 < cfg.short_threshold <= cfg.long_threshold < 1.0:
        raise PolicyError("thresholds must satisfy 0 < short_threshold <= long_threshold < 1")
    if not (math.isfinite(cfg.edge_multiple) and cfg.edge_multiple >= 0.0):
        raise PolicyError("edge_multiple must be a finite number >= 0")
    if not 0 <= cfg.min_hold_bars <= 100_000:
        raise PolicyError("min_hold_bars must be within [0, 100000]")
    if not (0.0 < cfg.vol_threshold < 1.0 and 0.0 <= cfg.vol_band < 0.5):
        raise PolicyError("vol_threshold must be in (0, 1) and vol_band in [0, 0.5)")
    if not 0.0 <= cfg.vol_scale <= 1.0:
        raise PolicyError("vol_scale must be within [0, 1]")
    if cfg.vol_base not in VOL_BASES:
        raise PolicyError(f"vol_base must be one of {', '.join(VOL_BASES)}")
    return cfg


def _sign(x: float) -> int:
    return (x > 0.0) - (x < 0.0)


def direction_side(cfg: PolicyConfig, p_up: float) -> int:
    """+1, −1 or 0 from the direction head and the two thresholds (the seed's rule)."""
    if p_up >= cfg.long_threshold:
        return 1
    if p_up <= cfg.short_threshold:
        return -1
    return 0


def expected_return(p_up: float, mean_abs_return: float) -> float:
    """E[next-bar return] of a calibrated P(up) when up and down moves are alike in size."""
    return (2.0 * p_up - 1.0) * mean_abs_return


def target(
    cfg: PolicyConfig,
    p_up: float,
    p_high_vol: float,
    current: float,
    held_bars: int,
    mean_abs_return: float,
    round_trip_cost: float,
) -> float:
    """The target fraction of the notional for the next bar.

    ``current`` is the target in force, ``held_bars`` the bars since it was set, ``mean_abs_return``
    E|r| over the recent bars (NaN until known: no trade on an unknown edge), ``round_trip_cost``
    the fraction a round trip pays (2 × (fee + slippage)). A non-finite probability that the
    policy reads keeps the current target."""
    name = cfg.name
    if name == FLAT:
        return 0.0
    uses_vol = name == VOL_MANAGED
    uses_up = name != VOL_MANAGED or cfg.vol_base == "direction"
    if (uses_up and not math.isfinite(p_up)) or (uses_vol and not math.isfinite(p_high_vol)):
        return current
    side = _sign(current)
    if name == DIRECTION:
        want = direction_side(cfg, p_up)
        return current if want == side else float(want)
    locked = side != 0 and held_bars < cfg.min_hold_bars
    if name == FEE_AWARE:
        if not math.isfinite(mean_abs_return):
            return current
        edge = expected_return(p_up, mean_abs_return)
        if abs(edge) > cfg.edge_multiple * round_trip_cost and _sign(edge) != side:
            return current if locked else float(_sign(edge))
        if side != 0 and _sign(edge) != side and not locked:
            return 0.0  # the expected return no longer points our way: out
        return current
    # VOL_MANAGED
    base = 1 if cfg.vol_base == "long" else direction_side(cfg, p_up)
    high_now = side != 0 and abs(current) < 1.0  # the scaled exposure marks the high regime
    if high_now:
        high = p_high_vol >= cfg.vol_threshold - cfg.vol_band
    else:
        high = p_high_vol >= cfg.vol_threshold + cfg.vol_band
    want_frac = base * (cfg.vol_scale if high else 1.0)
    if want_frac == current or locked:
        return current
    return float(want_frac)


def resolve(
    override: str | None,
    card_policy: dict[str, Any] | None,
    long_threshold: float,
    short_threshold: float,
) -> tuple[PolicyConfig, str]:
    """The policy in force and where it came from: ``APPRENTICE_POLICY`` when set, else the
    model card's default (chosen on validation bars by training), else ``flat`` (a card
    that names none has no validated policy: trading nothing is the honest default).

    The card's parameters apply (the default was validated with them); the direction
    thresholds are the service's settings."""
    params = dict((card_policy or {}).get("params") or {})
    known = {f for f in PolicyConfig.__dataclass_fields__ if f != "name"}
    kwargs = {k: v for k, v in params.items() if k in known}
    kwargs.update(long_threshold=long_threshold, short_threshold=short_threshold)
    if override:
        name, source = override, "APPRENTICE_POLICY"
    elif card_policy and card_policy.get("default"):
        name, source = (
            str(card_policy["default"]),
            "model card's default, chosen on validation bars",
        )
    else:
        name, source = FLAT, "no policy on the model card: flat"
    return check(PolicyConfig(name=name, **kwargs)), source
