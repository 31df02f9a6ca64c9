"""The signal decision rule and the store."""

from __future__ import annotations

import pytest

from service.pipeline.signals import SignalStore, action_of, confidence_of, direction_of


@pytest.mark.parametrize(
    ("p", "direction", "action", "confidence"),
    [
        (0.9, "up", "long", 0.8),
        (0.55, "up", "long", 0.1),
        (0.54, "up", "flat", 0.08),
        (0.5, "up", "flat", 0.0),
        (0.46, "down", "flat", 0.08),
        (0.45, "down", "short", 0.1),
        (0.0, "down", "short", 1.0),
    ],
)
def test_decision_rule(p: float, direction: str, action: str, confidence: float) -> None:
    assert direction_of(p) == direction
    assert action_of(p, 0.55, 0.45) == action
    assert confidence_of(p) == pytest.approx(confidence)


def test_store_keeps_latest_and_bounded_history() -> None:
    store = SignalStore(["BTCUSDT", "ETHUSDT"], history=3)
    assert store.latest("BTCUSDT") is None
    with pytest.raises(KeyError):
        store.latest("XRPUSDT")
    assert store.history("BTCUSDT", 10) == []
    assert store.symbols == ["BTCUSDT", "ETHUSDT"]
