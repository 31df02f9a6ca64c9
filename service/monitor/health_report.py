"""The figures behind ``GET /model/health``, from the monitor's state (pure, no I/O).

:func:`score_report`: per symbol and head the live scores over the last N scored candles,
the no-skill reference of the same window, the card's test figures and N.
:func:`drift_report`: PSI per feature of the pooled live feature vectors against the card's
training reference (:mod:`service.monitor.drift`).
"""

from __future__ import annotations

import math
from typing import Any

from service.features import FEATURE_NAMES
from service.model.card import HEADS, ModelCard
from service.monitor.drift import ALERT_PSI, LiveDrift, bins_of
from service.monitor.live_score import LiveScorer

CARD_FIGURES = ("accuracy", "log_loss", "brier", "auc")


def score_report(scorer: LiveScorer, card: ModelCard | None) -> dict[str, Any]:
    """{symbol: {head: {n, window, scored_total, live, no_skill, test, beats_no_skill}}}."""
    metrics = card.metrics if card is not None else {}
    out: dict[str, Any] = {}
    for sym in scorer.symbols:
        heads: dict[str, Any] = {}
        for head in HEADS:
            rep = scorer.report(sym, head)
            test = metrics.get(head)
            live, base = (None, None) if rep is None else rep
            heads[head] = {
                "n": 0 if live is None else live["n"],
                "window": scorer.window,
                "scored_total": scorer.scored_total(sym, head),
                "live": _rounded(live),
                "no_skill": _rounded(base),
                "test": {k: test[k] for k in CARD_FIGURES if isinstance(test.get(k), int | float)}
                if isinstance(test, dict)
                else None,
                "beats_no_skill": None
                if live is None or base is None
                else live["log_loss"] < base["log_loss"],
            }
        out[sym] = heads
    return out


def drift_report(live: LiveDrift, window_per_symbol: int, card: ModelCard | None) -> dict[str, Any]:
    """{n, window_per_symbol, alert_above, reference_rows, features: {name: PSI}, note}."""
    ref = card.feature_reference if card is not None else None
    n = len(live)
    out: dict[str, Any] = {
        "n": n,
        "window_per_symbol": window_per_symbol,
        "alert_above": ALERT_PSI,
        "reference_rows": None if ref is None else ref.rows,
        "features": {},
        "note": None,
    }
    if ref is None:
        out["note"] = "the model card has no feature_reference; drift cannot be measured"
        return out
    # bins once per reference (a reload brings a new card), counts kept by ``live``
    live.bind(ref, [_bins(ref.quantiles, ref.values.get(name)) for name in FEATURE_NAMES])
    for j, name in enumerate(FEATURE_NAMES):
        if ref.values.get(name) is None:
            out["features"][name] = None
            continue
        value = live.psi(j) if n else math.nan
        out["features"][name] = None if math.isnan(value) else round(value, 6)
    if n == 0:
        out["note"] = "no live feature vectors yet"
    return out


def _bins(levels: Any, q: Any) -> tuple[list[float], list[float]] | None:
    return None if q is None else bins_of(levels, q)


def _rounded(s: Any) -> dict[str, Any] | None:
    if s is None:
        return None
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()}
