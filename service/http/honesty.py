"""What the page and ``/model/health`` say about how far to trust what they show (issue 28).

Three sentences, each computed from the model card and the running service, never
hard-coded: the period of the live candles and whether it overlaps the model's training or
validation span (:func:`service.model.card.sample_period`); the paper policy in force and why
(the card's validation figures; "flat" when nothing beat doing nothing); and what the feature
drift means (which features moved, against which reference, what to do).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.model.card import ModelCard, sample_period
from service.runtime import Runtime


def _day(ms: int | None) -> str:
    return "?" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def live_period(rt: Runtime, card: ModelCard) -> dict[str, Any]:
    """The live (traded, scored) candles so far: the paper account's first and last, else
    the newest live signal's candle."""
    first = last = None
    if rt.trader is not None and rt.trader.account.first_live_ms is not None:
        first, last = rt.trader.account.first_live_ms, rt.trader.account.last_live_ms
    else:
        starts = [
            s.candle_start
            for s in (rt.store.latest(sym) for sym in rt.store.symbols)
            if s is not None and s.live
        ]
        if starts:
            first, last = min(starts), max(starts)
    return sample_period(card, rt.settings.symbols, first, last)


def policy_note(rt: Runtime, card: ModelCard) -> dict[str, Any]:
    """The policy in force, where it came from, and one sentence a trader can read."""
    name = rt.trader.account.policy.name if rt.trader is not None else None
    chosen = card.policy or {}
    figures = (chosen.get("validation") or {}).get("figures") or {}
    shown = ", ".join(f"{k} {v['net_return']:+.1%}" for k, v in figures.items() if k != "flat")
    if name is None:
        text = "Paper trading is off (APPRENTICE_PAPER_ENABLED=false)."
    elif name == "flat" and chosen and not chosen.get("beats_flat", False):
        text = (
            "Paper trading is flat: no policy beat doing nothing on the model's validation "
            f"bars after fees and slippage ({shown}); set APPRENTICE_POLICY to watch one anyway."
        )
    elif name == "flat":
        text = "Paper trading is flat: the model card names no validated policy."
    elif rt.policy_source == "APPRENTICE_POLICY" and chosen.get("default") not in (None, name):
        text = (
            f"Paper trading policy {name}, set by APPRENTICE_POLICY against the card's "
            f"default {chosen.get('default')}"
            + (f" (validation, net of costs: {shown})" if shown else "")
            + "."
        )
    else:
        text = f"Paper trading policy {name}, from the {rt.policy_source}."
    return {
        "name": name,
        "source": rt.policy_source or None,
        "card_default": chosen.get("default"),
        "beats_flat_on_validation": chosen.get("beats_flat"),
        "statement": text,
    }


def drift_note(drift: dict[str, Any], card: ModelCard) -> str:
    """Which features moved past the alert, against which reference, and what to do."""
    if drift.get("note"):
        return str(drift["note"])
    alert = float(drift["alert_above"])
    moved = sorted(
        ((v, k) for k, v in drift["features"].items() if v is not None and v > alert),
        reverse=True,
    )
    span = card.data_span or {}
    lo, hi = _day(span.get("train_first_ms")), _day(span.get("train_last_ms"))
    ref = f"the model's training rows ({lo} → {hi})"
    if not moved:
        return f"No feature has moved past PSI {alert:g} against {ref}."
    names = ", ".join(f"{k} {v:.2f}" for v, k in moved[:4])
    return (
        f"{len(moved)} of {len(drift['features'])} features moved past PSI {alert:g} against "
        f"{ref}: {names}. The live market is unlike what the model learnt from (a calmer or "
        "wilder regime: volatility and range features move first), so trust its scores less; "
        "if it persists over days, retrain on recent data (python -m training refresh)."
    )
